"""The training engine: one Lightning Trainer per stage, with checkpoints, resume, DDP and run records.

A run folder looks like::

    RUN/config.yaml                 the resolved config
    RUN/run.json                    versions, git commit, data fingerprint, split, seed, devices, final metrics
    RUN/metrics.csv                 every logged value of every stage (column ``stage``)
    RUN/model.ckpt                  the final weights + config (what ``predict`` and ``evaluate`` load)
    RUN/stages/NN-name/             per stage: checkpoints/{best-*,last}.ckpt, logs/, end_state.pt, done.json
    RUN/tensorboard/                TensorBoard logs
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from medml.config import StageConfig, TrainConfig, dump_config, load_config
from medml.engine.callbacks import EMAWeights, RandomStateCallback
from medml.engine.checkpoint import save_model
from medml.engine.data import per_device_batch
from medml.engine.progress import StageProgress
from medml.engine.record import base_record, now
from medml.errors import ConfigError
from medml.utils.files import atomic_path, write_json, write_text
from medml.utils.threads import cap_cpu_threads

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, float] = field(default_factory=dict)


def is_rank_zero() -> bool:
    return (
        int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
        and int(os.environ.get("LOCAL_RANK", "0")) == 0
    )


def auto_accelerator() -> str:
    """CUDA where present, else Apple's MPS (ops without an MPS kernel fall back to the CPU when
    ``PYTORCH_ENABLE_MPS_FALLBACK=1``, which ``medml`` sets on macOS), else the CPU."""
    if torch.cuda.is_available():
        return "gpu"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_devices(cfg: TrainConfig) -> dict[str, Any]:
    """Accelerator, devices, nodes and strategy, honouring a ``torchrun`` or SLURM launch."""
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = auto_accelerator()
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        local = int(os.environ["LOCAL_WORLD_SIZE"])
        world = int(os.environ["WORLD_SIZE"])
        return {
            "accelerator": accelerator,
            "devices": local,
            "num_nodes": max(1, world // local),
            "strategy": "ddp" if world > 1 else "auto",
        }
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", os.environ["SLURM_NTASKS"]).split("(")[0])
        return {
            "accelerator": accelerator,
            "devices": per_node,
            "num_nodes": int(os.environ.get("SLURM_NNODES", 1)),
            "strategy": "ddp",
        }
    devices = cfg.devices
    if devices == "auto":
        devices = torch.cuda.device_count() if accelerator in ("gpu", "cuda") else 1
    devices = int(devices)
    many = devices * cfg.num_nodes > 1
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": cfg.num_nodes,
        "strategy": "ddp" if many else "auto",
    }


def effective_global_batch(cfg: TrainConfig, devices: dict[str, Any]) -> dict[str, int]:
    """Samples per optimiser step over all processes (checks that ``train.global_batch_size`` divides)."""
    processes = int(devices["devices"]) * int(devices["num_nodes"])
    per_device = per_device_batch(cfg, processes)
    return {
        "per_device": per_device,
        "processes": processes,
        "accumulate": cfg.accumulate_grad_batches,
        "global": per_device * processes * cfg.accumulate_grad_batches,
    }


def resolve_precision(cfg: TrainConfig, accelerator: str) -> str:
    if cfg.precision != "auto":
        return "32-true" if cfg.precision == "32" else cfg.precision
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


TRACKER_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}


def check_trackers(cfg: TrainConfig) -> None:
    """An enabled tracker whose package is absent is a one-line error before anything is written."""
    for name in cfg.trackers:
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise ConfigError(
                f"config key 'train.trackers': {name} is enabled but the {TRACKER_PACKAGES[name]} package is not "
                f"installed (pip install {TRACKER_PACKAGES[name]}, or pip install 'medml[trackers]')"
            )


def tracker_loggers(cfg: TrainConfig, run_dir: Path, stage_name: str) -> list[Any]:
    """Lightning's MLflow / Weights & Biases loggers for the trackers the config enables (none by default).

    MLflow logs to ``$MLFLOW_TRACKING_URI`` or, without it, to ``RUN/mlruns``; W&B follows its own environment
    (``WANDB_MODE=offline`` keeps it local). Each stage is a run in the experiment ``train.experiment``.
    """
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    check_trackers(cfg)
    experiment = cfg.experiment or f"medml-{run_dir.resolve().name}"
    loggers: list[Any] = []
    for name in cfg.trackers:
        run_name = f"{run_dir.resolve().name}/{stage_name}"
        if name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.resolve() / "mlruns").as_uri()
            loggers.append(MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri))
        elif name == "wandb":
            loggers.append(WandbLogger(project=experiment, name=run_name, save_dir=str(run_dir)))
    return loggers


def build_trainer(
    cfg: TrainConfig, stage: StageConfig, stage_dir: Path, run_dir: Path, manual_optimization: bool = False
) -> tuple[L.Trainer, ModelCheckpoint]:
    monitor = stage.monitor if stage.monitor is not None else cfg.monitor
    mode = stage.monitor_mode or cfg.monitor_mode
    patience = stage.patience if stage.patience is not None else cfg.patience
    checkpoint = ModelCheckpoint(
        dirpath=stage_dir / "checkpoints",
        filename="best-{epoch:03d}",
        monitor=monitor,
        mode=mode,
        save_top_k=cfg.save_top_k if monitor else 1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks: list[L.Callback] = [checkpoint, RandomStateCallback()]
    if monitor and patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    if cfg.ema_decay:
        callbacks.append(EMAWeights(cfg.ema_decay))
    if cfg.progress:  # one bar per stage with its ETA, instead of Lightning's bar per epoch
        callbacks.append(StageProgress(stage.name, monitor))
    devices = resolve_devices(cfg)
    attempt = len(list((stage_dir / "logs").glob("attempt*")))  # a resumed stage logs beside, not over, the first
    loggers = [
        CSVLogger(save_dir=stage_dir, name="logs", version=f"attempt{attempt}"),
        TensorBoardLogger(save_dir=run_dir / "tensorboard", name=stage_dir.name, version=""),
        *tracker_loggers(cfg, run_dir, stage_dir.name),
    ]
    trainer = L.Trainer(
        **devices,
        precision=resolve_precision(cfg, devices["accelerator"]),
        max_epochs=stage.epochs or cfg.max_epochs,
        callbacks=callbacks,
        logger=loggers,
        gradient_clip_val=None if manual_optimization else cfg.grad_clip,
        accumulate_grad_batches=1 if manual_optimization else cfg.accumulate_grad_batches,
        deterministic=cfg.deterministic,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        log_every_n_steps=cfg.log_every_n_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,  # sanity runs would shift nothing but time; resume must equal the plain run
        use_distributed_sampler=False,  # medml.engine.data builds the samplers
        sync_batchnorm=cfg.sync_batchnorm,
        default_root_dir=stage_dir,
    )
    return trainer, checkpoint


def _stage_weights(checkpoint_path: str, use_ema: bool) -> dict[str, torch.Tensor]:
    ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if use_ema:
        for key, state in ckpt.get("callbacks", {}).items():
            if key.startswith("EMAWeights") and state.get("ema"):
                return state["ema"]
    return ckpt["state_dict"]


def _merge_metrics(run_dir: Path, stage_dirs: list[tuple[str, Path]]) -> None:
    """One table for the whole run: a row per (stage, epoch, step), with a ``stage`` column.

    Lightning's CSVLogger writes training and validation values of one epoch on separate rows; they are joined.
    """
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    columns = ["stage"]
    for name, stage_dir in stage_dirs:
        for row in _stage_rows(stage_dir):
            key = (name, row.get("epoch", ""), row.get("step", ""))
            merged = rows.setdefault(key, {"stage": name})
            merged.update({k: v for k, v in row.items() if v not in ("", None)})
            columns += [c for c in row if c not in columns]
    lines = [",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in rows.values()]
    write_text(run_dir / "metrics.csv", "\n".join(lines) + "\n")


def _stage_rows(stage_dir: Path) -> list[dict[str, str]]:
    """Logged rows of a stage across its attempts (first run, then each resume), in order."""
    rows = []
    attempts = sorted((stage_dir / "logs").glob("attempt*/metrics.csv"), key=lambda p: int(p.parent.name[7:]))
    for path in attempts:
        with path.open() as fh:
            rows += list(csv.DictReader(fh))
    return rows


def _last_values(stage_dir: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for row in _stage_rows(stage_dir):
        for key, val in row.items():
            if val not in ("", None):
                try:
                    values[key] = float(val)
                except ValueError:
                    pass
    return values


# Keys that may differ between a run and its --resume: they change how it runs, not what it computes.
RESUME_MAY_CHANGE = {"train.progress", "train.num_workers", "train.trackers", "train.experiment"}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, val in tree.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        return {k: v for i, val in enumerate(tree) for k, v in _flat(val, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def check_resume_config(pipeline: Any, run_dir: Path) -> None:
    """A resumed run must compute what the interrupted one computed: refuse a changed config key."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError("nothing to resume: the run folder has no config.yaml", run_dir)
    saved = _flat(yaml.safe_load(saved_path.read_text()))
    current = _flat(pipeline.config.model_dump(mode="json"))
    changed = sorted(
        k for k in set(saved) | set(current) if saved.get(k) != current.get(k) and k not in RESUME_MAY_CHANGE
    )
    if changed:
        key = changed[0]
        raise ConfigError(
            f"config key '{key}' is {current.get(key)!r} but the run being resumed used "
            f"{saved.get(key)!r}; resume with the run's own config (omit --config/--set)",
            run_dir,
        )


