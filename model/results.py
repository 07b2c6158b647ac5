"""The prediction result declared once, as pydantic models, and everything written from it: the JSON of the API
(:func:`api_answer`), the JSON Schemas of its OpenAPI document (:func:`response_schemas`, completed with the
running app's limits by ``app.openapi``) and the one CSV layout of the results table (:data:`CSV_LAYOUT`), which
the web page's download (``app.web``), ``predict.py`` and ``static/app.js`` (given the layout by the page) write.

The pydantic models describe the :class:`Prediction` and :class:`ClassScore` objects that the predictor makes
(declared here too, and read through their attributes) and ``Predictor.summary()``; their field names are the JSON
keys. The four verdicts (:data:`VERDICTS`) are part of the result, so they are declared here too.

CSV columns: the file (``file_name`` on the page, ``path`` in ``predict.py``), then ``species, label, confidence,
verdict, confident, family, family_probability, crop, error``, then ``top_1, top_1_confidence`` to ``top_K,
top_K_confidence``. ``species`` is the most probable class's display name, ``label`` its class name,
``confidence`` its calibrated probability (4 decimals), whatever the ``verdict``; ``confident`` is ``true`` only
for the ``species`` verdict; ``family`` the most probable family and ``family_probability`` its summed
probability (empty for a model without a taxonomy); ``crop`` the part of the photo classified (``x,y,w,h``, empty for
the whole photo). A file that could not be classified has only its ``error``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from model.crop import Crop
from model.taxonomy import FamilyScore

#: The four kinds of answer, most specific first (see :class:`Prediction`'s ``verdict``).
Verdict = Literal["species", "not_sure", "unknown_species", "not_a_fish"]
VERDICTS: tuple[str, ...] = get_args(Verdict)

#: What each verdict means, for the API's documentation.
VERDICT_DESCRIPTIONS: dict[str, str] = {
    "species": "confident: `label` is the species (say its name)",
    "not_sure": "probably one of the model's species, but `confidence` is below `threshold` (or the best class's "
    "logit below the model's `not_sure_logit`): offer the first classes of `top_k` ('not sure: maybe X or Y')",
    "unknown_species": "looks like the model's subject (e.g. a fish) but probably none of its species",
    "not_a_fish": "not the kind of picture the model was trained on at all",
}


def _probability(description: str | None = None, **kwargs: Any) -> Any:
    """A field documented as a probability in [0, 1]. The bounds are in the schema only: the numbers come from
    the model, and a float32 sum a hair over 1 must not fail an answer."""
    return Field(description=description, json_schema_extra={"minimum": 0, "maximum": 1}, **kwargs)


def pretty_label(label: str) -> str:
    """A class folder name for people: ``amphiprion_clarkii`` -> ``Amphiprion clarkii``."""
    name = label.replace("_", " ").strip()
    return name[:1].upper() + name[1:]


@dataclass(frozen=True)
class ClassScore:
    """One class and its probability, with the names people know it by (where the checkpoint has them).

    Attributes:
        label: the class name (its training folder name).
        confidence: softmax probability in [0, 1].
        common_name: e.g. ``"Clark's anemonefish"``, or None.
        scientific_name: e.g. ``"Amphiprion clarkii"``, or None.
    """

    label: str
    confidence: float
    common_name: str | None = None
    scientific_name: str | None = None

    @property
    def display_name(self) -> str:
        """``"Common name (Scientific name)"``, whichever of the two exists, or the prettified label."""
        if self.common_name and self.scientific_name:
            return f"{self.common_name} ({self.scientific_name})"
        return self.common_name or self.scientific_name or pretty_label(self.label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as declared by :class:`ClassScoreResult`: ``label, confidence, display_name,
        common_name, scientific_name``."""
        return ClassScoreResult.model_validate(self, from_attributes=True).model_dump(mode="json")


