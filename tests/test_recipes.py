"""Training recipes (issue 5): heads, fine-tuning phases, optimisers and schedules, mixing, EMA, class balance,
early stopping, ``--config`` files, ``--classes``, and torchrun, on tiny synthetic data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import train
from model.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from model.heads import MLPHead
from model.network import build_model, classifier_name
from model.predictor import Predictor
from model.transforms import Preprocessing
from tests.helpers import COLOURS, ROOT, TINY_ARCH, make_imagefolder, synthetic_image
from training.config import TrainConfig, config_from_dict, get_args_parser, parse_args, validate
from training.engine import train_one_epoch
from training.optim import (
    build_batch_mix,
    build_ema,
    build_optimizer,
    build_scheduler,
    class_weights,
    set_backbone_trainable,
)

FISH_GROUPS = r"fish_(\d+)_"


def _args(data: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [
        *("--data", str(data), "--out", str(out), "--arch", "resnet18", "--weights", "none"),
        *("--epochs", str(epochs), "--batch-size", "8", "--lr", "0.05", "--image-size", "32", "--workers", "0"),
        *("--group-pattern", FISH_GROUPS, "--val-fraction", "0.25", *extra),
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 colours x 16 images, 8 tracks per class."""
    return make_imagefolder(tmp_path_factory.mktemp("recipes") / "data", per_class=16, groups_per_class=8)


# --- heads -------------------------------------------------------------------------------------------------------


def test_mlp_head_has_the_requested_layers_and_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    head = {"type": "mlp", "hidden": [32, 16], "dropout": 0.3}
    model = build_model(TINY_ARCH, num_classes=3, head=head)
    assert classifier_name(model) == "fc" and isinstance(model.fc, MLPHead)
    linears = [m for m in model.fc if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(model.num_features, 32), (32, 16), (16, 3)]
    assert [m.p for m in model.fc if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)

    ckpt = make_checkpoint(
        model=model,
        arch=TINY_ARCH,
        class_names=sorted(COLOURS),
        preprocessing=Preprocessing.for_image_size(32),
        epoch=0,
        metrics={},
        config={},
        head=head,
    )
    save_checkpoint(ckpt, tmp_path / "mlp.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "mlp.pt"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model.eval()(x))
    predictor = Predictor.from_checkpoint(tmp_path / "mlp.pt", precision="fp32")
    assert predictor.predict([synthetic_image((1, 2, 3))])[0].label in COLOURS


def test_heads_fit_other_torchvision_families() -> None:
    for arch in ("mobilenet_v3_small", "efficientnet_b0"):
        model = build_model(arch, num_classes=4, head={"type": "mlp", "hidden": [8], "dropout": 0.0})
        assert isinstance(model.get_submodule(classifier_name(model)), MLPHead)
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="unknown head"):
        build_model("resnet18", 2, head={"type": "transformer"})


def test_weights_path_with_a_linear_head_seeds_an_mlp_backbone(tmp_path: Path) -> None:
    source = build_model(TINY_ARCH, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    model = build_model(TINY_ARCH, 3, weights=str(tmp_path / "tiny.pth"), head={"type": "mlp", "hidden": [16]})
    torch.testing.assert_close(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert isinstance(model.fc, MLPHead)


# --- fine-tuning phases, optimisers, schedules -------------------------------------------------------------------


def _tiny_loader(n: int = 16) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(n) % 3), batch_size=8)


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics_and_trains_the_head() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, head={"type": "mlp", "hidden": [16]})
    set_backbone_trainable(model, False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = build_scheduler(optimizer, name="cosine", epochs=1, steps_per_epoch=2, warmup_epochs=0)
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, scheduler, _tiny_loader(), torch.device("cpu"), 0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("fc.") for k in changed)  # BN running stats included: unchanged
    assert model.fc.training and not model.layer1.training and not model.bn1.training  # set by train_mode


def test_optimizer_groups_give_the_backbone_a_scaled_learning_rate() -> None:
    model = build_model("resnet18", num_classes=3)
    for name, cls in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        optimizer = build_optimizer(model, 0.1, 0.9, 1e-4, name=name, backbone_lr_scale=0.1)
        assert isinstance(optimizer, cls)
        groups = {g["name"]: g for g in optimizer.param_groups}
        assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
        assert groups["head"]["lr"] == pytest.approx(0.1) and groups["backbone"]["lr"] == pytest.approx(0.01)
        assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 1e-4
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, 0.1, 0.9, 0.0, name="lion")


