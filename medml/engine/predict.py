"""Folder prediction shared by every pipeline (nnU-Net's "predict a folder into same-named outputs").

``OUT/<case_id>/...`` holds each case's outputs; ``OUT/predictions.csv`` one row per finished case;
``OUT/failures.csv`` (case, path, reason) for cases that could not be used; ``OUT/run.json`` the provenance.
Completion is tracked per case in ``OUT/.medml/``, so a killed run resumes where it stopped and
``--num-parts N --part-id I`` processes can share one output folder on several machines without a process group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medml.engine.record import base_record, now
from medml.errors import ConfigError, MedmlError
from medml.utils.files import write_json, write_text


@dataclass
class PredictSummary:
    output_dir: Path
    done: int
    skipped: int
    failed: int


def _case_key(case_id: str) -> str:
    return hashlib.sha1(case_id.encode()).hexdigest()[:16]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MedmlError):
        return exc.reason
    text = " ".join(str(exc).split()) or "no message"
    return f"unexpected {type(exc).__name__}: {text}"


def _write_table(path: Path, rows: list[dict[str, Any]], first: list[str]) -> None:
    """CSV with ``first`` columns leading, then every other key in first-seen order (no patient identifiers)."""
    from medml.io import write_csv

    columns = list(first)
    for row in rows:
        columns += [c for c in row if c not in columns]
    write_csv(rows, path, columns=columns)


def _collect(state_dir: Path, kind: str) -> list[dict[str, Any]]:
    folder = state_dir / kind
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _check_folders(input_dir: Path, output_dir: Path) -> None:
    if not input_dir.exists():
        raise ConfigError("input folder not found", input_dir)
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise ConfigError("the output folder is inside the input folder; medml never writes into its input", output_dir)


def predict_folder(
    pipeline: Any,
    module: torch.nn.Module,
    input_dir: str | Path,
    output_dir: str | Path,
    num_parts: int = 1,
    part_id: int = 0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> PredictSummary:
    """Predict every case under ``input_dir`` that belongs to shard ``part_id`` of ``num_parts``."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"--part-id must be in [0, {num_parts - 1}] for --num-parts {num_parts}")
    _check_folders(input_dir, output_dir)
    state_dir = output_dir / ".medml"
    (state_dir / "done").mkdir(parents=True, exist_ok=True)
    (state_dir / "failed").mkdir(parents=True, exist_ok=True)

    fingerprint = model_fingerprint(module)
    _claim_output(state_dir, fingerprint, output_dir)
    cases, unreadable = pipeline.discover(input_dir)
    cases = sorted(cases, key=lambda c: c.case_id)[part_id::num_parts]
    unreadable = sorted(unreadable)[part_id::num_parts]
    record = base_record(
        "predict",
        pipeline.name,
        input_dir=str(input_dir.resolve()),
        checkpoint=str(checkpoint) if checkpoint else None,
        checkpoint_sha256=_sha256(checkpoint) if checkpoint else None,
        model_sha256=fingerprint,
        config=pipeline.config.model_dump(mode="json"),
        num_parts=num_parts,
        part_id=part_id,
    )
    part_name = "run.json" if num_parts == 1 else f"run.part{part_id}of{num_parts}.json"
    write_json(output_dir / part_name, record)

    def fail(case_id: str, path: str, reason: str) -> None:
        write_json(
            state_dir / "failed" / f"{_case_key(case_id)}.json", {"case": case_id, "path": path, "reason": reason}
        )

    for path, reason in unreadable:
        fail(_relative_name(path, input_dir), path, reason)

    todo = [c for c in cases if not (state_dir / "done" / f"{_case_key(c.case_id)}.json").exists()]
    skipped = len(cases) - len(todo)
    done = failed = 0
    bar = tqdm(total=len(todo), desc=f"{pipeline.name} predict", unit="case", disable=not progress)
    batch_size = max(1, pipeline.predict_batch_size)
    device = next(module.parameters()).device
    for start in range(0, len(todo), batch_size):
        loaded = []
        for case in todo[start : start + batch_size]:
            try:
                loaded.append((case, pipeline.load_case(case)))
            except Exception as exc:  # noqa: BLE001 - one bad case must never stop the folder
                fail(case.case_id, str(case.paths[0]), _reason(exc))
                failed += 1
                bar.update(1)
        if not loaded:
            continue
        outputs = _predict(pipeline, module, [s for _, s in loaded], device)
        for (case, sample), output in zip(loaded, outputs):
            try:
                if isinstance(output, BaseException):
                    raise output
                case_dir = output_dir / case.case_id
                if case_dir.exists():  # left half-done by a killed run
                    shutil.rmtree(case_dir)
                case_dir.mkdir(parents=True)
                row = pipeline.write_case(case, sample, output, case_dir)
                write_json(state_dir / "done" / f"{_case_key(case.case_id)}.json", {"case": case.case_id, **row})
                stale = state_dir / "failed" / f"{_case_key(case.case_id)}.json"
                stale.unlink(missing_ok=True)
                done += 1
            except Exception as exc:  # noqa: BLE001
                shutil.rmtree(output_dir / case.case_id, ignore_errors=True)  # no partial outputs of a failed case
                fail(case.case_id, str(case.paths[0]), _reason(exc))
                failed += 1
            bar.update(1)
    bar.close()

    # Tables are rebuilt from every part's markers, so whichever part finishes last leaves complete tables.
    _write_table(output_dir / "predictions.csv", _collect(state_dir, "done"), ["case"])
    _write_table(output_dir / "failures.csv", _collect(state_dir, "failed"), ["case", "path", "reason"])
    record.update(finished=now(), done=done, skipped_already_done=skipped, failed=failed)
    write_json(output_dir / part_name, record)
    return PredictSummary(output_dir=output_dir, done=done, skipped=skipped, failed=failed)


@torch.no_grad()
def _predict(pipeline: Any, module: torch.nn.Module, samples: list[dict], device: torch.device) -> list:
    """One batch; if the batch fails, each sample alone, so a single bad case fails only itself."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with autocast:
            return pipeline.predict_batch(module, samples)
    except Exception as exc:  # noqa: BLE001
        if len(samples) == 1:
            return [exc]
        return [_predict(pipeline, module, [s], device)[0] for s in samples]


def _relative_name(path: str | Path, root: Path) -> str:
    """A failure's case name: its path under the input folder (two ``x.dcm`` in different folders differ)."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def model_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over the model's weights and buffers: which model made the predictions in a folder."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _claim_output(state_dir: Path, fingerprint: str, output_dir: Path) -> None:
    """Resuming into a folder is only right for the same model: refuse to mix two models' predictions."""
    marker = state_dir / "model.sha256"
    if marker.is_file() and marker.read_text().strip() != fingerprint:
        raise ConfigError(
            "this output folder holds predictions of another model; choose another --output "
            "(or delete the folder to start over)",
            output_dir,
        )
    write_text(marker, fingerprint + "\n")


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
