"""Write ``model/imagenet_hierarchy.json``: the WordNet 3.0 hypernyms of each ImageNet-1k class.

ImageNet-1k's class ids are WordNet 3.0 noun synsets (``n01440764`` is noun offset 01440764, "tench"), and the
subject check of :mod:`model.imagenet_hierarchy` needs to know which classes lie under a synset ("fish",
"flower") and which are other living things. This script reads WordNet 3.0's noun database (Debian's
``wordnet-base`` package: ``/usr/share/wordnet/data.noun``; ``apt-get install wordnet-base``) and timm's list of
the ImageNet-1k ids in class-index order (``timm/data/_info/imagenet_synsets.txt``), follows every hypernym and
instance-hypernym pointer up to the root, and writes, for each class, the indices of all its ancestors into one
table of synsets with their first lemma. Run it once; its output is committed (WordNet 3.0 license: Princeton
University, free to use, copy and distribute with the copyright notice, which the JSON carries).

    python tools/imagenet_hierarchy.py [--wordnet /usr/share/wordnet/data.noun] [--out model/imagenet_hierarchy.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("imagenet_hierarchy")

ROOT = Path(__file__).resolve().parents[1]
NOTICE = (
    "Hypernyms from WordNet 3.0. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. "
    "THIS SOFTWARE AND DATABASE IS PROVIDED 'AS IS' AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, "
    "EXPRESS OR IMPLIED. The name of Princeton University or Princeton may not be used in advertising or publicity "
    "pertaining to distribution of the software and/or database."
)


def read_nouns(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``({synset id: first lemma}, {synset id: hypernym ids})`` from a WordNet 3.0 ``data.noun`` file (ids as
    ImageNet writes them: ``n`` and the 8-digit offset; hypernyms are ``@`` and ``@i`` pointers)."""
    lemmas: dict[str, str] = {}
    parents: dict[str, list[str]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith(" "):  # the license header
                continue
            fields = line.split(" | ", 1)[0].split()
            synset = "n" + fields[0]
            words = int(fields[3], 16)
            lemmas[synset] = fields[4].replace("_", " ")
            at = 4 + 2 * words
            pointers = int(fields[at])
            parents[synset] = [
                "n" + fields[at + 2 + 4 * i]
                for i in range(pointers)
                if fields[at + 1 + 4 * i] in ("@", "@i") and fields[at + 3 + 4 * i] == "n"
            ]
    return lemmas, parents


def ancestors(synset: str, parents: dict[str, list[str]]) -> set[str]:
    """Every hypernym above ``synset`` (not itself), through all its paths to the root."""
    seen: set[str] = set()
    todo = list(parents.get(synset, []))
    while todo:
        parent = todo.pop()
        if parent not in seen:
            seen.add(parent)
            todo += parents.get(parent, [])
    return seen


def main(argv: list[str] | None = None) -> int:
    import timm.data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    parser.add_argument("--out", type=Path, default=ROOT / "model" / "imagenet_hierarchy.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.wordnet.is_file():
        logger.error("no WordNet 3.0 noun database at %s: apt-get install wordnet-base", args.wordnet)
        return 2
    classes = (Path(timm.data.__file__).parent / "_info" / "imagenet_synsets.txt").read_text().split()
    lemmas, parents = read_nouns(args.wordnet)
    missing = [c for c in classes if c not in lemmas]
    if len(classes) != 1000 or missing:
        logger.error("expected 1000 ImageNet classes all in WordNet 3.0; %d classes, missing %s", len(classes), missing)
        return 2
    above = [ancestors(c, parents) for c in classes]
    table = sorted(set(classes).union(*above))
    index = {synset: i for i, synset in enumerate(table)}
    document = {
        "notice": NOTICE,
        "synsets": [[synset, lemmas[synset]] for synset in table],
        "classes": [[index[c], sorted(index[a] for a in up)] for c, up in zip(classes, above, strict=True)],
    }
    args.out.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    logger.info("wrote %s: %d classes, %d synsets", args.out, len(classes), len(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
