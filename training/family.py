"""Choosing and measuring the family answer (:mod:`model.taxonomy`) on the dev photo sets.

When the species is unsure (``not_sure``) or unknown (``unknown_species``), the page names the most probable family
if its summed probability reaches the release's family threshold. The threshold is chosen like the others, on the
``--open-set-photos`` folders, whose sub-folders say what each photo shows:

- a sub-folder named like one of the model's classes: that class's family (``clownfish_photos/amphiprion_clarkii``);
- a sub-folder named like one of the model's families: that family (``reef_photos/fish/Pomacentridae``);
- any other capitalised sub-folder: a taxon outside the model's families (``reef_photos/fish/Serranidae``,
  ``Batoidea``): any family named is wrong;
- any other sub-folder (a species the model does not know, ``amphiprion_perideraion``): not counted.

A photo "names a family" when it gets a ``species`` answer (the family of that species) or a likely family with a
``not_sure`` or ``unknown_species`` verdict. :func:`choose_family_threshold` takes the lowest threshold at which at
most 5 % of each set of known species and at most 10 % of each set's photos of other species of the model's
families name a wrong family (the targets of the issue that asked for it); when none does, the family is never
named (threshold 1).

``python -m training.family RELEASE --class-info CSV --open-set-photos DIR,... --out NEW`` gives an existing release
a taxonomy and its threshold, without retraining (the photo folders only choose and measure it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from model.checkpoint import Checkpoint, CheckpointError, ClassNames, load_checkpoint, save_checkpoint
from model.logs import setup_logging
from model.predictor import Predictor
from model.taxonomy import Families
from training.config import csv_list
from training.data import Sample, read_class_info
from training.evaluation import Outputs, collect_outputs
from training.photo_sets import open_set_samples

logger = logging.getLogger(__name__)

#: The most a set of photos of known species may name a wrong family, and a set of photos of the model's
#: families' other species (the issue's targets).
MAX_WRONG_KNOWN, MAX_WRONG_UNKNOWN = 0.05, 0.10
#: The thresholds tried, lowest first.
THRESHOLD_GRID = tuple(float(round(t, 2)) for t in np.arange(0.5, 1.0, 0.01)) + (1.0,)
#: The truth of a photo whose taxon lies outside the model's families.
OUTSIDE = ""


def true_families(samples: Sequence[Sample], class_names: Sequence[str], families: Families) -> list[str | None]:
    """What each photo's sub-folder says of its family (see the module docstring): a family name of the model,
    :data:`OUTSIDE`, or None (not counted)."""
    family_of = {
        name: families.names[i] for name, i in zip(class_names, families.members.tolist(), strict=True) if i >= 0
    }
    truths: list[str | None] = []
    for sample in samples:
        parts = Path(sample.path).parts
        folder = parts[0] if len(parts) > 1 else ""
        if folder in family_of:
            truths.append(family_of[folder])
        elif folder in families.names:
            truths.append(folder)
        elif folder[:1].isupper():
            truths.append(OUTSIDE)
        else:
            truths.append(None)
    return truths


#: One photo's answer as far as families go: the family its ``species`` answer implies (or None), and, for a
#: ``not_sure`` or ``unknown_species`` verdict, its most probable family and that family's probability.
FamilyAnswer = tuple[str | None, str | None, float]


def family_answers(predictor: Predictor, outputs: Outputs) -> list[FamilyAnswer]:
    """Each photo's :data:`FamilyAnswer`, from ``predictor``'s verdicts as served (whatever its family threshold):
    what :func:`named_at` needs at any threshold, computed once."""
    assert predictor.families is not None
    answers: list[FamilyAnswer] = []
    for p in predictor.predictions(outputs.logits, outputs.features, outputs.imagenet_logits, top_k=1):
        if p.verdict == "species":
            index = int(predictor.families.members[predictor.class_names.index(p.label)])
            answers.append((predictor.families.names[index] if index >= 0 else None, None, 0.0))
        elif p.verdict in ("not_sure", "unknown_species") and p.family:
            answers.append((None, p.family.name, p.family.probability))
        else:
            answers.append((None, None, 0.0))
    return answers


def named_at(answers: Sequence[FamilyAnswer], threshold: float) -> list[str | None]:
    """The family each answer names at the family ``threshold`` (see the module docstring), None where it names
    none."""
    return [implied or (best if best and probability >= threshold else None) for implied, best, probability in answers]


def named_families(predictor: Predictor, outputs: Outputs, threshold: float) -> list[str | None]:
    """The family each photo's answer names at the family ``threshold`` (see the module docstring), None where it
    names none; the verdicts are ``predictor``'s, as served (its own family threshold is not used or changed)."""
    return named_at(family_answers(predictor, outputs), threshold)


def family_counts(named: Sequence[str | None], truths: Sequence[str | None]) -> dict[str, float]:
    """``family_images`` (photos whose family is known, of the model's families or outside them),
    ``family_right`` and ``family_wrong`` (fractions of those that name the right or a wrong family),
    ``family_right_ours`` and ``family_wrong_ours`` (the same among the photos of the model's families only)."""
    report: dict[str, float] = {}
    for suffix, keep in (("", lambda t: t is not None), ("_ours", lambda t: t)):
        pairs = [(n, t) for n, t in zip(named, truths, strict=True) if keep(t)]
        if suffix == "":
            report["family_images"] = float(len(pairs))
        report[f"family_right{suffix}"] = sum(n == t for n, t in pairs) / len(pairs) if pairs else 0.0
        report[f"family_wrong{suffix}"] = sum(n is not None and n != t for n, t in pairs) / len(pairs) if pairs else 0.0
    return report


