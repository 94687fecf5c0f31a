import math

import pytest
import torch

from medml.config import OptimConfig, load_config, parse_overrides
from medml.errors import ConfigError
from medml.pipelines.base import lr_scheduler
from tests.engine.toy_pipeline import ToyConfig


def test_overrides_reach_nested_keys_and_list_items():
    cfg = load_config(ToyConfig, None, ["train.optim.lr=3e-4", "stages.0.epochs=7", "model.hidden=5"])
    assert cfg.train.optim.lr == pytest.approx(3e-4)
    assert cfg.stages[0].epochs == 7
    assert cfg.model.hidden == 5
    assert cfg.train.batch_size == 8  # untouched defaults stay


def test_yaml_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  hidden: 3\ntrain:\n  seed: 9\n")
    cfg = load_config(ToyConfig, recipe, ["train.seed=10"])
    assert (cfg.model.hidden, cfg.train.seed) == (3, 10)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.hiden=3", "model.hiden"),
        ("train.batch_size=abc", "train.batch_size"),
        ("stages.5.epochs=1", "stages.5.epochs"),
        ("train.optim.name=rmsprop", "train.optim.name"),
        ("train.batch_size=-1", "train.batch_size"),
        ("train.optim.lr=-3", "train.optim.lr"),
        ("train.optim.lr=0", "train.optim.lr"),
        ("train.optim.momentum=1", "train.optim.momentum"),
        ("train.optim.gamma=1.5", "train.optim.gamma"),
        ("train.optim.warmup_epochs=-1", "train.optim.warmup_epochs"),
        ("stages.0.optim={lr: -1}", "stages.0.optim.lr"),
        ("stages.0.epochs=0", "stages.0.epochs"),
        ("stages.0.patience=-1", "stages.0.patience"),
        ("train.max_epochs=0", "train.max_epochs"),
        ("train.save_top_k=-2", "train.save_top_k"),
        ("train.grad_clip=0", "train.grad_clip"),
        ("train.accumulate_grad_batches=0", "train.accumulate_grad_batches"),
        ("train.num_workers=-1", "train.num_workers"),
        ("train.num_nodes=0", "train.num_nodes"),
        ("train.devices=0", "train.devices"),
        ("train.devices=two", "train.devices"),
        ("train.ema_decay=1", "train.ema_decay"),
        ("train.limit_val_batches=0", "train.limit_val_batches"),
        ("train.limit_train_batches=1.5", "train.limit_train_batches"),
        ("train.seed=-1", "train.seed"),
    ],
)
def test_bad_override_is_one_line_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(ToyConfig, None, [override])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.seed"])


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(ToyConfig, bad)


def _old_lr_factor(cfg: OptimConfig, total_steps: int, steps_per_epoch: int, step: int) -> float:
    """The hand-written schedule medml used before torch's schedulers: the reference they must match."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return 0.01 + 0.99 * step / max(1, warmup)
    t = (step - warmup) / max(1, total_steps - warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "poly":
        return max(0.0, 1.0 - t) ** cfg.poly_power
    if cfg.schedule == "step":
        return cfg.gamma ** ((step - warmup) // max(1, cfg.step_size * steps_per_epoch))
    return 1.0


def _trajectory(cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> list[float]:
    """The lr of every optimiser step, as Lightning drives the scheduler (one step() after each batch)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = lr_scheduler(opt, cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(total_steps + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


@pytest.mark.parametrize(
    "optim, total, per_epoch",
    [
        ({"schedule": "cosine"}, 100, 10),
        ({"schedule": "cosine", "warmup_epochs": 1}, 110, 10),
        ({"schedule": "cosine", "warmup_epochs": 0.25}, 997, 37),
        ({"schedule": "poly", "poly_power": 0.9}, 100, 10),
        ({"schedule": "poly", "poly_power": 0.9, "warmup_epochs": 2}, 250, 25),
        ({"schedule": "step", "step_size": 2, "gamma": 0.5}, 100, 10),
        ({"schedule": "step", "step_size": 1, "gamma": 0.3, "warmup_epochs": 1.5}, 90, 9),
        ({"schedule": "none", "warmup_epochs": 1}, 50, 10),
        ({"schedule": "none"}, 30, 10),
    ],
)
def test_torch_schedulers_give_the_multipliers_of_the_old_schedule(optim, total, per_epoch):
    cfg = OptimConfig(lr=0.1, **optim)
    expected = [0.1 * _old_lr_factor(cfg, total, per_epoch, step) for step in range(total + 1)]
    assert _trajectory(cfg, total, per_epoch) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_lr_schedule_shapes():
    cos = _trajectory(OptimConfig(lr=1.0, schedule="cosine"), total_steps=100, steps_per_epoch=10)
    assert cos[0] == pytest.approx(1.0) and cos[50] == pytest.approx(0.5) and cos[100] == pytest.approx(0.0)
    warm = _trajectory(OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1), total_steps=110, steps_per_epoch=10)
    assert warm[0] == pytest.approx(0.01) and warm[5] == pytest.approx(0.01 + 0.99 * 0.5) and warm[10] == 1.0
    step = _trajectory(
        OptimConfig(lr=1.0, schedule="step", step_size=2, gamma=0.5), total_steps=100, steps_per_epoch=10
    )
    assert [step[s] for s in (0, 19, 20, 45)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    poly = _trajectory(OptimConfig(lr=1.0, schedule="poly", poly_power=0.9), total_steps=100, steps_per_epoch=10)
    assert poly[50] == pytest.approx(0.5**0.9)


def test_in_range_edge_values_are_accepted():
    cfg = load_config(
        ToyConfig,
        None,
        [
            "train.save_top_k=-1",
            "train.patience=0",
            "train.ema_decay=0",
            "train.optim.momentum=0",
            "train.optim.gamma=1",
            "train.limit_val_batches=3",
            "train.limit_train_batches=0.5",
            "train.devices=2",
        ],
    )
    assert (cfg.train.save_top_k, cfg.train.limit_val_batches, cfg.train.limit_train_batches) == (-1, 3, 0.5)
    assert isinstance(cfg.train.limit_val_batches, int)  # Lightning reads an int as a count of batches


@pytest.mark.parametrize("value", ["[" * 5000 + "]" * 5000, "{a: " * 5000 + "1" + "}" * 5000])
def test_a_value_nested_thousands_deep_is_a_one_line_error(value):
    with pytest.raises(ConfigError, match="'train.seed'.*nested too deeply") as err:
        load_config(ToyConfig, None, [f"train.seed={value}"])
    assert "\n" not in str(err.value)


def test_a_recipe_nested_thousands_deep_is_a_one_line_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml"):
        load_config(ToyConfig, deep)


@pytest.mark.parametrize("schedule", ["cosine", "poly", "step"])
def test_a_schedule_restored_from_its_state_continues_like_the_uninterrupted_one(schedule):
    """What ``--resume`` does: a new optimiser and scheduler are built, then their saved states are loaded."""
    cfg = OptimConfig(lr=0.1, schedule=schedule, warmup_epochs=1.5, step_size=1, gamma=0.5)

    def build():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        return opt, lr_scheduler(opt, cfg, total_steps=60, steps_per_epoch=10)

    def advance(opt, scheduler, steps):
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        return lrs

    opt, scheduler = build()
    plain = advance(opt, scheduler, 60)
    opt, scheduler = build()
    first = advance(opt, scheduler, 23)  # past the warm-up, inside the second epoch of decay
    saved = opt.state_dict(), scheduler.state_dict()
    opt, scheduler = build()
    opt.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert first + advance(opt, scheduler, 37) == plain