def _lrs(scheduler_name: str, metrics: list[float] | None = None, **kwargs: float) -> list[float]:
    optimizer = build_optimizer(nn.Linear(2, 2), lr=0.1, momentum=0.9, weight_decay=0.0)
    schedule = build_scheduler(optimizer, name=scheduler_name, epochs=10, steps_per_epoch=10, **kwargs)
    lrs = []
    for epoch in range(10):
        for _ in range(10):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        if metrics is not None:
            schedule.epoch_end(epoch, metrics[epoch])
    return lrs


def test_onecycle_rises_over_the_warmup_then_anneals() -> None:
    lrs = _lrs("onecycle", warmup_epochs=2)
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.1, rel=1e-3) and 18 <= peak <= 21
    assert lrs[0] == pytest.approx(0.1 / 25, rel=1e-3) and lrs[-1] < 1e-4


def test_plateau_decays_when_the_metric_stalls_after_warmup() -> None:
    metrics = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]  # stalls from epoch 3 on
    lrs = _lrs("plateau", metrics, warmup_epochs=1, gamma=0.5, plateau_patience=1)
    per_epoch = lrs[::10]
    assert per_epoch[0] == pytest.approx(0.001)  # warmup from 1 %
    assert per_epoch[1] == pytest.approx(0.1) and per_epoch[4] == pytest.approx(0.1)
    assert per_epoch[5] == pytest.approx(0.05) and per_epoch[7] == pytest.approx(0.025)  # every 2 stalled epochs
    assert per_epoch[-1] == pytest.approx(0.0125)


def test_step_schedule_decays_by_gamma() -> None:
    per_epoch = _lrs("step", warmup_epochs=0, step_size=4, gamma=0.1)[::10]
    assert per_epoch[:4] == pytest.approx([0.1] * 4)
    assert per_epoch[4] == pytest.approx(0.01) and per_epoch[8] == pytest.approx(0.001)


# --- mixing, EMA, class balance ----------------------------------------------------------------------------------


def test_mixup_and_cutmix_produce_soft_targets() -> None:
    assert build_batch_mix(0.0, 0.0, 3) is None
    images, targets = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    for mix in (build_batch_mix(0.4, 0.0, 3), build_batch_mix(0.0, 1.0, 3), build_batch_mix(0.4, 1.0, 3)):
        mixed, soft = mix(images, targets)
        assert mixed.shape == images.shape and soft.shape == (4, 3)
        torch.testing.assert_close(soft.sum(1), torch.ones(4))


def test_ema_averages_weights_with_the_given_decay() -> None:
    model = nn.Linear(2, 1)
    nn.init.constant_(model.weight, 1.0)
    ema = build_ema(model, decay=0.9)
    ema.update_parameters(model)  # first update copies
    nn.init.constant_(model.weight, 2.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 2.0))


def test_inverse_frequency_class_weights() -> None:
    weights = class_weights([0, 0, 0, 1], num_classes=3)
    torch.testing.assert_close(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))


