"""Simulate a reviewer who accepts users' corrections, and measure what the served model then answers.

The dev photo sets are cut in two halves at random (``--seed``). From one half a reviewer accepts ``k`` photos per
label: Clark's anemonefish (one of the model's species), pink skunk clownfish (``Amphiprion perideraion``, a new
species), reef fish of other species ("a fish, but not one of these species") and sea life without fish ("not a
fish"). The memory is built and gated exactly as the app does (:class:`model.memory.MemoryBuilder`) and served by the
predictor (:meth:`model.predictor.Predictor.set_memory`); the other half, never seen by the memory, and the
Fish4Knowledge validation split measure it. Nothing here changes the shipped model: the photos are for evaluation
and for choosing thresholds only (their SOURCE.md).

The network's outputs come from ``tools/correction_features.py`` (run first; cached in ``--features``).

    python -m tools.correction_features && python -m tools.simulate_corrections --k 0,3,10,30
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

from model.logs import setup_logging
from model.memory import NOT_FISH_LABEL, UNKNOWN_LABEL, BaseFeatures, Correction, MemoryBuilder, normalize
from model.predictor import Predictor
from model.results import Prediction

logger = logging.getLogger("simulate_corrections")

CLARKII = "amphiprion_clarkii"
PINK_SKUNK = "Amphiprion perideraion"
#: The photo sets and the label a reviewer accepts for each.
LABELS = {"clarkii": CLARKII, "perideraion": PINK_SKUNK, "reef_fish": UNKNOWN_LABEL, "reef_not_fish": NOT_FISH_LABEL}


def load_sets(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every cached set of ``tools/correction_features.py``: name -> its arrays."""
    sets = {}
    for name in ("f4k_train", "f4k_val", *LABELS):
        with np.load(folder / f"{name}.npz", allow_pickle=False) as data:
            sets[name] = {key: data[key] for key in data.files}
    return sets


def halves(sets: dict[str, dict[str, np.ndarray]], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each photo set, ``(users' half, measured half)`` row indices, a random cut of ``seed``."""
    rng = np.random.default_rng(seed)
    cut = {}
    for name in LABELS:
        order = rng.permutation(len(sets[name]["targets"]))
        cut[name] = (order[: len(order) // 2], order[len(order) // 2 :])
    return cut


def answers(predictor: Predictor, data: dict[str, np.ndarray], rows: np.ndarray) -> list[Prediction]:
    """The served predictions of ``rows`` of a cached set."""
    outputs = [torch.from_numpy(data[key][rows]) for key in ("logits", "features", "imagenet_logits")]
    return predictor.predictions(*outputs, top_k=1)


def corrections_for(
    predictor: Predictor, sets: dict[str, dict[str, np.ndarray]], cut: dict[str, Any], k: int
) -> list[Correction]:
    """The ``k`` first photos of each users' half, with their labels and open-set scores."""
    corrections = []
    for name, label in LABELS.items():
        rows = cut[name][0][:k]
        data = sets[name]
        scores = predictor.open_set_scores(
            torch.from_numpy(data["features"][rows]), torch.from_numpy(data["imagenet_logits"][rows])
        )
        corrections += [Correction(label, data["features"][r], scores.row(i)) for i, r in enumerate(rows)]
    return corrections


def share(predictions: Sequence[Prediction], test: Any) -> float:
    """Percentage of ``predictions`` for which ``test(prediction)`` holds."""
    return 100.0 * float(np.mean([bool(test(p)) for p in predictions]))


def measure(predictor: Predictor, sets: dict[str, dict[str, np.ndarray]], cut: dict[str, Any]) -> dict[str, float]:
    """The issue's numbers on the measured halves and the validation split, in percent (macro-F1 as a fraction)."""
    ours = set(predictor.class_names)
    named = {name: answers(predictor, sets[name], cut[name][1]) for name in LABELS}
    val = answers(predictor, sets["f4k_val"], np.arange(len(sets["f4k_val"]["targets"])))
    val_labels = [predictor.class_names.index(p.label) if p.label in ours else -1 for p in val]
    return {
        "clarkii_top1": share(named["clarkii"], lambda p: p.label == CLARKII),
        "clarkii_named_right": share(named["clarkii"], lambda p: p.verdict == "species" and p.label == CLARKII),
        "clarkii_confidently_wrong": share(named["clarkii"], lambda p: p.verdict == "species" and p.label != CLARKII),
        "pink_named_right": share(named["perideraion"], lambda p: p.verdict == "species" and p.label == PINK_SKUNK),
        "pink_named_ours": share(named["perideraion"], lambda p: p.verdict == "species" and p.label in ours),
        "reef_fish_named_ours": share(named["reef_fish"], lambda p: p.verdict == "species" and p.label in ours),
        "reef_fish_not_a_fish": share(named["reef_fish"], lambda p: p.verdict == "not_a_fish"),
        "not_fish_not_a_fish": share(named["reef_not_fish"], lambda p: p.verdict == "not_a_fish"),
        "not_fish_named": share(named["reef_not_fish"], lambda p: p.verdict == "species"),
        "val_macro_f1": float(
            f1_score(sets["f4k_val"]["targets"], val_labels, labels=range(len(ours)), average="macro", zero_division=0)
        ),
    }


def simulate(predictor: Predictor, sets: dict[str, Any], ks: Sequence[int], seed: int) -> list[dict[str, Any]]:
    """One row per ``k``: the measured numbers with the memory served (k = 0: none) and the gate's report."""
    base = BaseFeatures(
        normalize(sets["f4k_train"]["features"]),
        sets["f4k_train"]["targets"].astype(np.int64),
        normalize(sets["f4k_val"]["features"]),
        sets["f4k_val"]["targets"].astype(np.int64),
    )
    builder = MemoryBuilder(base, predictor.class_names, predictor.temperature, predictor.open_set)
    cut = halves(sets, seed)
    rows = []
    for k in ks:
        memory, report = builder.build(corrections_for(predictor, sets, cut, k)) if k else (None, {})
        predictor.set_memory(memory)
        row = {"k": k, "seed": seed, **measure(predictor, sets, cut), "gate": report}
        logger.info("k=%d seed=%d: %s", k, seed, {key: v for key, v in row.items() if key != "gate"})
        rows.append(row)
    predictor.set_memory(None)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (mean over seeds per k)."""
    keys = [key for key in rows[0] if key not in ("k", "seed", "gate")]
    lines = ["| k | " + " | ".join(keys) + " | served |", "|---" * (len(keys) + 2) + "|"]
    for k in sorted({row["k"] for row in rows}):
        same = [row for row in rows if row["k"] == k]
        values = [np.mean([row[key] for row in same]) for key in keys]
        served = sum(bool(row["gate"].get("served")) for row in same)
        cells = [f"{v:.4f}" if key == "val_macro_f1" else f"{v:.1f}" for key, v in zip(keys, values, strict=True)]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {served if k else '-'} of {len(same)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the simulation for each ``--k`` and ``--seeds``; print the table and write ``--out`` (JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="weights/fish4knowledge_lite2.pt")
    parser.add_argument("--features", type=Path, default=Path("runs/corrections_sim"))
    parser.add_argument("--k", default="0,3,10,30", help="accepted photos per label, comma-separated")
    parser.add_argument("--seeds", default="0", help="random cuts of the photo sets, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("runs/corrections_sim/simulation.json"))
    args = parser.parse_args(argv)
    setup_logging()
    predictor = Predictor.from_checkpoint(args.checkpoint, backend="torch")
    sets = load_sets(args.features)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows += simulate(predictor, sets, [int(k) for k in args.k.split(",")], seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
