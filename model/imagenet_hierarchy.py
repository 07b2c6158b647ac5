"""Which ImageNet-1k classes lie under a WordNet noun, and which are other living things.

ImageNet-1k's classes are WordNet 3.0 noun synsets; ``imagenet_hierarchy.json`` (beside this module, written once
by ``tools/imagenet_hierarchy.py`` from WordNet 3.0, whose license notice it carries) gives each class the indices
of all its hypernyms. The "not a fish" check (:mod:`model.open_set`) uses it to split the pretrained ImageNet
classifier's probability mass three ways for any subject that ``train.py --subject`` names: the classes under the
subject (16 under *fish*: tench, goldfish, great white shark, ... puffer), the other living things (394 under
*organism* that are not fish: jellyfish, sea anemone, brain coral, starfish, crabs, turtles, dogs, daisies...), and
the rest (objects and scenes: coral reef, scuba diver, aquarium...).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

#: The hierarchy file: ``{"notice", "synsets": [[wnid, first lemma], ...], "classes": [[synset index of the class,
#: [synset indices of its hypernyms]], ...]}`` with the 1000 classes in ImageNet-1k's index order.
HIERARCHY_PATH = Path(__file__).with_name("imagenet_hierarchy.json")
#: WordNet 3.0's ``organism.n.01`` ("a living thing that has (or can develop) the ability to act or function
#: independently"): every animal, plant and fungus among ImageNet's classes lies under it.
ORGANISM = "n00004475"


@dataclass(frozen=True)
class SubjectClasses:
    """The ImageNet classes of a subject and of everything else that lives.

    Attributes:
        synset: the WordNet id of the subject (``"n02512053"`` for fish).
        subject: sorted indices of the ImageNet classes under it.
        other_organisms: sorted indices of the classes under *organism* that are not under the subject.
    """

    synset: str
    subject: list[int]
    other_organisms: list[int]


@functools.cache
def _hierarchy() -> tuple[list[tuple[str, str]], list[tuple[int, frozenset[int]]]]:
    """``(synsets [(wnid, lemma)], classes [(own synset index, hypernym indices)])``, read once."""
    document = json.loads(HIERARCHY_PATH.read_text())
    synsets = [(wnid, lemma) for wnid, lemma in document["synsets"]]
    classes = [(own, frozenset(above)) for own, above in document["classes"]]
    return synsets, classes


def classes_under(synset: str) -> list[int]:
    """Sorted indices of the ImageNet-1k classes that are ``synset`` (a WordNet id such as ``"n02512053"``) or lie
    under it; empty when none does or the id is not in the hierarchy."""
    synsets, classes = _hierarchy()
    index = next((i for i, (wnid, _) in enumerate(synsets) if wnid == synset), None)
    if index is None:
        return []
    return [k for k, (own, above) in enumerate(classes) if own == index or index in above]


def subject_classes_for(noun: str | None) -> SubjectClasses | None:
    """The ImageNet classes of the subject that ``noun`` names (``"fish"``, ``"flower"``, ``"bird"``), matched
    against each synset's first WordNet lemma (case and ``_`` ignored; where several synsets match, the one with the
    most classes under it), and the other organisms.

    Returns:
        None when ``noun`` is empty, names no synset of the hierarchy, has no ImageNet class under it, or is not a
        living thing (then "other organisms" would not contrast with it).
    """
    if not noun or not noun.strip():
        return None
    wanted = noun.strip().lower().replace("_", " ")
    synsets, _ = _hierarchy()
    candidates = [wnid for wnid, lemma in synsets if lemma.lower() == wanted]
    best = max(((classes_under(wnid), wnid) for wnid in candidates), key=lambda c: len(c[0]), default=([], ""))
    subject, synset = best
    organisms = set(classes_under(ORGANISM))
    if not subject or not set(subject) <= organisms:
        return None
    return SubjectClasses(synset, subject, sorted(organisms - set(subject)))