@pytest.mark.slow  # trains
def test_balanced_sampler_and_class_weights_on_an_imbalanced_folder(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", per_class=16, groups_per_class=8)
    for path in sorted((data / "clownfish").glob("*.jpg"))[4:]:
        path.unlink()  # clownfish: 4 images against 16 and 16
    from training.data import scan_image_folder
    from training.distributed import DistributedContext
    from training.run_data import train_sampler

    class_names, samples = scan_image_folder(data)
    cfg = TrainConfig(data=str(data), out="x", sampler="balanced")
    sampler = train_sampler(cfg, samples, len(class_names), DistributedContext())
    drawn = Counter(samples[i].target for _ in range(50) for i in sampler)
    shares = [drawn[c] / sum(drawn.values()) for c in range(3)]
    assert shares == pytest.approx([1 / 3] * 3, abs=0.03)  # uniform despite 16 / 4 / 16

    out = tmp_path / "run"
    assert train.main(_args(data, out, "--class-weights", "auto", "--sampler", "balanced", epochs=1)) == 0
    assert (out / "release.pt").is_file()


# --- the config: one declaration, parsed from the command line, YAML and mappings -------------------------------


def test_the_parser_has_one_flag_per_option_with_its_default() -> None:
    parsed = vars(get_args_parser().parse_args([]))
    assert set(parsed) == {"config", *TrainConfig.model_fields}
    assert parsed["data"] is None and parsed["out"] is None  # required: parse_args checks them
    defaults = TrainConfig().to_dict()
    assert {k: v for k, v in parsed.items() if k not in ("config", "data", "out")} == {
        k: v for k, v in defaults.items() if k not in ("data", "out")
    }


def test_mappings_are_converted_like_the_command_line() -> None:
    """YAML 1.1 reads ``3e-3`` as a string; lists may be written as on the command line."""
    values = {"lr": "3e-3", "epochs": 2.0, "classes": "daisy, rose", "head-hidden": "64,32", "cache_images": "yes"}
    assert config_from_dict(values) == TrainConfig(
        lr=0.003, epochs=2, classes=["daisy", "rose"], head_hidden=[64, 32], cache_images=True
    )
    argv = ["--data", "d", "--out", "o", "--lr", "3e-3", "--epochs", "2", "--classes", "daisy,rose"]
    assert parse_args([*argv, "--head-hidden", "64,32", "--cache-images"]) == config_from_dict(
        {**values, "data": "d", "out": "o"}
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": 0}, "--lr must be > 0"),
        ({"val_fraction": 1}, "--val-fraction must be in (0, 1)"),
        ({"crop-pct": 1.5}, "--crop-pct must be in (0, 1]"),
        ({"optimizer": "adam"}, "--optimizer must be one of sgd, adamw"),
        ({"head_hidden": [64, 0]}, "--head-hidden needs one or more widths >= 1"),
        ({"classes": "daisy"}, "--classes needs at least two class names"),
        ({"epochs": "ten"}, "--epochs: Input should be a valid integer"),
        ({"epochs": 1.5}, "--epochs: Input should be a valid integer"),
        ({"ema_decay": 0.2}, "--ema-decay must be 0 (off) or in [0.5, 1)"),
        ({"freeze_backbone": True, "head_epochs": 2}, "use --freeze-backbone or --head-epochs, not both"),
        ({"arch": "resnet81"}, "unknown arch 'resnet81'"),
        ({"lr": -1, "epochs": 0}, "--epochs must be >= 1; --lr must be > 0"),
        ({"learning-rate": 0.1}, "unknown option(s) learning_rate"),
    ],
)
def test_bad_values_are_rejected_with_a_message_naming_the_option(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict({"data": "d", "out": "o", **values})


def test_validate_checks_a_config_changed_after_it_was_made() -> None:
    cfg = TrainConfig(data="d", out="o")
    validate(cfg)
    cfg.lr = -1.0
    with pytest.raises(ValueError, match="--lr must be > 0"):
        validate(cfg)


# --- whole runs --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # trains
def test_config_file_sets_defaults_the_command_line_overrides_and_the_run_saves_it(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "arch": "resnet18",
                "head": "mlp",
                "head-hidden": [16, 8],
                "optimizer": "adamw",
                "lr": "3e-3",  # YAML 1.1 reads this as a string: converted like on the command line
                "epochs": 5,
                "ema_decay": 0.9,
                "mixup_alpha": 0.2,
                "cutmix_alpha": 1.0,
                "clip_grad_norm": 1.0,
                "scheduler": "onecycle",
                "augment": "strong",
            }
        )
    )
    out = tmp_path / "run"
    args = [a for a in _args(data, out) if a not in ("--lr", "0.05")]
    assert train.main(["--config", str(config), *args]) == 0  # --epochs 2 on the command line beats 5
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["head"] == "mlp" and saved["head_hidden"] == [16, 8]
    assert saved["lr"] == pytest.approx(3e-3) and saved["optimizer"] == "adamw"
    assert parse_args(["--config", str(out / "config.yaml")]) == config_from_dict(saved)  # it reads back
    last, release = load_checkpoint(out / "last.pt").to_dict(), load_checkpoint(out / "release.pt").to_dict()
    assert last["config"] == saved and last["head"] == {"type": "mlp", "hidden": [16, 8], "dropout": 0.2}
    assert "training_model" in last and "training_model" not in release  # EMA: raw weights kept for --resume
    assert not torch.equal(last["training_model"]["conv1.weight"], last["model"]["conv1.weight"])
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2


