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
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from medml.engine.record import base_record, now
from medml.errors import ConfigError, MedmlError
from medml.hub import sha256_file
from medml.io import write_csv
from medml.io.discover import FATAL, display_path, error_reason, is_safe_case_id, printable, relative_case_id
from medml.utils.files import folder_fingerprint, write_json, write_text


@dataclass
class PredictSummary:
    output_dir: Path
    done: int
    skipped: int
    failed: int


def _case_key(case_id: str) -> str:
    return hashlib.sha1(case_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]


# DICOM UIDs that join a prediction back to its PACS study (no patient names or IDs: those never reach a table).
UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def dicom_uids(case: Any) -> dict[str, str]:
    """The case's Study/Series/SOP Instance UIDs where its source is DICOM; a series (many SOP instances, one
    case) has no single SOP Instance UID."""
    meta = getattr(case, "meta", None)
    if not isinstance(meta, dict):
        return {}
    uids = {key: str(meta[key]) for key in UID_COLUMNS if meta.get(key)}
    if getattr(case, "kind", "") == "dicom_series":
        uids.pop("SOPInstanceUID", None)
    return uids


def _write_table(path: Path, rows: list[dict[str, Any]], first: list[str]) -> None:
    """CSV with ``first`` columns leading, then every other key in first-seen order (no patient identifiers)."""

    columns = list(first)
    for row in rows:
        columns += [c for c in row if c not in columns]
    write_csv(rows, path, columns=columns)


def _collect(state_dir: Path, kind: str) -> list[dict[str, Any]]:
    """Every marker of ``kind``; temporary files of a writer in another process (hidden names) are not markers."""
    folder = state_dir / kind
    rows = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # removed meanwhile by another part (a failure that part has now redone)
            continue
    return rows


