"""The ``ecg`` pipeline: ProtoECGNet on PTB-XL (71 SCP statements) with case-based explanations.

Training data: the official PTB-XL layout (``medml.data.ptbxl``). Clinical inputs: WFDB records and DICOM 12-lead
waveform ECGs at any sampling rate, read by ``medml.io.read_ecg``. Spec: ``specs/ecg-protoecgnet-and-ct-ssg.md``
part 1. The folder: ``config.py`` (schema, stages), ``data.py`` (DataModule), ``model.py``, ``losses.py``,
``module.py`` (LightningModule), ``evaluate.py`` (scores, tables, published numbers), ``explain.py`` (explanations).
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import wfdb
from monai.transforms import Compose
from pydicom.data import get_testdata_file

from medml.data.ptbxl import check_ptbxl_layout, scp_statements_frame
from medml.data.synthetic_ptbxl import simulate_ecg, write_synthetic_ptbxl
from medml.errors import ConfigError
from medml.io import Finding, read_ecg, write_dicom_sr
from medml.io.synthetic import write_dicom_ecg
from medml.io.types import STANDARD_LEADS
from medml.pipelines.base import Pipeline
from medml.pipelines.ecg.config import EcgConfig
from medml.pipelines.ecg.data import (
    EcgDataModule,
    branch_label_indices,
    ecg_preprocessing,
    open_ptbxl,
    ptbxl_statement_codes,
)
from medml.pipelines.ecg.evaluate import evaluate_fold
from medml.pipelines.ecg.explain import explain_sample, explanation_figure, prototype_segments, prototype_table
from medml.pipelines.ecg.module import EcgModule
from medml.registry import register_pipeline
from medml.transforms import apply_transform
from medml.utils.files import write_json, write_text


@register_pipeline
class EcgPipeline(Pipeline):
    """ProtoECGNet (Sethi et al., MLHC 2025): 71-label 12-lead ECG classification with prototype explanations."""

    name = "ecg"
    summary = "ProtoECGNet on PTB-XL: 71 SCP labels from 12-lead ECGs, explained by prototype training ECGs"
    Config = EcgConfig
    input_kinds = ("wfdb", "dicom_ecg")
    predict_batch_size = 16

    config: EcgConfig

    @functools.cached_property
    def preprocessing(self) -> Compose:
        """The clinical ECG preprocessing (`ecg_preprocessing`), composed once from ``config.data``."""
        return ecg_preprocessing(self.config.data)

    # ----- dataset -------------------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        cfg = self.config.data
        check_ptbxl_layout(
            Path(data_dir), source=cfg.source or ("records100" if cfg.sampling_rate == 100 else "records500")
        )

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        self.check_layout(data_dir)
        ptbxl = open_ptbxl(Path(data_dir), self.config, progress=True)
        return {split: int(len(ptbxl.split_indices(split))) for split in ("train", "val", "test")} | {
            "records": int(len(ptbxl.ecg_ids)),
            "labels": len(ptbxl.codes),
            "positives_train": {
                c: int(n) for c, n in zip(ptbxl.codes, ptbxl.labels[ptbxl.split_indices("train")].sum(0))
            },
        }

    def datamodule(self, data_dir: Path) -> EcgDataModule:
        return EcgDataModule(Path(data_dir), self.config)

    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        return write_synthetic_ptbxl(Path(out_dir), n_records=360, seed=seed)

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        """WFDB records at 500 Hz in a non-standard lead order, pydicom's waveform_ecg.dcm, a DICOM ECG written by
        medml, and one record with a flat lead (which must end up in failures.csv)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        order = list(STANDARD_LEADS[6:] + STANDARD_LEADS[:6])  # chest leads first: readers must reorder
        cases = [
            ("wfdb_normal", ["NORM", "SR"]),
            ("wfdb_afib", ["AFIB"]),
            ("wfdb_lvh", ["LVH", "SR"]),
            ("wfdb_stach_imi", ["STACH", "IMI"]),
        ]
        for name, labels in cases:
            sig = simulate_ecg(labels, rng)  # (12, 5000) mV at 500 Hz
            _write_wfdb(wfdb, out_dir / name, sig, 500, STANDARD_LEADS, order)
        flat = simulate_ecg(["NORM", "SR"], rng)
        flat[STANDARD_LEADS.index("V3")] = 0.0
        _write_wfdb(wfdb, out_dir / "wfdb_flat_lead", flat, 500, STANDARD_LEADS, order)
        shutil.copyfile(get_testdata_file("waveform_ecg.dcm"), out_dir / "waveform_ecg.dcm")
        sig = simulate_ecg(["CRBBB", "SR"], rng)
        write_dicom_ecg(
            out_dir / "dicom_crbbb.dcm", sig[[STANDARD_LEADS.index(x) for x in order]], 500, lead_order=order
        )
        return out_dir

    # ----- model ---------------------------------------------------------------------------------------------------
    def build_module(self, datamodule: EcgDataModule | None) -> EcgModule:
        cfg = self.config
        if datamodule is not None:
            datamodule.setup("fit")
            codes = datamodule.codes
            if cfg.model.labels is not None and list(cfg.model.labels) != codes:
                raise ConfigError("config key 'model.labels': differs from the dataset's scp_statements.csv rows")
            cfg.model.labels = codes
            cfg.model.training_data = datamodule.ptbxl.title
            return EcgModule(
                cfg, branch_label_indices(codes), datamodule.train_labels(), datamodule.mean, datamodule.std
            )
        # A trained checkpoint always carries its labels; without them (a fresh config) use PTB-XL's 71 statements.
        labels = list(cfg.model.labels) if cfg.model.labels else ptbxl_statement_codes()
        if cfg.model.labels is None:
            cfg.model.labels = labels
        return EcgModule(cfg, branch_label_indices(labels), load_imagenet=False)

    # ----- prediction ----------------------------------------------------------------------------------------------
    def load_case(self, case: Any) -> dict[str, Any]:
        record = read_ecg(case)
        path = getattr(case, "path", case)
        sample = apply_transform(self.preprocessing, {"signal": record.signal, "fs": float(record.fs), "path": path})
        header = None
        if getattr(case, "kind", None) == "dicom_ecg":  # the SR's evidence; the waveform itself is not kept
            header = pydicom.dcmread(case.paths[0], stop_before_pixels=True)
            if "WaveformSequence" in header:
                del header.WaveformSequence
        seconds = float(record.signal.shape[1] / record.fs)
        return {
            "signal": sample["signal"],
            "fs": float(self.config.data.sampling_rate),
            "source_fs": float(record.fs),
            "source_seconds": seconds,
            "zero_padded_seconds": round(max(0.0, self.config.data.seconds - seconds), 3),
            "path": str(path),
            "dicom_header": header,
        }

    @torch.no_grad()
    def predict_batch(self, module: EcgModule, samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        signal = torch.as_tensor(np.stack([s["signal"] for s in samples]), dtype=torch.float32, device=module.device)
        out = module(signal)
        probs = module.calibrate(out["logits"]).float().cpu().numpy()
        raw = torch.sigmoid(out["logits"]).float().cpu().numpy()
        thresholds = module.thresholds.cpu().numpy()
        table = prototype_table(module)
        results = []
        for i, sample in enumerate(samples):
            per = {k: v[i].float().cpu() for k, v in out.items()}
            explanation = explain_sample(module, per, probs[i], thresholds, sample["fs"], table)
            results.append(
                {
                    "probs": probs[i],
                    "raw_probs": raw[i],
                    "thresholds": thresholds,
                    "decision": probs[i] >= thresholds,
                    "explanation": explanation,
                    "segments": prototype_segments(module, explanation),
                }
            )
        return results

    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        labels = self.config.model.labels
        lines = ["label,probability,raw_probability,threshold,decision"]
        for name, p, r, t, d in zip(
            labels, output["probs"], output["raw_probs"], output["thresholds"], output["decision"]
        ):
            lines.append(f"{name},{p:.6f},{r:.6f},{t:.2f},{int(d)}")
        write_text(out_dir / "probabilities.csv", "\n".join(lines) + "\n")
        note = model_note(self.config)
        explanation = {
            "case_id": case.case_id,
            "source": case.meta.get("source", case.case_id),
            "source_fs": sample["source_fs"],
            "source_seconds": sample["source_seconds"],
            "zero_padded_seconds": sample["zero_padded_seconds"],
            "model_note": note,
            "probability": f"calibrated ({self.config.model.calibration} scaling fitted on fold 9); raw beside it",
            **output["explanation"],
        }
        write_json(out_dir / "explanation.json", explanation)
        explanation_figure(sample["signal"], sample["fs"], explanation, out_dir / "explanation.png", output["segments"])
        order = np.argsort(-output["probs"])
        positive = [labels[j] for j in order if output["decision"][j]]
        header = sample.get("dicom_header")
        if header is not None:
            write_dicom_sr(
                header,
                [
                    Finding(scp_concept(name), bool(d), float(p))
                    for name, d, p in zip(labels, output["decision"], output["probs"])
                ],
                out_dir / "findings_sr.dcm",
                algorithm_name="medml ProtoECGNet",
                procedure=ECG_PROCEDURE,
            )
        return {  # the runner puts the case and its DICOM UIDs first
            "n_positive": len(positive),
            "positive_labels": ";".join(positive),
            "contradictions": "; ".join(output["explanation"].get("contradictions", [])),
            "top_label": labels[int(order[0])],
            "top_probability": round(float(output["probs"][order[0]]), 4),
            "top3": ";".join(f"{labels[j]}:{output['probs'][j]:.3f}" for j in order[:3]),
            "zero_padded_seconds": sample["zero_padded_seconds"],
        }

    # ----- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, module: EcgModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        return evaluate_fold(module, Path(data_dir), split, Path(out_dir), self.config)

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        return sorted(Path(eval_dir).glob("*.png")) + sorted(Path(pred_dir).glob("*/explanation.png"))[:4]


#: SNOMED CT "Electrocardiographic procedure": the procedure an ECG SR reports.
ECG_PROCEDURE = ("29303009", "SCT", "Electrocardiographic procedure")


def scp_concept(code: str) -> tuple[str, str, str, str]:
    """An SCP-ECG statement as a DICOM coded concept: coding scheme ``SCPECG`` version 1.3 (PS3.16 names that
    revision, and the scheme needs its version), meaning from PTB-XL's table."""
    descriptions = _scp_descriptions()
    return (code, "SCPECG", descriptions.get(code, code), "1.3")


@functools.cache
def _scp_descriptions() -> dict[str, str]:
    frame = scp_statements_frame()
    return {str(k): str(v)[:64] for k, v in frame["description"].items()}


def model_note(config: EcgConfig) -> str:
    """What the model is, for figure titles: never calls a model trained on simulated ECGs a PTB-XL model."""
    data = config.model.training_data or "PTB-XL"
    return f"ProtoECGNet trained on {data}; research use, not a diagnosis"


def _write_wfdb(wfdb, stem: Path, signal: np.ndarray, fs: int, leads: Sequence[str], order: Sequence[str]) -> None:
    rows = [list(leads).index(lead) for lead in order]
    wfdb.wrsamp(
        stem.name,
        fs=fs,
        units=["mV"] * len(order),
        sig_name=list(order),
        p_signal=np.ascontiguousarray(signal[rows].T),
        fmt=["16"] * len(order),
        adc_gain=[1000.0] * len(order),
        baseline=[0] * len(order),
        write_dir=str(stem.parent),
    )