def test_config_file_errors_are_clear(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: resnet18\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        train.main(["--config", str(bad), *_args(data, tmp_path / "run")])
    assert "unknown option(s) learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--config", str(tmp_path / "missing.yaml"), *_args(data, tmp_path / "run")])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown option"):
        config_from_dict({"data": "x", "out": "y", "nonsense": 1})


@pytest.mark.slow  # trains
def test_head_epochs_then_the_whole_network_with_a_lower_backbone_lr(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        assert train.main(_args(data, out, "--head-epochs", "1", "--backbone-lr-scale", "0.2", "--head", "mlp")) == 0
    assert "backbone frozen (BatchNorm in eval mode) for the first 1 epoch(s)" in caplog.text
    assert "epoch 2: training the whole network, backbone LR x 0.2" in caplog.text
    groups = load_checkpoint(out / "last.pt").training_state.optimizer["param_groups"]
    initial = {g["name"]: g["initial_lr"] for g in groups}
    assert initial["backbone"] == pytest.approx(0.2 * initial["head"])


@pytest.mark.slow  # trains
def test_patience_stops_when_the_metric_stops_improving(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # a frozen backbone and a negligible LR: the validation macro-F1 cannot change after the first epoch
    args = _args(data, out, "--freeze-backbone", "--patience", "2", "--warmup-epochs", "0", epochs=10)
    args[args.index("--lr") + 1] = "1e-12"
    assert train.main(args) == 0
    final = json.loads((out / "metrics.json").read_text())
    assert final["epochs_run"] == 3 and final["stopped_early"] is True and final["best_epoch"] == 0


@pytest.mark.slow  # trains
def test_classes_option_trains_on_a_subset_of_the_folders(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train.main(_args(data, out, "--classes", "clownfish,blue_tang", epochs=1)) == 0
    assert load_checkpoint(out / "release.pt").class_names == ["blue_tang", "clownfish"]
    assert train.main(_args(data, tmp_path / "bad", "--classes", "clownfish,tulip", epochs=1)) == 2


@pytest.mark.slow  # torchrun: two processes train
def test_torchrun_two_cpu_processes_train_and_write_one_checkpoint(data: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` with gloo on the CPU: DDP, a distributed sampler, rank-0 files."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(str(ROOT / "train.py"), *_args(data, out), "--device", "cpu", "--precision", "fp32"),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((out / "metrics.json").read_text())
    assert final["world_size"] == 2 and final["epochs_run"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch: rank 0 alone writes
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt", "release.pt"]
    assert not list(out.glob(".*.tmp"))
    # every validation image was predicted once (the two shards were gathered), images of both ranks counted
    assert sum(final["per_class"][c]["support"] for c in final["per_class"]) == final["images"]
    assert final["images"] == len((out / "split.csv").read_text().splitlines()) - 1 - _train_rows(out)
    assert result.stderr.count("process 0 of 2") == 1 and "process 1 of 2" not in result.stderr
    assert Predictor.from_checkpoint(out / "release.pt").class_names == sorted(COLOURS)


def _train_rows(run: Path) -> int:
    return sum(1 for line in (run / "split.csv").read_text().splitlines() if line.endswith(",train"))


def test_schedule_state_round_trips_and_reads_a_bare_scheduler_state() -> None:
    def schedule(name: str) -> tuple[torch.optim.Optimizer, object]:
        optimizer = build_optimizer(nn.Linear(2, 2), lr=0.1, momentum=0.9, weight_decay=0.0)
        return optimizer, build_scheduler(optimizer, name=name, epochs=4, steps_per_epoch=5, warmup_epochs=1)

    optimizer, first = schedule("cosine")
    for _ in range(7):
        optimizer.step()
        first.step()
    for state in (first.state_dict(), first.state_dict()["per_step"]):  # ours, and a pre-plateau checkpoint's
        resumed_optimizer, resumed = schedule("cosine")
        resumed.load_state_dict(state)
        resumed_optimizer.step()
        resumed.step()
        optimizer_copy, reference = schedule("cosine")
        for _ in range(8):
            optimizer_copy.step()
            reference.step()
        assert resumed.per_step.last_epoch == reference.per_step.last_epoch == 8
