"""The Python API: ``medml.load(model)`` -> a `Predictor` whose ``predict(path_or_array)`` returns what
``medml predict`` writes for that case, as Python objects.

::

    import medml

    model = medml.load("runs/ecg/model.ckpt")        # or an exported .safetensors, an https:// URL, hf://org/repo
    result = model.predict("ecgs/patient1.hea")       # one file -> one Prediction
    result.outputs["probs"], result.row["top_label"]  # the model's outputs; the predictions.csv row
    results = model.predict("ecgs/")                  # a folder -> a list, one Prediction per case
    model.predict(signal_mv, fs=500)                  # an array (12 x samples ECG, 2-D/3-D image) with its metadata

The same checkpoint rules as the command line apply (`medml.engine.checkpoint.load_checkpoint`), so a list of
models is an ensemble and ``overrides`` are ``--set``'s inference options.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medml.engine.predict import _predict, load_models
from medml.errors import ConfigError, MedmlError
from medml.io.discover import FATAL, error_reason


@dataclass
class Prediction:
    """One case's result: ``outputs`` is what the pipeline's model produced (probabilities, thresholds, decisions,
    masks, boxes, explanations; tensors as numpy arrays), ``row`` its ``predictions.csv`` row, ``files`` the
    files ``medml predict`` writes for it (kept only with ``save_to``), ``error`` the reason a case failed."""

    case_id: str
    outputs: dict[str, Any] | None = None
    row: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


class Predictor:
    """A loaded model (or ensemble) of one pipeline, ready to predict files, folders or arrays."""

    def __init__(self, pipeline: Any, module: torch.nn.Module, source: Any):
        self.pipeline, self.module, self.source = pipeline, module, source

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def config(self) -> Any:
        return self.pipeline.config

    @property
    def labels(self) -> list[str] | None:
        return getattr(getattr(self.config, "model", None), "labels", None)

    @property
    def card(self) -> dict[str, Any] | None:
        """The model card of an exported model (training data fingerprint, metrics), else None."""
        return getattr(self.module, "model_card", None)

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, source={self.source!r})"

    def predict(self, x: str | Path | np.ndarray, save_to: str | Path | None = None, **meta: Any):
        """Predict a file (-> `Prediction`), a folder (-> list of `Prediction`) or an array (-> `Prediction`).

        Args:
            x: a path, or an array: an ECG as (leads, samples) in mV with ``fs=`` (and ``leads=``, default the 12
                standard leads), an image as (H, W[, 3]) (uint8 for photographs), a volume in NIfTI's (X, Y, Z)
                order (as nibabel gives it) with an optional ``affine=``.
            save_to: also keep the files ``medml predict`` writes, in ``save_to/<case>/``.
        """
        if isinstance(x, np.ndarray | torch.Tensor):
            with tempfile.TemporaryDirectory(prefix="medml-array-") as tmp:
                path = write_array(self.pipeline, np.asarray(_plain(x)), Path(tmp), **meta)
                return self._predict_path(path, save_to, single=True)
        path = Path(x)
        if not path.exists():
            raise ConfigError("input not found", path)
        return self._predict_path(path, save_to, single=path.is_file())

    def _predict_path(self, path: Path, save_to: str | Path | None, single: bool):
        cases, failures = self.pipeline.discover(path)
        if single:
            cases = cases[:1]
            if not cases:
                reason = failures[0][1] if failures else f"not an input of the {self.name} pipeline"
                raise ConfigError(reason, path)
        results = [self._predict_case(case, save_to) for case in cases]
        if single:
            if results[0].error:
                raise MedmlError(results[0].error, path)
            return results[0]
        results += [Prediction(case_id=str(f[2] if len(f) > 2 else f[0]), error=f[1]) for f in failures]
        return results

    def _predict_case(self, case: Any, save_to: str | Path | None) -> Prediction:
        meta = getattr(case, "meta", None)
        if isinstance(meta, dict):
            meta.setdefault("source", case.case_id)
        try:
            sample = self.pipeline.load_case(case)
            device = next(self.module.parameters()).device
            output = _predict(self.pipeline, self.module, [sample], device)[0]
            if isinstance(output, BaseException):
                raise output
            with tempfile.TemporaryDirectory(prefix="medml-case-") as tmp:
                out_dir = Path(save_to) / case.case_id if save_to else Path(tmp) / case.case_id
                out_dir.mkdir(parents=True, exist_ok=bool(save_to))
                row = self.pipeline.write_case(case, sample, output, out_dir)
                files = sorted(p for p in out_dir.rglob("*") if p.is_file()) if save_to else []
        except FATAL:
            raise
        except BaseException as exc:  # noqa: BLE001 - one bad case in a folder is its Prediction's error
            return Prediction(case_id=str(case.case_id), error=error_reason(exc))
        return Prediction(case_id=str(case.case_id), outputs=_plain(output), row=row, files=files)


def write_array(pipeline: Any, array: np.ndarray, folder: Path, **meta: Any) -> Path:
    """Write an array as a file the pipeline reads (WFDB, NIfTI or PNG), so it takes the very path of a file."""
    kinds = set(pipeline.input_kinds)
    if "wfdb" in kinds:
        import wfdb

        from medml.io.types import STANDARD_LEADS

        if "fs" not in meta:
            raise ConfigError("an ECG array needs its sampling rate: predict(signal, fs=500)")
        leads = list(meta.get("leads") or STANDARD_LEADS)
        if array.ndim != 2 or array.shape[0] != len(leads):
            raise ConfigError(f"an ECG array is (leads, samples) with {len(leads)} leads, got shape {array.shape}")
        wfdb.wrsamp(
            "array",
            fs=float(meta["fs"]),
            units=["mV"] * len(leads),
            sig_name=leads,
            p_signal=np.ascontiguousarray(array.T, dtype=np.float64),
            fmt=["16"] * len(leads),
            adc_gain=[1000.0] * len(leads),
            baseline=[0] * len(leads),
            write_dir=str(folder),
        )
        return folder / "array.hea"
    if "nifti" in kinds and array.ndim == 3:
        import nibabel as nib

        affine = np.asarray(meta.get("affine", np.eye(4)), dtype=float)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), folder / "array.nii.gz")
        return folder / "array.nii.gz"
    if "image" in kinds and array.ndim in (2, 3):
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(array)).save(folder / "array.png")
        return folder / "array.png"
    raise ConfigError(f"the {pipeline.name} pipeline takes files ({', '.join(sorted(kinds))}); pass a path")


def load(
    model: str | Path | list[str | Path],
    device: str = "auto",
    overrides: list[str] | None = None,
    pipeline: str | None = None,
) -> Predictor:
    """Load a model (``model.ckpt``, exported ``.safetensors``, ``https://`` URL or ``hf://`` hub id; a list of
    them for an ensemble) for prediction. ``overrides`` are ``--set`` inference options; ``pipeline`` checks the
    model is of that pipeline."""
    from medml.cli import _device

    sources = list(model) if isinstance(model, list | tuple) else [model]
    loaded_pipeline, module = load_models(
        sources, expect_pipeline=pipeline, device=_device(device), overrides=overrides
    )
    return Predictor(loaded_pipeline, module, model)
