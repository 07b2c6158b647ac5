"""A uniform model soup (training.soup) and train.py --split-file, on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from model.checkpoint import load_checkpoint, release_checkpoint, save_checkpoint
from model.network import build_model
from model.predictor import Predictor
from tests.helpers import COLOURS, make_imagefolder, synthetic_image
from training import refit
from training.data import read_split
from training.soup import SoupError, average_state_dicts, main


def test_average_is_the_mean_except_the_classifier_and_integer_buffers() -> None:
    torch.manual_seed(0)
    a, b, c = (build_model("resnet18", 3).state_dict() for _ in range(3))
    b = {k: v.half() if v.is_floating_point() else v + 5 for k, v in b.items()}  # a release's fp16 mixes in
    soup = average_state_dicts([a, b, c], skip="fc")
    conv = "conv1.weight"
    assert torch.allclose(soup[conv], (a[conv] + b[conv].float() + c[conv]) / 3, atol=1e-6)
    assert not torch.equal(soup[conv], a[conv])
    mean = "bn1.running_mean"
    a[mean].uniform_()
    soup = average_state_dicts([a, b, c], skip="fc")
    assert torch.allclose(soup[mean], (a[mean] + b[mean].float() + c[mean]) / 3)
    assert torch.equal(soup["fc.weight"], a["fc.weight"]) and torch.equal(soup["fc.bias"], a["fc.bias"])
    assert torch.equal(soup["bn1.num_batches_tracked"], a["bn1.num_batches_tracked"])
    assert all(v.dtype == torch.float32 for v in soup.values() if v.is_floating_point())
    with pytest.raises(SoupError, match="two or more"):
        average_state_dicts([a], skip="fc")


def _train(data: Path, out: Path, *extra: str) -> Path:
    args = [
        "--data", str(data), "--out", str(out), "--arch", "resnet18", "--weights", "none", "--epochs", "1",
        "--batch-size", "8", "--image-size", "32", "--workers", "0", "--group-pattern", r"fish_(\d+)_",
        "--val-fraction", "0.25", *extra,
    ]  # fmt: skip
    assert train.main(args) == 0
    return out


@pytest.mark.slow
def test_soup_of_runs_on_one_split_refits_and_serves(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", per_class=8, groups_per_class=4)
    first = _train(data, tmp_path / "s0", "--seed", "0")
    split = first / "split.csv"
    second = _train(data, tmp_path / "s1", "--seed", "1", "--split-file", str(split))
    other_split = _train(data, tmp_path / "s2", "--seed", "2")
    class_names = sorted(COLOURS)
    # --split-file keeps the first run's split although the seed (which draws the split) differs
    assert (second / "split.csv").read_text() == split.read_text()
    assert set(read_split(other_split / "split.csv", class_names)) != set(read_split(split, class_names))

    # a release file mixes with a run folder; the soup is the mean of the two networks
    release = tmp_path / "s1_release.pt"
    save_checkpoint(release_checkpoint(load_checkpoint(second / "best.pt")), release)
    soup = tmp_path / "soup"
    assert main([str(first), str(release), "--out", str(soup)]) == 0
    made, a, b = (load_checkpoint(p).state_dict for p in (soup / "best.pt", first / "best.pt", release))
    key = "layer1.0.conv1.weight"
    assert torch.allclose(made[key], (a[key] + b[key].float()) / 2, atol=1e-6)
    assert torch.equal(made["fc.weight"], a["fc.weight"])
    assert (soup / "split.csv").read_text() == split.read_text()
    assert load_checkpoint(soup / "best.pt").config["soup"]["ingredients"] == [str(first), str(release)]

    # the soup is a run folder that refit releases, and the release answers
    assert refit.main([str(soup), "--out", str(tmp_path / "soup_refit"), "--workers", "0"]) == 0
    predictor = Predictor.from_checkpoint(tmp_path / "soup_refit" / "release.pt")
    assert predictor.predict([synthetic_image(COLOURS["clownfish"])])[0].label in COLOURS

    # runs validated on other images, a lone ingredient, a missing one, a release without --split-file: refused
    assert main([str(first), str(other_split), "--out", str(tmp_path / "x")]) == 2
    assert main([str(first), "--out", str(tmp_path / "x")]) == 2
    assert main([str(first), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert main([str(release), str(release), "--out", str(tmp_path / "x")]) == 2
    assert main([str(release), str(release), "--out", str(tmp_path / "x"), "--split-file", str(split)]) == 0
    same = load_checkpoint(tmp_path / "x" / "best.pt").state_dict
    assert all(torch.equal(same[k], v.float() if v.is_floating_point() else v) for k, v in b.items())


def test_soup_refuses_other_networks(tmp_path: Path) -> None:
    from model.checkpoint import Checkpoint
    from model.transforms import Preprocessing

    def checkpoint(arch: str, classes: list[str]) -> Path:
        model = build_model(arch, len(classes))
        ckpt = Checkpoint(
            arch=arch,
            class_names=classes,
            preprocessing=Preprocessing(image_size=32, resize_size=36),
            state_dict=model.state_dict(),
            config={"data": str(tmp_path), "out": str(tmp_path), "arch": arch, "weights": "none"},
        )
        path = tmp_path / f"{arch}_{len(classes)}.pt"
        save_checkpoint(ckpt, path)
        return path

    split = tmp_path / "split.csv"
    split.write_text("path,class,split\na/1.jpg,a,train\nb/2.jpg,b,val\nc/3.jpg,c,val\n")
    three = checkpoint("resnet18", ["a", "b", "c"])
    for other in (checkpoint("resnet34", ["a", "b", "c"]), checkpoint("resnet18", ["a", "b"])):
        assert main([str(three), str(other), "--out", str(tmp_path / "x"), "--split-file", str(split)]) == 2
    assert not (tmp_path / "x").exists()


def test_split_file_must_name_images_of_the_data(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", per_class=4, groups_per_class=2)
    image = next(p for p in sorted(data.rglob("*.jpg")) if p.parent.name == "clownfish")
    split = tmp_path / "split.csv"
    split.write_text(f"path,class,split\nclownfish/{image.name},clownfish,train\nclownfish/gone.jpg,clownfish,val\n")
    base = ["--data", str(data), "--arch", "resnet18", "--weights", "none", "--workers", "0"]
    assert train.main([*base, "--out", str(tmp_path / "a"), "--split-file", str(split)]) == 2
    assert not (tmp_path / "a" / "best.pt").exists()
    both = ["--split-file", str(split), "--val-data", str(data)]
    with pytest.raises(SystemExit):  # argparse's usage error, as for the other option conflicts
        train.main([*base, "--out", str(tmp_path / "b"), *both])
