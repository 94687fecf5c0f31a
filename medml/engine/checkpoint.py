"""Saving and loading medml checkpoints. A checkpoint is untrusted input: it is only ever read with
``torch.load(..., weights_only=True)``, so a pickle that would run code is refused, not executed, or it is an
exported model (`medml.engine.export`): safetensors weights with the medml record as JSON metadata, no pickle at all.
A checkpoint may be named by a URL or a hub id (`medml.hub`), fetched once into a cache.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import torch

import medml
from medml.config import load_config
from medml.errors import CheckpointError, ConfigError, MedmlError
from medml.hub import resolve_source
from medml.registry import get_pipeline
from medml.utils.files import atomic_path

FORMAT = 1


def checkpoint_meta(pipeline_name: str, config: Any, final: bool = False, stage: str | None = None) -> dict[str, Any]:
    """The ``medml`` record of a checkpoint. ``final`` marks a finished run's model (``model.ckpt``); a Lightning
    checkpoint written during ``stage`` is not one."""
    meta = {
        "format": FORMAT,
        "pipeline": pipeline_name,
        "config": config.model_dump(mode="json"),
        "medml_version": medml.__version__,
        "final": final,
    }
    if stage is not None:
        meta["stage"] = stage
    return meta


def is_final(ckpt: dict[str, Any]) -> bool:
    """Whether a checkpoint read by `read_checkpoint` is a finished run's model."""
    meta = ckpt["medml"]
    if "final" in meta:
        return bool(meta["final"])
    return "loops" not in ckpt  # written before the marker: model.ckpt was the only slim (non-Lightning) one


def save_model(path: str | Path, pipeline: Any, module: torch.nn.Module) -> Path:
    """Write a slim checkpoint: the resolved config and the weights (and buffers), nothing executable."""
    path = Path(path)
    payload = {
        "medml": checkpoint_meta(pipeline.name, pipeline.config, final=True),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then the header's ``{``."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < struct.unpack("<Q", head[:8])[0] < path.stat().st_size


def read_exported(path: str | Path) -> dict[str, Any]:
    """An exported model: ``{"medml": record, "state_dict": tensors}`` (and ``card`` when present)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - safe_open has no iteration
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"not a readable safetensors file ({str(exc).splitlines()[0]})", path) from None
    try:
        meta = json.loads(metadata["medml"])
    except (KeyError, ValueError):
        raise CheckpointError(
            "a safetensors file without medml's record (not exported by medml export)", path
        ) from None
    ckpt = {"medml": meta, "state_dict": state}
    if "card" in metadata:
        try:
            ckpt["card"] = json.loads(metadata["card"])
        except ValueError:
            pass
    return ckpt


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (or safetensors); every failure is a one-line `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path)
    if is_safetensors(path):
        ckpt = read_exported(path)
        if not isinstance(ckpt.get("medml"), dict) or "pipeline" not in ckpt["medml"]:
            raise CheckpointError("not a medml model (no record of pipeline and config)", path)
        return ckpt
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln), None)
        if detail:  # the file names Python callables: exactly what a malicious checkpoint does
            raise CheckpointError(
                f"refused: it asks to load Python objects beyond tensors and plain data, which "
                f"medml never unpickles ({detail})",
                path,
            ) from None
        raise CheckpointError("not a readable PyTorch checkpoint (corrupt or not a torch.save file)", path) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    # Garbage bytes reach torch's legacy unpickler, which fails with whatever its parser hits (KeyError, IndexError).
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"not a readable PyTorch checkpoint ({type(exc).__name__})", path) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError("not a medml checkpoint (no state_dict)", path)
    if not isinstance(ckpt.get("medml"), dict) or "pipeline" not in ckpt["medml"]:
        raise CheckpointError("not a medml checkpoint (no 'medml' record of pipeline and config)", path)
    return ckpt


def _not_final_error(path: Path, ckpt: dict[str, Any]) -> ConfigError:
    stage = ckpt["medml"].get("stage")
    what = f"a checkpoint saved during stage '{stage}'" if stage else "a checkpoint saved during training"
    parts = path.resolve().parts
    if len(parts) >= 5 and parts[-2] == "checkpoints" and parts[-4] == "stages":  # RUN/stages/NN-name/checkpoints/
        use = f"use the run's model.ckpt ({Path(*parts[:-4]) / 'model.ckpt'})"
    else:
        use = "use the model.ckpt of its run folder"
    return ConfigError(f"not a finished run's model but {what}; {use}", path)


def load_checkpoint(
    path: str | Path,
    expect_pipeline: str | None = None,
    device: str | torch.device = "cpu",
    final_only: bool = False,
    overrides: list[str] | None = None,
):
    """Rebuild ``(pipeline, module)`` from a medml checkpoint (``model.ckpt``, a Lightning stage checkpoint, an
    exported ``.safetensors``, or a URL / hub id of one: see `medml.hub`).

    The module is in eval mode on ``device``. With ``final_only`` (``medml predict`` and ``evaluate``), a checkpoint
    that is not a finished run's model (an intermediate stage of a multi-stage run, weights before the EMA or a
    run stage) is refused with an error naming the run's ``model.ckpt``. ``overrides`` (``--set key=value``) change
    the stored config before the model is built: inference options such as explanations or test-time augmentation.
    """
    path = resolve_source(path)
    ckpt = read_checkpoint(path)
    meta = ckpt["medml"]
    if expect_pipeline and meta["pipeline"] != expect_pipeline:
        raise CheckpointError(f"checkpoint is for pipeline '{meta['pipeline']}', not '{expect_pipeline}'", path)
    if final_only and not is_final(ckpt):
        raise _not_final_error(path, ckpt)
    pipeline_cls = get_pipeline(meta["pipeline"])
    try:
        config = load_config(pipeline_cls.Config, meta["config"])
    except MedmlError as exc:
        raise CheckpointError(f"its config does not fit this medml version: {exc}", path) from None
    if overrides:
        config = load_config(pipeline_cls.Config, config.model_dump(mode="python"), overrides)
    pipeline = pipeline_cls(config)
    module = pipeline.build_module(None)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model: {str(exc).splitlines()[0]}", path) from None
    module.pipeline_name = pipeline.name
    module.model_card = ckpt.get("card")  # an exported model's card (data fingerprint, metrics), else None
    return pipeline, module.to(device).eval()