def _check_folders(input_dir: Path, output_dir: Path) -> None:
    """Input and output never overlap (in either direction, links followed): then nothing medml writes or
    removes under the output can be a user's input. The output must be a folder medml can write."""
    if not input_dir.exists():
        raise ConfigError("input folder not found", input_dir)
    inp, out = input_dir.resolve(), output_dir.resolve()
    if out == inp or inp in out.parents:
        raise ConfigError("the output folder is inside the input folder; medml never writes into its input", output_dir)
    if out in inp.parents:
        raise ConfigError(
            "the input folder is inside the output folder; choose an output folder outside the input", output_dir
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError("--output names a file, not a folder", output_dir)
    try:
        (output_dir / ".medml").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir / ".medml"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder ({exc.strerror or exc})", output_dir) from None


def predict_folder(
    pipeline: Any,
    module: torch.nn.Module,
    input_dir: str | Path,
    output_dir: str | Path,
    num_parts: int = 1,
    part_id: int = 0,
    progress: bool = True,
    checkpoint: str | Path | list[str | Path] | None = None,
    anonymize_paths: bool = True,
) -> PredictSummary:
    """Predict every case under ``input_dir`` that belongs to shard ``part_id`` of ``num_parts``.

    No case stops the run: whatever goes wrong discovering, reading, predicting or writing one case becomes its row
    in ``failures.csv``. The tables and ``run.json`` are written however the run ends (Ctrl-C included).

    Args:
        anonymize_paths: source paths in ``failures.csv`` and ``run.json`` become the case id (the folder names
            above a file often name the patient); with False they are written relative to ``input_dir``.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"--part-id must be in [0, {num_parts - 1}] for --num-parts {num_parts}")
    _check_folders(input_dir, output_dir)
    state_dir = output_dir / ".medml"
    for kind in ("done", "failed", "owned"):
        (state_dir / kind).mkdir(parents=True, exist_ok=True)

    fingerprint = model_fingerprint(module)
    _claim_output(state_dir, fingerprint, output_dir)
    record = base_record(
        "predict",
        pipeline.name,
        input_dir=None if anonymize_paths else str(input_dir.resolve()),
        input_fingerprint=_input_fingerprint(input_dir),
        checkpoint=_each(checkpoint, str),
        checkpoint_sha256=_each(checkpoint, sha256_file),
        model_sha256=fingerprint,
        config=pipeline.config.model_dump(mode="json"),
        num_parts=num_parts,
        part_id=part_id,
        anonymize_paths=anonymize_paths,
    )
    if anonymize_paths:
        record["command"] = _scrub(record["command"], input_dir, "INPUT")
    part_name = "run.json" if num_parts == 1 else f"run.part{part_id}of{num_parts}.json"
    write_json(output_dir / part_name, record)
    run = _Run(pipeline, input_dir, output_dir, state_dir, anonymize_paths)
    finished = False
    try:
        run.predict(module, num_parts, part_id, progress)
        finished = True
    finally:
        # Tables are rebuilt from every part's markers under one lock, so whichever part rebuilds last leaves the
        # complete tables; an interrupted run still leaves tables of what it did.
        record.update(finished=now(), done=run.done, skipped_already_done=run.skipped, failed=run.failed)
        if not finished:
            record["interrupted"] = True
        with contextlib.nullcontext() if finished else contextlib.suppress(Exception):
            write_tables(output_dir)
            write_json(output_dir / part_name, record)
    return PredictSummary(output_dir=output_dir, done=run.done, skipped=run.skipped, failed=run.failed)


def write_tables(output_dir: str | Path) -> None:
    """Rebuild ``predictions.csv`` and ``failures.csv`` from the per-case markers in ``OUT/.medml``."""
    output_dir = Path(output_dir)
    state_dir = output_dir / ".medml"
    with FileLock(state_dir / "tables.lock", timeout=600):
        done = _collect(state_dir, "done")
        uids = [c for c in UID_COLUMNS if any(c in row for row in done)]
        _write_table(output_dir / "predictions.csv", done, ["case", *uids])
        _write_table(output_dir / "failures.csv", _collect(state_dir, "failed"), ["case", "path", "reason"])


class _Run:
    """One folder run's bookkeeping: markers per case, output folders it owns, counts."""

    def __init__(self, pipeline: Any, input_dir: Path, output_dir: Path, state_dir: Path, anonymize: bool):
        self.pipeline, self.input_dir, self.output_dir, self.state_dir = pipeline, input_dir, output_dir, state_dir
        self.anonymize = anonymize
        self.real_output = output_dir.resolve()
        self.done = self.skipped = self.failed = 0

    def predict(self, module: torch.nn.Module, num_parts: int, part_id: int, progress: bool) -> None:
        try:
            cases, unreadable = self.pipeline.discover(self.input_dir)
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - even a failed discovery leaves its reason in failures.csv
            cases, unreadable = [], [(str(self.input_dir), error_reason(exc))]
        cases = sorted(cases, key=lambda c: str(c.case_id))[part_id::num_parts]
        unreadable = sorted(unreadable, key=lambda f: (str(f[0]), str(f[1])))[part_id::num_parts]
        for path, reason, *case_id in unreadable:  # a case of another kind comes with its own (anonymised) id
            self.fail_path(path, reason, case_id[0] if case_id else None)
            self.failed += 1

        todo, seen = [], set()
        for case in cases:
            if not is_safe_case_id(case.case_id):
                self.fail_case(case, f"unsafe case id {printable(case.case_id)!r}: no output path is made from it")
                self.failed += 1
                continue
            if case.case_id.lower() in seen:  # keyed apart, so the first one's success does not erase this row
                self.fail_case(case, f"duplicate case id {case.case_id!r}: only the first is predicted", dup=True)
                self.failed += 1
                continue
            seen.add(case.case_id.lower())
            if (self.state_dir / "done" / f"{_case_key(case.case_id)}.json").exists():
                self.skipped += 1
            else:
                todo.append(case)
        bar = tqdm(total=len(todo), desc=f"{self.pipeline.name} predict", unit="case", disable=not progress)
        batch_size = max(1, self.pipeline.predict_batch_size)
        device = next(module.parameters()).device
        for start in range(0, len(todo), batch_size):
            loaded = []
            for case in todo[start : start + batch_size]:
                self._attach_source(case)
                try:
                    loaded.append((case, self.pipeline.load_case(case)))
                except FATAL:
                    raise
                except BaseException as exc:  # noqa: BLE001 - one bad case must never stop the folder
                    self.fail_case(case, error_reason(exc))
                    self.failed += 1
                    bar.update(1)
            if not loaded:
                continue
            outputs = _predict(self.pipeline, module, [s for _, s in loaded], device)
            for (case, sample), output in zip(loaded, outputs):
                self.write(case, sample, output)
                bar.update(1)
        bar.close()

    def write(self, case: Any, sample: dict, output: Any) -> None:
        key = _case_key(case.case_id)
        owned = self.state_dir / "owned" / f"{key}.json"
        case_dir = self.output_dir / case.case_id
        created = False
        try:
            if isinstance(output, BaseException):
                raise output
            if not case_dir.resolve().is_relative_to(self.real_output) or case_dir.resolve() == self.real_output:
                raise MedmlError("its output folder would leave --output; refused")
            if case_dir.is_symlink() or case_dir.exists():
                if case_dir.is_symlink() or not case_dir.is_dir() or not owned.is_file():
                    raise MedmlError(f"{case.case_id} already exists in --output and was not made by medml; left as is")
                shutil.rmtree(case_dir)  # made by a medml run on this output that was killed while writing it
            write_json(owned, {"case": case.case_id})  # before mkdir: a kill in between leaves the claim, no folder
            case_dir.mkdir()
            created = True
            row = self.pipeline.write_case(case, sample, output, case_dir)
            write_json(self.state_dir / "done" / f"{key}.json", {"case": case.case_id, **dicom_uids(case), **row})
            (self.state_dir / "failed" / f"{key}.json").unlink(missing_ok=True)
            self.done += 1
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001
            if created:  # no partial outputs of a failed case; only what this run made is removed
                shutil.rmtree(case_dir, ignore_errors=True)
                owned.unlink(missing_ok=True)
            self.fail_case(case, error_reason(exc))
            self.failed += 1

    def _attach_source(self, case: Any) -> None:
        """``case.meta["source"]``: what writers may record as the case's source (never an absolute path)."""
        meta = getattr(case, "meta", None)
        if isinstance(meta, dict):
            meta["source"] = case.case_id if self.anonymize else display_path(case.paths[0], self.input_dir)

    def fail_case(self, case: Any, reason: str, dup: bool = False) -> None:
        case_id = printable(case.case_id)
        path = case_id if self.anonymize else display_path(case.paths[0], self.input_dir)
        key = _case_key(f"duplicate:{case.paths[0]}" if dup else str(case.case_id))
        self._fail(key, case_id, path, self._scrub(reason, case.paths[0], case_id))

    def fail_path(self, path: str | Path, reason: str, case_id: str | None = None) -> None:
        """A file or folder discovery could not use (or a case the pipeline does not take, with its ``case_id``):
        its row is keyed by its path (two ``x.dcm`` differ)."""
        relative = display_path(path, self.input_dir)
        if not self.anonymize:
            case_id = relative
        elif case_id is None:  # the id its case would have had; the input folder's own name may be the patient's
            case_id = "input" if relative == "." else relative_case_id(Path(path), self.input_dir)
        shown = case_id if self.anonymize else relative
        self._fail(_case_key("path:" + relative), case_id, shown, self._scrub(reason, path, case_id))

    def _fail(self, key: str, case_id: str, path: str, reason: str) -> None:
        write_json(self.state_dir / "failed" / f"{key}.json", {"case": case_id, "path": path, "reason": reason})

    def _scrub(self, reason: str, path: str | Path, case_id: str) -> str:
        """Reasons from other libraries may quote the file's path: keep it relative (or the case id)."""
        reason = _scrub(printable(reason), self.input_dir, "")
        if self.anonymize:
            relative = display_path(path, self.input_dir)
            if len(relative) > 2:
                reason = reason.replace(relative, case_id)
        return reason


def _scrub(text: str, folder: Path, replacement: str) -> str:
    """``text`` without the forms of ``folder`` (as given and resolved), replaced only where they stand as a whole
    path (a folder given as ``in`` must not turn "input" into "put")."""
    for form in sorted({str(folder.resolve()), str(folder.absolute()), str(folder)}, key=len, reverse=True):
        if len(form) > 1:
            whole = rf"(?<![\w.~/-]){re.escape(form)}(?![\w.~-])"
            text = re.sub(whole + "/", lambda _: replacement + "/" if replacement else "", text)
            text = re.sub(whole, lambda _: replacement, text)
    return text


def _input_fingerprint(input_dir: Path) -> str | None:
    """Which input folder was predicted, without naming it: `folder_fingerprint` of its relative names and sizes."""
    try:
        return folder_fingerprint(input_dir) if input_dir.is_dir() else sha256_file(input_dir)
    except Exception:  # noqa: BLE001 - provenance only: an unlistable or oddly named input must not stop the run
        return None


def _each(checkpoint: Any, fn: Any) -> Any:
    """``fn`` of one checkpoint, or the list of ``fn`` of an ensemble's checkpoints (None for none)."""
    if not checkpoint:
        return None
    if isinstance(checkpoint, list | tuple):
        return [fn(c) for c in checkpoint] if len(checkpoint) > 1 else fn(checkpoint[0])
    return fn(checkpoint)


class Ensemble(torch.nn.ModuleList):
    """Several trained models of one pipeline (e.g. the folds of a cross-validation), predicted as one.

    Each member runs the pipeline's ``predict_batch``; the outputs of a case are combined by the pipeline's
    ``ensemble_outputs(outputs)`` when it defines one, else by `average_outputs`.
    """


def load_models(
    checkpoints: list[str | Path],
    expect_pipeline: str | None = None,
    device: str | torch.device = "cpu",
    overrides: list[str] | None = None,
) -> tuple[Any, torch.nn.Module]:
    """``(pipeline, module)`` of one checkpoint, or of several as an `Ensemble` (the first one's pipeline and
    config write the outputs, so all must be of one pipeline with the same labels)."""
    from medml.engine.checkpoint import load_checkpoint

    loaded = [
        load_checkpoint(c, expect_pipeline=expect_pipeline, device=device, final_only=True, overrides=overrides)
        for c in checkpoints
    ]
    pipeline, module = loaded[0]
    if len(loaded) == 1:
        return pipeline, module
    labels = _labels(pipeline)
    for source, (other, _) in zip(checkpoints[1:], loaded[1:]):
        if other.name != pipeline.name:
            raise ConfigError(f"an ensemble is of one pipeline: '{other.name}' is not '{pipeline.name}'", source)
        if _labels(other) != labels:
            raise ConfigError(
                "its labels differ from the first checkpoint's; an ensemble averages like with like", source
            )
    return pipeline, Ensemble([m for _, m in loaded]).eval()


def _labels(pipeline: Any) -> Any:
    model = getattr(pipeline.config, "model", None)
    return getattr(model, "labels", None)


#: Output keys `average_outputs` averages unless the pipeline names its own in ``ensemble_average``.
AVERAGED = ("probs", "probabilities", "probability", "prob", "thresholds")


def average_outputs(outputs: list[Any], keys: tuple[str, ...] = AVERAGED) -> Any:
    """The generic ensemble rule: the mean of each floating-point output named in ``keys`` over the members; a
    ``decision`` beside ``probs`` and ``thresholds`` is recomputed from the means; every other value (masks,
    explanations) is the first member's. A pipeline whose outputs need another rule defines ``ensemble_outputs``."""
    first = outputs[0]
    bad = next((o for o in outputs if isinstance(o, BaseException)), None)
    if bad is not None:
        return bad
    if not isinstance(first, dict):
        return first
    combined, averaged = dict(first), []
    for key in keys:
        values = [o.get(key) for o in outputs]
        arrays = [np.asarray(v.float().cpu() if isinstance(v, torch.Tensor) else v) for v in values]
        if all(a.dtype.kind == "f" and a.shape == arrays[0].shape for a in arrays):
            mean = np.mean(arrays, axis=0).astype(arrays[0].dtype)
            combined[key] = float(mean) if isinstance(values[0], float) else mean
            averaged.append(key)
    if not averaged:
        raise MedmlError(
            "this pipeline's outputs have no probabilities to average; predict with one --checkpoint "
            "(or give the pipeline an ensemble_outputs rule)"
        )
    if {"probs", "thresholds", "decision"} <= set(combined):
        combined["decision"] = np.asarray(combined["probs"]) >= np.asarray(combined["thresholds"])
    return combined


def _predict_members(pipeline: Any, module: torch.nn.Module, samples: list[dict]) -> list:
    if not isinstance(module, Ensemble):
        return pipeline.predict_batch(module, samples)
    per_member = [pipeline.predict_batch(member, samples) for member in module]
    rule = getattr(pipeline, "ensemble_outputs", None)
    keys = tuple(getattr(pipeline, "ensemble_average", AVERAGED))
    combined = []
    for case_outputs in zip(*per_member):
        try:
            combined.append(rule(list(case_outputs)) if rule else average_outputs(list(case_outputs), keys))
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - the runner makes it this case's failures.csv row
            combined.append(exc)
    return combined


@torch.no_grad()
def _predict(pipeline: Any, module: torch.nn.Module, samples: list[dict], device: torch.device) -> list:
    """One batch; if the batch fails, each sample alone, so a single bad case fails only itself."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with autocast:
            return _predict_members(pipeline, module, samples)
    except FATAL:
        raise
    except BaseException as exc:  # noqa: BLE001
        if len(samples) == 1:
            return [exc]
        return [_predict(pipeline, module, [s], device)[0] for s in samples]


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
