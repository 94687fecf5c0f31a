import pytest

from medml.config import OptimConfig, load_config, parse_overrides
from medml.errors import ConfigError
from medml.pipelines.base import lr_lambda
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


def test_lr_schedules():
    cos = lr_lambda(OptimConfig(schedule="cosine"), total_steps=100, steps_per_epoch=10)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    warm = lr_lambda(OptimConfig(schedule="cosine", warmup_epochs=1), total_steps=110, steps_per_epoch=10)
    assert warm(0) == pytest.approx(0.01) and warm(5) == pytest.approx(0.01 + 0.99 * 0.5) and warm(10) == 1.0
    step = lr_lambda(OptimConfig(schedule="step", step_size=2, gamma=0.5), total_steps=100, steps_per_epoch=10)
    assert [step(s) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    poly = lr_lambda(OptimConfig(schedule="poly", poly_power=0.9), total_steps=100, steps_per_epoch=10)
    assert poly(50) == pytest.approx(0.5**0.9)


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
