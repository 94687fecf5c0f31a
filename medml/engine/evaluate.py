"""``medml evaluate``: score a checkpoint on a split of the official dataset, with a run record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medml.engine.checkpoint import load_checkpoint
from medml.engine.record import base_record, now
from medml.errors import ConfigError
from medml.utils.files import write_json


def evaluate(
    name: str,
    data_dir: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    split: str = "test",
    device: str = "cpu",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise ConfigError("data folder not found", data_dir)
    pipeline, module = load_checkpoint(
        checkpoint, expect_pipeline=name, device=device, final_only=True, overrides=overrides
    )
    pipeline.check_layout(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = base_record(
        "evaluate",
        name,
        data_dir=str(data_dir.resolve()),
        checkpoint=str(checkpoint),
        split=split,
        data_fingerprint=pipeline.data_fingerprint(data_dir),
    )
    metrics = pipeline.evaluate(module, data_dir, split, out_dir)
    record.update(finished=now(), metrics=metrics)
    write_json(out_dir / "run.json", record)
    return metrics
