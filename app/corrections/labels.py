"""What a user may propose as the right answer for a photo, and its kind (:data:`app.corrections.store.LABEL_KINDS`).

* one of the model's species: its class name (``amphiprion_clarkii``) or scientific name (``Amphiprion clarkii``),
  in any case -> kind ``species``, label the class name;
* ``unknown_species``: a fish, but none of the model's species -> kind ``unknown_species``;
* ``not_a_fish`` -> kind ``not_a_fish``;
* another species' scientific name, genus and epithet (and optionally a subspecies), letters and hyphens, in any
  case (``pterois VOLITANS``) -> kind ``new_species``, label normalised to ``Pterois volitans``.

Anything else is refused with a message that says what is accepted. Pure functions: no app, no Flask.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from model.checkpoint import ClassNames

#: Longest label (and predicted label) accepted, in characters.
MAX_LABEL_LENGTH = 200
#: Most corrections listed at once, by the API (its ``limit``) and on the review page.
MAX_LIST = 100
#: The label of a fish that is none of the model's species.
UNKNOWN_SPECIES = "unknown_species"
#: The label of a photo without a fish.
NOT_A_FISH = "not_a_fish"
#: A scientific name: genus, species epithet, optional subspecies (lower case here: matched after ``lower()``).
SCIENTIFIC_NAME = re.compile(r"([a-z]{2,})\s+([a-z][a-z-]*[a-z])(?:\s+([a-z][a-z-]*[a-z]))?")


class FieldError(ValueError):
    """A bad field of a correction (answered 400): a label that is neither one of the model's species,
    ``unknown_species``, ``not_a_fish`` nor a scientific name, or a text too long; its message says what is
    accepted."""


@dataclass(frozen=True)
class ProposedLabel:
    """A checked label.

    Attributes:
        label: the class name (kind ``species``), the normalised scientific name (``new_species``), or the kind
            itself (``unknown_species``, ``not_a_fish``).
        kind: one of :data:`app.corrections.store.LABEL_KINDS`.
    """

    label: str
    kind: str


def _key(text: str) -> str:
    """``text`` compared without case, spaces, hyphens or underscores: ``"Not a fish"`` -> ``"notafish"``."""
    return re.sub(r"[\s_-]+", "", text).lower()


def parse_label(raw: str | None, class_names: Sequence[str], class_info: Mapping[str, ClassNames]) -> ProposedLabel:
    """The label a user proposes, checked and normalised (see the module's docstring).

    Args:
        raw: the ``label`` field as sent, or None when absent.
        class_names: the model's classes.
        class_info: their names (``scientific_name``), by class name.

    Raises:
        FieldError: absent, empty, longer than :data:`MAX_LABEL_LENGTH`, or none of the accepted forms.
    """
    text = " ".join((raw or "").split())
    if not text:
        raise FieldError(
            "label is required: one of the model's species, unknown_species, not_a_fish, or a scientific name"
        )
    if len(text) > MAX_LABEL_LENGTH:
        raise FieldError(f"label is too long: at most {MAX_LABEL_LENGTH} characters, got {len(text)}")
    key = _key(text)
    for kind in (NOT_A_FISH, UNKNOWN_SPECIES):
        if key == _key(kind):
            return ProposedLabel(kind, kind)
    for name in class_names:
        scientific = class_info.get(name, ClassNames()).scientific_name
        if key == _key(name) or (scientific and key == _key(scientific)):
            return ProposedLabel(name, "species")
    match = SCIENTIFIC_NAME.fullmatch(text.lower())
    if match is None:
        raise FieldError(
            f"label {text[:60]!r} is not understood: send one of the model's species (its class name or scientific "
            "name), unknown_species (a fish, but none of these species), not_a_fish, or another species' scientific "
            "name: genus and species, letters only, e.g. 'Pterois volitans'"
        )
    genus, *epithets = (part for part in match.groups() if part)
    return ProposedLabel(" ".join([genus.capitalize(), *epithets]), "new_species")


def optional_text(raw: str | None, field: str) -> str | None:
    """An optional text field, whitespace collapsed; None when absent or empty.

    Raises:
        FieldError: longer than :data:`MAX_LABEL_LENGTH` characters, or holding a control character such as NUL
            (which PostgreSQL's text cannot store); the message names ``field``.
    """
    text = " ".join((raw or "").split())
    if len(text) > MAX_LABEL_LENGTH:
        raise FieldError(f"{field} is too long: at most {MAX_LABEL_LENGTH} characters, got {len(text)}")
    if any(unicodedata.category(character) == "Cc" for character in text):
        raise FieldError(f"{field} must not contain control characters")
    return text or None