def _save_stage(stage_dir: Path, module: torch.nn.Module, summary: dict[str, Any]) -> None:
    """Weights and random state at the end of a stage, so a resume from here continues exactly."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "weights": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "random_state": RandomStateCallback().state_dict(),
    }
    with atomic_path(stage_dir / "end_state.pt") as tmp:
        torch.save(state, tmp)
    write_json(stage_dir / "done.json", {**summary, "finished": now()})


def _resume_fold(run_dir: Path, fold: int | None, num_folds: int) -> tuple[int | None, int]:
    """A resumed run keeps its fold: taken from its run.json when not given, refused when given differently."""
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    saved = record.get("fold")
    saved_fold = saved.get("fold") if isinstance(saved, dict) else None
    saved_n = saved.get("num_folds", num_folds) if isinstance(saved, dict) else num_folds
    if fold is None:
        return saved_fold, saved_n
    if saved_fold != fold or saved_n != num_folds:
        raise ConfigError(f"--fold {fold}: the run being resumed trained fold {saved_fold}; omit --fold", run_dir)
    return fold, num_folds


def train(
    pipeline: Any,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    fold: int | None = None,
    num_folds: int = 5,
) -> TrainResult:
    """Train ``pipeline`` on the dataset in ``data_dir`` into the run folder ``run_dir``.

    With ``resume``, finished stages are skipped (their end state restored) and the unfinished stage continues
    from its ``last.ckpt``; the config must equal the run's ``config.yaml`` (``--resume`` on the command line
    loads it). With ``fold``, train on one fold of the dataset's cross-validation (official folds where the
    dataset has them, else fold ``fold`` of a generated ``num_folds``-fold split; `medml.engine.data`).
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if not data_dir.is_dir():
        raise ConfigError("data folder not found", data_dir)
    stages_root = run_dir / "stages"
    if stages_root.exists() and not resume:
        raise ConfigError(
            "this run folder already holds a training run: pass --resume to continue it, or choose another --out",
            run_dir,
        )
    if resume and not stages_root.exists():
        raise ConfigError("nothing to resume: the run folder has no stages/", run_dir)
    if num_folds < 2:
        raise ConfigError(f"--folds {num_folds}: a cross-validation needs at least 2 folds")
    if resume:
        check_resume_config(pipeline, run_dir)
        fold, num_folds = _resume_fold(run_dir, fold, num_folds)
    cfg = pipeline.config
    check_trackers(cfg.train)
    pipeline.check_layout(data_dir)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if resolve_devices(cfg.train)["accelerator"] == "cpu":
        cap_cpu_threads()  # a core busy with another process must not stall every training step

    datamodule = pipeline.datamodule(data_dir)
    if fold is not None:
        if not hasattr(datamodule, "fold_scheme"):
            raise ConfigError(f"--fold: the {pipeline.name} pipeline's data module has no fold mechanism")
        key = getattr(datamodule, "fold_key", None)
        if key is not None:  # the config chooses the fold: set it there, so config.yaml records it
            pipeline.config = load_config(type(cfg), cfg.model_dump(mode="python"), [f"{key}={fold}"])
            cfg = pipeline.config
            if resume:
                check_resume_config(pipeline, run_dir)
            datamodule = pipeline.datamodule(data_dir)
        datamodule.fold, datamodule.num_folds = fold, num_folds
    datamodule.setup("fit")
    module = pipeline.build_module(datamodule)
    module.pipeline_name = pipeline.name
    stages = [s for s in cfg.stages if s.enabled]
    if not stages:
        raise ConfigError("config key 'stages': no stage is enabled")

    rank0 = is_rank_zero()
    record = base_record(
        "train",
        pipeline.name,
        data_dir=str(data_dir.resolve()),
        data_fingerprint=pipeline.data_fingerprint(data_dir),
        seed=cfg.train.seed,
        split=pipeline.split_summary(datamodule),
        stages=[s.name for s in stages],
        devices=resolve_devices(cfg.train),
        fold=None if fold is None else {"fold": fold, "num_folds": num_folds, **datamodule.fold_scheme()},
    )
    record["global_batch"] = effective_global_batch(cfg.train, record["devices"])
    if resume and (run_dir / "run.json").is_file():  # keep the original record; note each resume
        first = json.loads((run_dir / "run.json").read_text())
        record = {
            **first,
            "resumed": [
                *first.get("resumed", []),
                {"at": now(), "command": record["command"], "devices": record["devices"]},
            ],
        }
    if rank0:
        gb = record["global_batch"]
        print(
            f"medml: effective global batch {gb['global']} = {gb['per_device']} per device x {gb['processes']} "
            f"process(es) x {gb['accumulate']} accumulation step(s); lr {cfg.train.optim.lr:g}",
            file=sys.stderr,
            flush=True,
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", dump_config(cfg))
        log.info("training %s into %s (stages: %s)", pipeline.name, run_dir, ", ".join(s.name for s in stages))
        write_json(run_dir / "run.json", record)

    stage_dirs = [(s.name, stages_root / f"{i:02d}-{s.name}") for i, s in enumerate(stages)]
    first_todo = 0
    for i, (_, stage_dir) in enumerate(stage_dirs):
        if (stage_dir / "done.json").exists():
            first_todo = i + 1
    if first_todo:  # resume at a stage boundary: weights and random state as the finished stage left them
        end = torch.load(stage_dirs[first_todo - 1][1] / "end_state.pt", map_location="cpu", weights_only=True)
        module.load_state_dict(end["weights"])
        RandomStateCallback().load_state_dict(end["random_state"])

    for stage, (_, stage_dir) in list(zip(stages, stage_dirs))[first_todo:]:
        module.start_stage(stage)
        summary: dict[str, Any] = {"stage": stage.name, "kind": stage.kind, "started": now()}
        if stage.kind == "fit":
            if not any(p.requires_grad for p in module.parameters()):
                raise ConfigError(
                    f"config key 'stages': stage '{stage.name}' trains nothing: no parameter name "
                    f"starts with {module.trainable_prefixes(stage)}"
                )
            trainer, checkpoint = build_trainer(
                cfg.train, stage, stage_dir, run_dir, manual_optimization=not module.automatic_optimization
            )
            last = stage_dir / "checkpoints" / "last.ckpt"
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(last) if resume and last.exists() else None,
                weights_only=True,
            )
            best = checkpoint.best_model_path or checkpoint.last_model_path
            if stage.keep == "last" and checkpoint.last_model_path:
                best = checkpoint.last_model_path
            if best:
                module.load_state_dict(_stage_weights(best, use_ema=bool(cfg.train.ema_decay)))
            summary.update(
                best_checkpoint=best,
                best_score=None if checkpoint.best_model_score is None else float(checkpoint.best_model_score),
                epochs_run=trainer.current_epoch,
            )
        else:
            summary["result"] = module.run_stage(stage, datamodule)
        module.end_stage(stage)
        if rank0:
            _save_stage(stage_dir, module, summary)
        resume = False  # later stages start fresh

    metrics: dict[str, float] = {}
    for _, stage_dir in stage_dirs:
        metrics.update(_last_values(stage_dir))
    checkpoint_path = run_dir / "model.ckpt"
    if rank0:
        save_model(checkpoint_path, pipeline, module)
        _merge_metrics(run_dir, stage_dirs)
        record.update(finished=now(), final_metrics=metrics)
        write_json(run_dir / "run.json", record)
    return TrainResult(run_dir=run_dir, checkpoint=checkpoint_path, metrics=metrics)