def choose_family_threshold(
    predictor: Predictor, sets: Mapping[str, tuple[Outputs, list[str | None]]]
) -> tuple[float, dict[str, dict[str, float]]]:
    """The family threshold for ``predictor`` (its verdict thresholds and temperature already chosen) and what it
    gives on each set: ``(threshold, {set name: family_counts})``.

    Args:
        predictor: the release as served, with families (``predictor.families``).
        sets: set name (``"known_photos"``, ``"unknown_photos:..."``) -> its outputs and :func:`true_families`.
    """
    answers = {name: (family_answers(predictor, outputs), truths) for name, (outputs, truths) in sets.items()}
    reports: dict[str, dict[str, float]] = {}
    for threshold in THRESHOLD_GRID:  # the verdicts do not depend on it: only which families are named
        reports = {name: family_counts(named_at(found, threshold), truths) for name, (found, truths) in answers.items()}
        if all(_within(name, report) for name, report in reports.items()):
            break
    logger.info("family threshold %.2f: %s", threshold, reports)
    return threshold, reports


def _within(name: str, report: Mapping[str, float]) -> bool:
    """Whether a set's wrong families stay within the targets (:data:`MAX_WRONG_KNOWN` for known species, of all
    its counted photos; :data:`MAX_WRONG_UNKNOWN` for other species, of those of the model's families)."""
    if name.startswith("known_photos"):
        return report["family_wrong"] <= MAX_WRONG_KNOWN
    return report["family_wrong_ours"] <= MAX_WRONG_UNKNOWN


def family_sets(
    predictor: Predictor,
    photos: Sequence[str],
    *,
    outputs: Mapping[str, Outputs] | None = None,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, tuple[Outputs, list[str | None]]]:
    """The outputs and true families of each set of ``photos`` folders (:func:`training.photo_sets.open_set_samples`)
    that has photos of a known family; ``outputs`` holds sets' outputs already collected (by name), the others are
    collected with ``predictor``. A set with unreadable photos is left out (its rows would not match its files)."""
    assert predictor.families is not None
    sets = {}
    for name, (root, samples) in open_set_samples(photos, None, predictor.class_names).items():
        truths = true_families(samples, predictor.class_names, predictor.families)
        if not any(t is not None for t in truths):
            continue
        found = (outputs or {}).get(name)
        if found is None:
            found = collect_outputs(predictor, root, samples, batch_size=batch_size, workers=workers)
        if len(found.targets) != len(samples):
            unreadable = len(samples) - len(found.targets)
            logger.warning("%s: %d unreadable photos; its families are not measured", name, unreadable)
            continue
        sets[name] = (found, truths)
    return sets


def choose_for_release(
    release: Checkpoint, photos: Sequence[str], outputs: Mapping[str, Outputs], device: str | object = "cpu"
) -> tuple[float, dict[str, dict[str, float]]] | None:
    """The family threshold of ``release`` (its temperature and verdict thresholds chosen) and its numbers per set,
    from the ``outputs`` the release step collected on the ``photos`` folders; None when the release has no
    taxonomy or no photos of a known family."""
    served = Predictor.from_record(release, name=None, device=device)
    if served.families is None:
        return None
    sets = family_sets(served, photos, outputs=outputs)
    return choose_family_threshold(served, sets) if sets else None


def with_taxonomy(
    release: Checkpoint, class_info: Mapping[str, Mapping[str, str]], photos: Sequence[str], *, workers: int = 2
) -> Checkpoint:
    """``release`` with the names and taxonomy of ``class_info`` (``training.data.read_class_info``), its family
    threshold chosen on ``photos`` and the family numbers added to its verdict report.

    Raises:
        ValueError: ``class_info`` gives no families, or no folder of ``photos`` has photos of a known family.
    """
    info = {name: ClassNames.from_dict(names) for name, names in class_info.items()}
    predictor = Predictor.from_record(release.replace(class_info=info), name=None)
    if predictor.families is None:
        raise ValueError("the class info gives no class a family: add family (and family_common_name) columns")
    sets = family_sets(predictor, photos, workers=workers)
    if not sets:
        raise ValueError(f"no photos of a known family under {', '.join(photos)}")
    threshold, reports = choose_family_threshold(predictor, sets)
    metrics = dict(release.metrics)
    verdicts = {name: dict(report) for name, report in (metrics.get("open_set") or {}).items()}
    for name, report in reports.items():
        verdicts.setdefault(name, {}).update(report)
    metrics["open_set"] = verdicts
    serving = replace(release.serving or predictor.card.serving, family_threshold=threshold)
    return release.replace(class_info=info, serving=serving, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.family RELEASE --class-info CSV --open-set-photos DIR,... --out NEW``; returns the exit
    code (2 on a user error)."""
    parser = argparse.ArgumentParser(description="Give a release a taxonomy and choose its family threshold.")
    parser.add_argument("release", type=Path, help="release checkpoint (release.pt)")
    parser.add_argument("--class-info", required=True, help="CSV with class, ..., genus, family, family_common_name")
    parser.add_argument("--open-set-photos", type=csv_list, required=True, metavar="DIR,DIR,...", help="as train.py's")
    parser.add_argument("--out", type=Path, required=True, help="the new release")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        release = load_checkpoint(args.release)
        info = read_class_info(args.class_info, release.class_names)
        new = with_taxonomy(release, info, args.open_set_photos, workers=args.workers)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    save_checkpoint(new, args.out)
    logger.info("wrote %s: family threshold %.2f", args.out, new.serving.family_threshold if new.serving else 1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
