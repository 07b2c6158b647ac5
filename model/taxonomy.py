"""The families of a model's classes, and the family answer when the species is unsure.

A model whose ``--class-info`` CSV gives each class a ``family`` (with ``genus`` and the family's
``family_common_name``) records them in its checkpoint (:class:`model.checkpoint.ClassNames`). The probability of a
family is the sum of the calibrated probabilities of its species (the classes are exclusive, so their probabilities
add up); the answer names the most probable family, and the page says it when the species is unsure and that
probability reaches the release's family threshold (chosen on the dev photo sets by ``training.family``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class _HasFamily(Protocol):
    family: str | None
    family_common_name: str | None


@dataclass(frozen=True)
class FamilyScore:
    """The most probable family of one image.

    Attributes:
        name: the family's scientific name (``"Pomacentridae"``).
        common_name: its common name, singular (``"damselfish"``), or None.
        probability: the summed calibrated probability of its species, in [0, 1].
        likely: ``probability`` reaches the model's family threshold: worth telling when the species is unsure.
        species: how many of the model's classes belong to it.
    """

    name: str
    common_name: str | None
    probability: float
    likely: bool
    species: int


@dataclass(frozen=True)
class Families:
    """Which family each class belongs to.

    Attributes:
        names: the families' scientific names, sorted.
        common_names: their common names (None where not given), in the order of ``names``.
        members: int64 ``(C,)``: the family index of each class, -1 for a class without a family.
    """

    names: list[str]
    common_names: list[str | None]
    members: torch.Tensor

    @classmethod
    def of(cls, class_names: Sequence[str], info: Mapping[str, _HasFamily]) -> Families | None:
        """The families that ``info`` (class name -> its :class:`model.checkpoint.ClassNames`) gives the classes,
        or None when it gives none (a model without a taxonomy)."""
        families = {info[n].family: info[n].family_common_name for n in class_names if n in info and info[n].family}
        if not families:
            return None
        names = sorted(families)
        members = [names.index(info[n].family) if n in info and info[n].family else -1 for n in class_names]
        return cls(names, [families[name] for name in names], torch.tensor(members, dtype=torch.int64))

    def species(self, family: int) -> int:
        """The number of classes in the family at index ``family``."""
        return int((self.members == family).sum())

    def probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        """Float ``(N, F)``: each family's summed probability, from calibrated class probabilities ``(N, C)``."""
        out = torch.zeros(len(probs), len(self.names), dtype=probs.dtype)
        known = self.members >= 0
        return out.index_add_(1, self.members[known], probs[:, known])

    def best(self, probs: torch.Tensor, threshold: float) -> list[FamilyScore]:
        """The most probable family of each row of calibrated class probabilities ``(N, C)``, ``likely`` where its
        probability is at least ``threshold``."""
        values, indices = self.probabilities(probs).max(1)
        return [
            FamilyScore(self.names[i], self.common_names[i], float(v), float(v) >= threshold, self.species(i))
            for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