@dataclass(frozen=True)
class Prediction:
    """The classification of one image: the ``top_k`` classes, most probable first, and what to tell the user.

    Attributes:
        top_k: at least one :class:`ClassScore`, sorted by descending confidence.
        threshold: confidence below which the prediction is reported as "not sure" (0 disables it); chosen on
            validation data when the model was trained (see ``training.metrics.selective_threshold``).
        verdict: one of :data:`VERDICTS`: ``"species"``
            (confident: name the class), ``"not_sure"`` (a known class, but below ``threshold``: offer the
            candidates), ``"unknown_species"`` (the right kind of subject, probably none of the model's classes),
            ``"not_a_fish"`` (not the kind of picture the model was trained on). Decided by the one rule,
            :meth:`model.open_set.OpenSetRule.verdict`.
        subject_score: how much the picture looks like the training data's subject, in [0, 1] (probability mass
            of the subject's ImageNet classes), or None when the model has no such score.
        novelty: distance of the image's features to the nearest known class (squared Mahalanobis distance),
            or None when the model has no such score.
        taxon_score: probability mass of the ImageNet classes under the subject's WordNet noun (the 16 fish
            classes), in [0, 1], or None when the model has no such score (see :mod:`model.imagenet_hierarchy`).
        other_score: probability mass of ImageNet's other living things (coral, sea anemones, crabs...), in
            [0, 1], or None likewise.
        family: the most probable family (:class:`model.taxonomy.FamilyScore`), or None for a model without a
            taxonomy.
        crop: the part of the upright photo that was classified (:class:`model.crop.Crop`), or None for the whole
            photo.
        explanation: where the model looked for its most probable class: a Grad-CAM heat map over the photo as
            the network saw it, a ``data:image/png;base64,...`` URL (:mod:`model.explain`), or None when not asked.
    """

    top_k: list[ClassScore]
    threshold: float
    verdict: str
    subject_score: float | None = None
    novelty: float | None = None
    taxon_score: float | None = None
    other_score: float | None = None
    family: FamilyScore | None = None
    crop: Crop | None = None
    explanation: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def best(self) -> ClassScore:
        """The most probable class."""
        return self.top_k[0]

    @property
    def label(self) -> str:
        """Class name with the highest probability."""
        return self.best.label

    @property
    def confidence(self) -> float:
        """Its probability, in [0, 1]."""
        return self.best.confidence

    @property
    def confident(self) -> bool:
        """True only for the ``"species"`` verdict: say the species; otherwise say what :attr:`verdict` says."""
        return self.verdict == "species"

    @property
    def display_name(self) -> str:
        """Readable name of :attr:`label` (see :attr:`ClassScore.display_name`)."""
        return self.best.display_name

    @property
    def common_name(self) -> str | None:
        """Common name of :attr:`label`, or None."""
        return self.best.common_name

    @property
    def scientific_name(self) -> str | None:
        """Scientific name of :attr:`label`, or None."""
        return self.best.scientific_name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as declared by :class:`PredictionResult`: ``label, confidence, confident,
        verdict, threshold, subject_score, novelty, taxon_score, other_score, family, display_name, common_name,
        scientific_name, top_k: [ClassScore.to_dict(), ...]``."""
        return prediction_result(self).model_dump(mode="json")


class ClassScoreResult(BaseModel):
    """One class and its probability, with the names people know it by."""

    model_config = ConfigDict(from_attributes=True)

    label: str = Field(description="class name (its training folder name)")
    confidence: float = _probability("softmax probability of the class")
    display_name: str = Field(description="'Common name (Scientific name)', or the label")
    common_name: str | None
    scientific_name: str | None


class FamilyResult(BaseModel):
    """The most probable family of the picture's fish: the summed probability of the model's species in it."""

    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="the family's scientific name, e.g. 'Pomacentridae'")
    common_name: str | None = Field(description="its common name, singular, e.g. 'damselfish'; null if not known")
    probability: float = _probability("the summed calibrated probability of the model's species of this family")
    likely: bool = Field(
        description="`probability` reaches the model's family threshold: when `verdict` is `not_sure` or "
        "`unknown_species`, the family is worth telling ('a damselfish, maybe X or Y')"
    )
    species: int = Field(ge=1, description="how many of the model's species belong to this family")


class PredictionResult(ClassScoreResult):
    """The classification of one image: its most probable class, what to tell the user, and the top classes."""

    confidence: float = _probability("softmax probability of `label`, the most probable class")
    confident: bool = Field(
        description="true exactly when `verdict` is `species`: name the species; otherwise say what `verdict` says"
    )
    verdict: Verdict = Field(
        description="what to tell the user: "
        + "; ".join(f"`{name}`: {VERDICT_DESCRIPTIONS[name]}" for name in VERDICTS)
    )
    threshold: float = _probability("confidence below which the model is not sure")
    subject_score: float | None = _probability(
        "how much the picture looks like the model's subject (probability of the subject's ImageNet classes); "
        "null when the model has no such score"
    )
    novelty: float | None = Field(
        description="distance of the picture's features to the nearest known class (squared Mahalanobis "
        "distance; larger is more unlike the training photos); null when the model has no such score"
    )
    taxon_score: float | None = _probability(
        "how much the picture looks like the subject's kind of living thing (probability of the ImageNet classes "
        "under the subject's WordNet noun: the 16 fish classes); null when the model has no such score",
        default=None,
    )
    other_score: float | None = _probability(
        "how much the picture looks like another living thing than the subject (probability of ImageNet's other "
        "organisms: coral, sea anemones, crabs...); null when the model has no such score",
        default=None,
    )
    family: FamilyResult | None = Field(
        None, description="the most probable family; null when the model records no taxonomy (families)"
    )
    crop: list[float] | None = Field(
        None,
        min_length=4,
        max_length=4,
        description="the part of the upright (EXIF-rotated) photo that was classified: [x, y, w, h], fractions of "
        "its width and height, as sent in the `crop` field; null for the whole photo",
    )
    explanation: str | None = Field(
        None,
        description="with `explain=true`: where the model looked for `label`, a Grad-CAM heat map (red: most) over "
        "the photo as the network saw it (resized and centre-cropped), as a `data:image/png;base64,...` URL; "
        "null otherwise",
    )
    top_k: list[ClassScoreResult] = Field(
        min_length=1, description="the `top_k` most probable classes, most probable first"
    )


class VerdictThresholds(BaseModel):
    """The thresholds behind `verdict`; null where the model lacks that check."""

    not_sure: float = _probability("`not_sure` below this confidence")
    not_sure_logit: float | None = Field(
        None,
        description="also `not_sure` where the best class's logit (before the softmax) is below this; null for models "
        "without this check",
    )
    unknown_species: float | None = Field(None, description="`unknown_species` above this `novelty`")
    not_a_fish: float | None = _probability("`not_a_fish` below this `subject_score`", default=None)
    not_a_fish_taxon: float | None = _probability(
        "for a picture above the `not_a_fish_novelty`, also `not_a_fish` below this `taxon_score`; null for "
        "models without the ImageNet hierarchy",
        default=None,
    )
    not_a_fish_contrast: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="for a picture above the `not_a_fish_novelty`, also `not_a_fish` when `other_score - "
        "taxon_score` exceeds this; null for models without the ImageNet hierarchy",
    )
    not_a_fish_novelty: float | None = Field(
        None,
        ge=0,
        description="the `novelty` above which `not_a_fish_taxon` and `not_a_fish_contrast` judge a picture (the "
        "`unknown_species` threshold in releases before 2026-12-03); null for models without the ImageNet hierarchy",
    )
    family: float | None = _probability(
        "`family.likely` from this `family.probability`; null for models without a taxonomy", default=None
    )


class ModelSummary(BaseModel):
    """The model that answered (`Predictor.summary()`)."""

    arch: str
    checkpoint: str | None = None
    created: str | None = None
    num_classes: int = Field(ge=1)
    image_size: int = Field(ge=1, description="input side, in pixels")
    precision: str
    backend: str = Field(description="inference engine")
    confidence_threshold: float = _probability()
    temperature: float = Field(gt=0, description="softmax temperature: confidences are softmax(logits / temperature)")
    val_accuracy: float | None = _probability(default=None)
    val_macro_f1: float | None = _probability(default=None)
    subject: str | None = Field(
        None, description="what the model's pictures show (e.g. 'fish'), or null when not recorded"
    )
    verdict_thresholds: VerdictThresholds | None = None


class PredictionResponse(PredictionResult):
    """The answer for one image: its prediction and the model."""

    model: ModelSummary


class IndexedPrediction(PredictionResult):
    """The prediction of one of several images."""

    index: int = Field(ge=0, description="position (from 0) of the file among the request's `image` fields")


class BatchResponse(BaseModel):
    """The answer for several images: one prediction per file, in request order."""

    predictions: list[IndexedPrediction] = Field(min_length=2)
    model: ModelSummary


#: The models of the API's answers that its OpenAPI document names (its ``components.schemas``), by name.
RESPONSE_MODELS: dict[str, type[BaseModel]] = {
    "ClassScore": ClassScoreResult,
    "Family": FamilyResult,
    "Prediction": PredictionResult,
    "VerdictThresholds": VerdictThresholds,
    "ModelSummary": ModelSummary,
    "PredictionResponse": PredictionResponse,
    "IndexedPrediction": IndexedPrediction,
    "BatchResponse": BatchResponse,
}


def prediction_result(prediction: Prediction) -> PredictionResult:
    """The declared result of a :class:`Prediction` (its fields read from its attributes)."""
    return PredictionResult.model_validate(prediction, from_attributes=True)


def api_answer(predictions: Sequence[Prediction], summary: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON of ``POST /api/predict``: a :class:`PredictionResponse` for one image, a :class:`BatchResponse`
    (``index`` = position of the file, from 0) for several.

    Args:
        predictions: one per image, in request order; at least one.
        summary: ``Predictor.summary()``; its keys are passed on as they are (none added).

    Returns:
        A JSON-ready dict (``model_dump(mode="json")``).

    Raises:
        pydantic.ValidationError: ``summary`` or a prediction does not fit the declared result (a bug, not input).
    """
    model = ModelSummary.model_validate(summary)
    results = [dict(prediction_result(p)) for p in predictions]
    if len(results) == 1:
        answer: BaseModel = PredictionResponse(**results[0], model=model)
    else:
        answer = BatchResponse(
            predictions=[IndexedPrediction(**result, index=i) for i, result in enumerate(results)], model=model
        )
    # exclude_unset: the model summary keeps exactly the keys that summary() gives
    return answer.model_dump(mode="json", exclude_unset=True)


