"""Typed configs: pydantic models filled from YAML recipes and ``--set key=value`` overrides.

Every pipeline's config subclasses `PipelineConfig`, whose defaults are the published configuration
(``pipelines/<name>/paper.yaml`` repeats them for readers). A wrong key or value becomes a one-line
`ConfigError` naming the dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medml.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


def recipes_dir() -> Path:
    """Where the recipes and model cards are: ``pipelines/`` in a checkout, ``medml/recipes/`` in a wheel.

    setup.py maps the checkout's ``pipelines/`` folder to the package ``medml.recipes``, so an installed medml
    (``pip install .``, from git, from a wheel) finds the same ``<name>/{paper,tiny}.yaml`` and ``README.md``.
    """
    installed = Path(__file__).resolve().parent / "recipes"
    return installed if installed.is_dir() else REPO_ROOT / "pipelines"


RECIPES_DIR = recipes_dir()


# Bounded number types for config fields: an out-of-range value is a one-line error naming its key.
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1): momentum, EMA decay


class Strict(BaseModel):
    """Base for every config block: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class OptimConfig(Strict):
    """Optimiser and learning-rate schedule of one training stage."""

    name: Literal["adam", "adamw", "sgd"] = "adam"  # optimiser
    lr: PositiveFloat = 1e-4  # learning rate (peak, after any warm-up)
    weight_decay: NonNegativeFloat = 0.0  # L2 penalty (decoupled for adamw)
    momentum: Fraction = 0.9  # sgd only
    schedule: Literal["none", "cosine", "step", "poly"] = "cosine"  # learning-rate schedule, stepped every batch
    warmup_epochs: NonNegativeFloat = 0.0  # linear warm-up from lr/100, counted in epochs (fractions allowed)
    step_size: PositiveInt = 30  # "step": epochs between decays
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1  # "step": decay factor
    poly_power: PositiveFloat = 0.9  # "poly": lr * (1 - t/T)^power, as in nnU-Net and DiffRect


class StageConfig(Strict):
    """One stage of a multi-stage recipe: its own trainable parameters, optimiser and epochs.

    ``kind: fit`` trains with the Lightning Trainer; ``kind: run`` calls the module's ``run_stage`` once
    (for steps with no optimisation, such as pushing prototypes onto training data).
    """

    name: str  # the stage folder name (stages/NN-name) and what --resume keys on
    kind: Literal["fit", "run"] = "fit"  # fit: trained by the Lightning Trainer; run: one run_stage call
    enabled: bool = True  # false skips the stage
    epochs: PositiveInt | None = None  # None: train.max_epochs
    trainable: list[str] = []  # parameter-name prefixes; empty means every parameter
    optim: OptimConfig | None = None  # None: train.optim
    monitor: str | None = None  # None: train.monitor
    monitor_mode: Literal["min", "max"] | None = None  # None: train.monitor_mode
    patience: NonNegativeInt | None = None  # None: train.patience
    keep: Literal["best", "last"] = "best"  # weights a fit stage ends with: best monitored checkpoint, or the last


class TrainConfig(Strict):
    """Engine settings shared by every pipeline."""

    seed: Annotated[int, Field(ge=0, lt=2**32)] = 42  # numpy's seed range
    batch_size: PositiveInt = 32  # per device; the global batch is batch_size x devices x nodes
    # set: the global batch is kept whatever the device count (per-device training batch = global / (devices x
    # nodes), refused if it does not divide; batch_size then sizes evaluation batches only); lr is never rescaled
    global_batch_size: PositiveInt | None = None
    num_workers: NonNegativeInt = 2  # DataLoader worker processes per device
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    devices: int | str = "auto"  # "auto" or a count
    num_nodes: PositiveInt = 1  # machines of a multi-node (DDP) run
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16-mixed on CUDA, else 32
    max_epochs: PositiveInt = 100  # epochs of a fit stage without its own epochs
    optim: OptimConfig = OptimConfig()  # optimiser and schedule of stages without their own
    monitor: str | None = "val_loss"  # logged value choosing the best checkpoint (and early stopping); None: the last
    monitor_mode: Literal["min", "max"] = "min"  # whether a lower or higher monitor is better
    patience: NonNegativeInt | None = None  # early-stopping patience in validation rounds; None disables
    save_top_k: Annotated[int, Field(ge=-1)] = 1  # -1: keep all
    grad_clip: PositiveFloat | None = None  # clip the gradient norm to this value; None: no clipping
    accumulate_grad_batches: PositiveInt = 1  # batches whose gradients add up before an optimiser step
    ema_decay: Fraction | None = None  # keep an exponential moving average of the weights; validate and export it
    sync_batchnorm: bool = False  # synchronise BatchNorm statistics across DDP processes
    deterministic: bool = False  # deterministic CUDA kernels (slower; bit-identical reruns)
    check_val_every_n_epoch: PositiveInt = 1  # validate every N epochs
    limit_train_batches: float | int = 1.0  # Lightning's meaning: a fraction (float) or a number of batches (int)
    limit_val_batches: float | int = 1.0  # as limit_train_batches, for validation
    log_every_n_steps: PositiveInt = 50  # training steps between logged values
    progress: bool = True  # show progress bars
    # experiment trackers logged to besides CSV and TensorBoard (pip install 'medml[trackers]'); none by default
    trackers: list[Literal["mlflow", "wandb"]] = []
    experiment: str | None = None  # tracker experiment (MLflow) / project (W&B) name; None: medml-<run folder>

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if value == "auto":
            return value
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError("must be 'auto' or a number of devices")
        if int(value) < 1:
            raise ValueError("must be 'auto' or at least 1")
        return value

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _batch_limit(cls, value: float | int) -> float | int:
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("a fraction of the batches must be in (0, 1]")
        if isinstance(value, int) and value < 1:
            raise ValueError("a number of batches must be at least 1")
        return value


class PipelineConfig(Strict):
    """Base of every pipeline's config: engine settings plus the stage list."""

    train: TrainConfig = TrainConfig()
    stages: list[StageConfig] = [StageConfig(name="train")]


C = TypeVar("C", bound=PipelineConfig)


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    got = first.get("input")
    got_text = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    more = len(err.errors()) - 1
    tail = f"; and {more} more" if more else ""
    msg = first["msg"].removeprefix("Value error, ")
    return f"config key '{key}': {msg}{got_text}{tail}"


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"config key '{dotted}': '{part}' is not an index of a {len(node)}-item list")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{'.'.join(parts[:i])}' is not a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``["a.b=3", "c=[1,2]"]`` -> ``[("a.b", 3), ("c", [1, 2])]``; values are parsed as YAML scalars."""
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has no key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except RecursionError:  # PyYAML recurses per nesting level
            raise ConfigError(f"config key '{key}': the value is nested too deeply") from None
        parsed.append((key, value))
    return parsed


def resolve_recipe(pipeline: str, config: str | Path | None) -> Path | None:
    """A recipe name (``paper``, ``tiny``) or a YAML path -> a YAML path; ``None`` means the defaults."""
    if config is None:
        return None
    path = Path(config)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError("config file not found", path)
        return path
    recipe = recipes_dir() / pipeline / f"{config}.yaml"
    if not recipe.is_file():
        raise ConfigError(f"no recipe '{config}' for pipeline '{pipeline}' (looked for {recipe})")
    return recipe


def load_config(config_cls: type[C], source: str | Path | dict | None = None, overrides: list[str] | None = None) -> C:
    """Build a validated config from defaults, then a YAML file (or dict), then ``key=value`` overrides."""
    if isinstance(source, dict):
        tree = dict(source)
    elif source is None:
        tree = {}
    else:
        try:
            tree = yaml.safe_load(Path(source).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", source) from None
        except RecursionError:
            raise ConfigError("not a usable recipe: values nested too deeply", source) from None
        if not isinstance(tree, dict):
            raise ConfigError("a recipe must be a mapping of keys to values", source)
    if overrides:
        # Overrides address the full tree, so start from the defaults merged with the file.
        tree = _validate(config_cls, tree).model_dump(mode="python")
        for key, value in parse_overrides(overrides):
            _set_dotted(tree, key, value)
    return _validate(config_cls, tree)


def _validate(config_cls: type[C], tree: dict) -> C:
    try:
        return config_cls.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
    except RecursionError:
        raise ConfigError("config values nested too deeply") from None


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