class _PlainSchema(GenerateJsonSchema):
    """JSON Schema without the titles pydantic makes up from class and field names."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> Any:
        out = super().generate(schema, mode)
        out.pop("title", None)
        return out

    def model_schema(self, schema: Any) -> Any:
        out = super().model_schema(schema)
        out.pop("title", None)
        return out


def response_schemas(ref_template: str = "#/components/schemas/{model}") -> dict[str, dict[str, Any]]:
    """JSON Schemas (draft 2020-12) of :data:`RESPONSE_MODELS`, by name, as answers are serialized; references
    between them follow ``ref_template``. Run-time limits (class names, image counts) are left to the caller."""
    names = {model: name for name, model in RESPONSE_MODELS.items()}
    _, top = models_json_schema(
        [(model, "serialization") for model in RESPONSE_MODELS.values()],
        ref_template="{model}",
        schema_generator=_PlainSchema,
    )
    defs: dict[str, Any] = top["$defs"]
    by_class = {model.__name__: name for model, name in names.items()}

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: (ref_template.format(model=by_class[value]) if key == "$ref" else rename(value))
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [rename(item) for item in node]
        return node

    return {by_class[class_name]: rename(schema) for class_name, schema in defs.items()}


# --- the CSV layout ----------------------------------------------------------------------------------------------

#: The columns after the file's own, before the top-k pairs: ``(column, field of PredictionResult)``, a dotted
#: field for one of a nested object (``family.name``); the ``error`` column (field None) holds why a file could
#: not be classified.
CSV_FIELDS: tuple[tuple[str, str | None], ...] = (
    ("species", "display_name"),
    ("label", "label"),
    ("confidence", "confidence"),
    ("verdict", "verdict"),
    ("confident", "confident"),
    ("family", "family.name"),
    ("family_probability", "family.probability"),
    ("crop", "crop"),
    ("error", None),
)
#: The columns after the file's own, before the top-k pairs.
COLUMNS: tuple[str, ...] = tuple(column for column, _ in CSV_FIELDS)
#: The names of the i-th top-k pair's columns, its class name and its probability (``{i}`` counts from 1).
TOP_K_COLUMNS: tuple[str, str] = ("top_{i}", "top_{i}_confidence")
#: The layout as plain data, for ``static/app.js`` (``data-csv-layout`` on the page's form).
CSV_LAYOUT: dict[str, Any] = {"fields": [list(pair) for pair in CSV_FIELDS], "top_k": list(TOP_K_COLUMNS)}


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell that spreadsheets will not run as a formula (``=``, ``+``, ``-``, ``@``, tab and
    carriage return prefixed with ``'``, as OWASP's "CSV Injection" advice says)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_text(value: object) -> str:
    """A JSON value of the result as CSV text: numbers (probabilities) with 4 decimals, booleans as ``true`` or
    ``false``, lists (a crop) as their numbers joined by commas, None empty."""
    if isinstance(value, list):
        return ",".join(_csv_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _field(fields: Mapping[str, Any], path: str) -> object:
    """The value at a dotted ``path`` of a result's JSON fields (``family.name``), None where any part is
    missing or null (``static/app.js`` reads the layout the same way)."""
    value: Any = fields
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def csv_header(file_column: str, k: int) -> list[str]:
    """The header: ``file_column``, :data:`COLUMNS`, then the :data:`TOP_K_COLUMNS` pairs for i = 1..k."""
    return [file_column, *COLUMNS, *(name.format(i=i) for i in range(1, k + 1) for name in TOP_K_COLUMNS)]


def csv_row(name: str, prediction: Prediction | None, error: str, k: int) -> list[str]:
    """One row under :func:`csv_header` with ``k`` top-k pairs (fewer classes leave the rest empty), every cell
    escaped by :func:`csv_cell`, from the JSON fields of :func:`prediction_result`; without a prediction, only
    ``name`` and ``error``."""
    fields = prediction_result(prediction).model_dump(mode="json") if prediction is not None else {}
    row: list[object] = [name, *(_field(fields, field) if field else error for _, field in CSV_FIELDS)]
    for score in fields.get("top_k", [])[:k]:
        row += [score["label"], score["confidence"]]
    row += [None] * (len(COLUMNS) + 1 + 2 * k - len(row))
    return [csv_cell(_csv_text(cell)) for cell in row]
