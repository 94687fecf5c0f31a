"""The ``ecg`` pipeline: ProtoECGNet on PTB-XL (71 SCP statements) with case-based explanations.

Training data: the official PTB-XL layout (``medml.data.ptbxl``). Clinical inputs: WFDB records and DICOM 12-lead
waveform ECGs at any sampling rate, read by ``medml.io.read_ecg``. Spec: ``specs/ecg-protoecgnet-and-ct-ssg.md``
part 1; the config defaults below are the paper's configuration.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from medml.config import OptimConfig, PipelineConfig, StageConfig, Strict, TrainConfig
from medml.errors import ConfigError, DataLayoutError, SignalError
from medml.io import write_csv
from medml.pipelines.base import Pipeline
from medml.pipelines.ecg.model import BRANCHES
from medml.pipelines.ecg.module import EcgModule
from medml.registry import register_pipeline
from medml.utils.files import write_json, write_text

#: ProtoECGNet's prototype_category -> branch (spec 1.3: 1 rhythm 1D, 3 morphology 2D partial, 4 global 2D).
CATEGORY_BRANCH = {1: "rhythm", 3: "morphology", 4: "global"}
BENCHMARK_SETS = ("diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
#: Strodthoff et al. 2020 leaderboard (fold 10 macro-AUROC, best model per task; spec 1.11) and ProtoECGNet.
BENCHMARK_BEST = {
    "all": ("inception1d / xresnet1d101", 0.925),
    "diagnostic": ("xresnet1d101", 0.937),
    "subdiagnostic": ("inception1d", 0.930),
    "superdiagnostic": ("resnet1d_wang", 0.930),
    "form": ("inception1d", 0.899),
    "rhythm": ("xresnet1d101", 0.957),
}
#: ProtoECGNet's own headline (Sethi et al., MLHC 2025, Tables 1-2): level V3 in specs/published-results.md §0 /
#: §1.2, i.e. known only from one third-party literature note; the paper's table was not reachable. Unverified.
PROTOECGNET_PUBLISHED = {"all": 0.913}
PROTOECGNET_PUBLISHED_NOTE = (
    "ProtoECGNet paper value: V3, unverified (one third-party literature note on Sethi et "
    "al., MLHC 2025, Tables 1-2, as listed in specs/published-results.md; the paper's own "
    "table was not reachable)"
)


# ----------------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------------


class EcgDataConfig(Strict):
    """Input signal: rate, length and the preprocessing shared by training, evaluation and prediction."""

    sampling_rate: int = 100  # the paper trains on records100
    # None: records100 at 100 Hz, else records500 resampled to sampling_rate (the adapter's rule)
    source: Literal["records100", "records500"] | None = None
    seconds: float = 10.0  # PTB-XL records are exactly 10 s
    highpass: bool = True  # order-1 0.5 Hz Butterworth, zero-phase (spec 1.2)
    standardize: bool = False  # paper default: no amplitude normalisation; True fits per-lead mean/std on folds 1-8
    # Clinical ECGs of another length: "crop_or_pad" takes a 10-s window (see crop) or zero-pads a shorter record
    # (zero = the high-passed baseline) if it lasts at least min_seconds; "strict" refuses anything but 10 s.
    length_policy: Literal["crop_or_pad", "strict"] = "crop_or_pad"
    crop: Literal["start", "center"] = "start"
    min_seconds: float = 8.0
    flat_lead_mv: float = 0.02  # peak-to-peak below this (before or after preprocessing): a flat lead


class BranchConfig(Strict):
    """One prototype branch; depth and widths of its ResNet, prototype count and shape."""

    depth: Literal[18, 34] = 18
    widths: list[int] = [64, 128, 256, 512]
    prototypes_per_class: int
    prototype_length: int = 1  # latent time steps of a 2D prototype (ignored by the 1D branch)
    prototype_dim: int = 512


class EcgModelConfig(Strict):
    """ProtoECGNet at paper size; ``labels`` is filled from ``scp_statements.csv`` when training starts."""

    # the 71 SCP codes in scp_statements.csv row order, filled from the dataset at training and stored with the
    # model; None means PTB-XL's own 71 statements
    labels: list[str] | None = None
    branch_rhythm: BranchConfig = BranchConfig(prototypes_per_class=5)
    branch_morphology: BranchConfig = BranchConfig(prototypes_per_class=18, prototype_length=3)
    branch_global: BranchConfig = BranchConfig(prototypes_per_class=7, prototype_length=32)
    dropout: float = 0.35  # before layer4 of the 2D backbones (unused by the 1D net, as in the official code)
    imagenet_weights: Path | None = None  # local torchvision resnet18 state dict for the 2D backbones; never fetched
    threshold: Literal["per_label_f1", "fmax"] = "per_label_f1"  # decision threshold chosen on the val fold
    explain_top_k: int = 3  # prototypes listed per positive label
    explain_max_labels: int = 8  # positive labels explained per ECG (highest probability first)


class EcgLossConfig(Strict):
    """Loss weights (spec 1.7; the src/main.py values that tune.py also fixes)."""

    class_weights: bool = True  # BCE pos_weight w_c = (sum_k n_k - n_c) / n_c, training folds, per branch
    clst: float = 0.004
    sep: float = 0.0004
    spars: float = 0.0
    div: float = 250.0
    cnrst: float = 300.0
    l1: float = 1e-4  # classifier and fusion stages: L1 on off-class (fusion: all) last-layer weights


def _branch_stages(branch: str) -> list[StageConfig]:
    prefix = f"model.branches.{branch}."
    monitor = f"val_auroc_{branch}"
    return [
        StageConfig(
            name=f"warmup_{branch}",
            enabled=False,
            trainable=[prefix + "backbone", prefix + "warmup_head"],
            monitor=monitor,
            monitor_mode="max",
        ),
        StageConfig(
            name=f"joint_{branch}",
            trainable=[prefix + "backbone", prefix + "add_on", prefix + "prototype_vectors"],
            monitor=monitor,
            monitor_mode="max",
        ),
        StageConfig(name=f"project_{branch}", kind="run"),
        StageConfig(
            name=f"classifier_{branch}",
            enabled=False,
            trainable=[prefix + "last_layer"],
            monitor=monitor,
            monitor_mode="max",
        ),
    ]


def paper_stages() -> list[StageConfig]:
    """Per branch: (warm-up) -> joint -> projection -> (classifier); then fusion and threshold selection."""
    stages = [s for branch in BRANCHES for s in _branch_stages(branch)]
    stages.append(StageConfig(name="fusion", trainable=["model.fusion"], monitor="val_auroc", monitor_mode="max"))
    stages.append(StageConfig(name="thresholds", kind="run"))
    return stages


class EcgConfig(PipelineConfig):
    """ProtoECGNet paper configuration: Adam lr 1e-4, weight decay 1.7e-4, cosine over 200 epochs, batch 32,
    early stopping on validation macro-AUROC (patience 10), top-3 checkpoints, seed 42."""

    train: TrainConfig = TrainConfig(
        batch_size=32,
        max_epochs=200,
        monitor="val_auroc",
        monitor_mode="max",
        patience=10,
        save_top_k=3,
        seed=42,
        optim=OptimConfig(name="adam", lr=1e-4, weight_decay=1.7e-4, schedule="cosine"),
    )
    stages: list[StageConfig] = paper_stages()
    data: EcgDataConfig = EcgDataConfig()
    model: EcgModelConfig = EcgModelConfig()
    loss: EcgLossConfig = EcgLossConfig()


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


class EcgDataModule(L.LightningDataModule):
    """PTB-XL folds 1-8 / 9 (71-label 'all' targets, every record kept) from the memory-mapped cache."""

    def __init__(self, data_dir: Path, config: EcgConfig):
        super().__init__()
        self.data_dir, self.config = Path(data_dir), config
        self.ptbxl = None

    def setup(self, stage: str | None = None) -> None:
        if self.ptbxl is not None:
            return
        from medml.data.ptbxl import PTBXL, ECGDataset, fit_standardizer

        cfg = self.config.data
        self.ptbxl = PTBXL(self.data_dir, sampling_rate=cfg.sampling_rate, highpass=cfg.highpass, source=cfg.source)
        self.train_index = self.ptbxl.split_indices("train")
        self.val_index = self.ptbxl.split_indices("val")
        # Standardisation lives in the module (buffers in the checkpoint), so datasets return raw mV.
        self.train_dataset = ECGDataset(self.ptbxl, self.train_index, "all")
        self.val_dataset = ECGDataset(self.ptbxl, self.val_index, "all")
        self.mean = self.std = None
        if cfg.standardize:
            self.mean, self.std = fit_standardizer(self.ptbxl.signals, self.train_index)
        self.split_summary = {
            "train_folds": list(range(1, 9)),
            "val_folds": [9],
            "test_folds": [10],
            "n_train": int(len(self.train_index)),
            "n_val": int(len(self.val_index)),
        }

    @property
    def codes(self) -> list[str]:
        return list(self.ptbxl.codes)

    def train_labels(self) -> np.ndarray:
        return np.asarray(self.ptbxl.labels[self.train_index])

    def record_path(self, index: int) -> Path:
        return self.ptbxl.record_path(int(index))

    def train_dataloader(self):
        from medml.engine.data import train_loader

        return train_loader(self.train_dataset, self.config.train)

    def val_dataloader(self):
        from medml.engine.data import eval_loader

        return eval_loader(self.val_dataset, self.config.train)


def ptbxl_statement_codes() -> list[str]:
    """PTB-XL's 71 SCP statements in ``scp_statements.csv`` row order (the table `medml.data.ptbxl` ships)."""
    from medml.data.ptbxl import SCP_CODES

    return list(SCP_CODES)


def branch_label_indices(codes: Sequence[str]) -> dict[str, list[int]]:
    """Indices of each branch's labels within ``codes`` (row order), from the shipped SCP_BRANCH table."""
    from medml.data.ptbxl import SCP_BRANCH

    out: dict[str, list[int]] = {name: [] for name in BRANCHES}
    for i, code in enumerate(codes):
        if code not in SCP_BRANCH:
            raise DataLayoutError(
                f"SCP code '{code}' has no ProtoECGNet branch (expected one of the 71 PTB-XL statements)"
            )
        out[CATEGORY_BRANCH[SCP_BRANCH[code]]].append(i)
    return out


# ----------------------------------------------------------------------------------------------------------------
# pipeline
# ----------------------------------------------------------------------------------------------------------------


@register_pipeline
class EcgPipeline(Pipeline):
    """ProtoECGNet (Sethi et al., MLHC 2025): 71-label 12-lead ECG classification with prototype explanations."""

    name = "ecg"
    summary = "ProtoECGNet on PTB-XL: 71 SCP labels from 12-lead ECGs, explained by prototype training ECGs"
    Config = EcgConfig
    input_kinds = ("wfdb", "dicom_ecg")
    predict_batch_size = 16

    config: EcgConfig

    # ----- dataset -------------------------------------------------------------------------------------------------
    def check_layout(self, data_dir: Path) -> None:
        from medml.data.ptbxl import check_ptbxl_layout

        cfg = self.config.data
        check_ptbxl_layout(
            Path(data_dir), source=cfg.source or ("records100" if cfg.sampling_rate == 100 else "records500")
        )

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        from medml.data.ptbxl import PTBXL

        self.check_layout(data_dir)
        ptbxl = PTBXL(
            Path(data_dir),
            sampling_rate=self.config.data.sampling_rate,
            highpass=self.config.data.highpass,
            source=self.config.data.source,
            progress=True,
        )
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
        from medml.data.synthetic_ptbxl import write_synthetic_ptbxl

        return write_synthetic_ptbxl(Path(out_dir), n_records=360, seed=seed)

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        """WFDB records at 500 Hz in a non-standard lead order, pydicom's waveform_ecg.dcm, a DICOM ECG written by
        medml, and one record with a flat lead (which must end up in failures.csv)."""
        import wfdb
        from pydicom.data import get_testdata_file

        from medml.data.synthetic_ptbxl import simulate_ecg
        from medml.io.synthetic import write_dicom_ecg
        from medml.io.types import STANDARD_LEADS

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
        from medml.io import read_ecg

        record = read_ecg(case)
        path = getattr(case, "path", case)
        signal = preprocess_signal(record.signal, float(record.fs), self.config.data, path)
        return {
            "signal": signal,
            "fs": float(self.config.data.sampling_rate),
            "source_fs": float(record.fs),
            "source_seconds": float(record.signal.shape[1] / record.fs),
            "path": str(path),
        }

    @torch.no_grad()
    def predict_batch(self, module: EcgModule, samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        from medml.pipelines.ecg.explain import explain_sample, prototype_segments, prototype_table

        signal = torch.as_tensor(np.stack([s["signal"] for s in samples]), dtype=torch.float32, device=module.device)
        out = module(signal)
        probs = torch.sigmoid(out["logits"]).float().cpu().numpy()
        thresholds = module.thresholds.cpu().numpy()
        table = prototype_table(module)
        results = []
        for i, sample in enumerate(samples):
            per = {k: v[i].float().cpu() for k, v in out.items()}
            explanation = explain_sample(module, per, probs[i], thresholds, sample["fs"], table)
            results.append(
                {
                    "probs": probs[i],
                    "thresholds": thresholds,
                    "decision": probs[i] >= thresholds,
                    "explanation": explanation,
                    "segments": prototype_segments(module, explanation),
                }
            )
        return results

    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        from medml.pipelines.ecg.explain import explanation_figure

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        labels = self.config.model.labels
        lines = ["label,probability,threshold,decision"]
        for name, p, t, d in zip(labels, output["probs"], output["thresholds"], output["decision"]):
            lines.append(f"{name},{p:.6f},{t:.2f},{int(d)}")
        write_text(out_dir / "probabilities.csv", "\n".join(lines) + "\n")
        explanation = {
            "case_id": case.case_id,
            "source": sample["path"],
            "source_fs": sample["source_fs"],
            "source_seconds": sample["source_seconds"],
            **output["explanation"],
        }
        write_json(out_dir / "explanation.json", explanation)
        explanation_figure(sample["signal"], sample["fs"], explanation, out_dir / "explanation.png", output["segments"])
        order = np.argsort(-output["probs"])
        positive = [labels[j] for j in order if output["decision"][j]]
        return {
            "case_id": case.case_id,
            "n_positive": len(positive),
            "positive_labels": ";".join(positive),
            "top_label": labels[int(order[0])],
            "top_probability": round(float(output["probs"][order[0]]), 4),
            "top3": ";".join(f"{labels[j]}:{output['probs'][j]:.3f}" for j in order[:3]),
        }

    # ----- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, module: EcgModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        from medml.pipelines.ecg.explain import per_label_auroc_figure

        results, arrays = evaluate_split(module, Path(data_dir), split, self.config)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "metrics.json", results)
        # per-record outputs, so any metric can be recomputed over the whole fold later
        codes = module.label_names
        write_csv(
            (
                {
                    "ecg_id": int(ecg_id),
                    **{f"prob_{c}": f"{v:.6f}" for c, v in zip(codes, prob)},
                    **{f"label_{c}": int(v) for c, v in zip(codes, target)},
                }
                for ecg_id, prob, target in zip(arrays["ecg_id"], arrays["probs"], arrays["target"])
            ),
            out_dir / f"predictions_{split}.csv",
            columns=["ecg_id", *(f"prob_{c}" for c in codes), *(f"label_{c}" for c in codes)],
        )
        write_csv(
            (
                {
                    "label_set": label_set,
                    "label": label,
                    "auroc": f"{row['auroc']:.4f}",
                    "ci_lo": f"{row['ci_lo']:.4f}",
                    "ci_hi": f"{row['ci_hi']:.4f}",
                    "n_pos": row["n_pos"],
                }
                for label_set, res in results["label_sets"].items()
                for label, row in res["per_label"].items()
            ),
            out_dir / "per_label_auroc.csv",
        )
        write_text(out_dir / "benchmark_table.md", benchmark_table(results))
        per_label_auroc_figure(
            results["label_sets"]["all"],
            out_dir / "per_label_auroc.png",
            title=f"ProtoECGNet, PTB-XL {split} fold, 71 labels",
        )
        headline = {"macro_auroc": results["label_sets"]["all"]["macro"], "fmax": results["fmax"]}
        for name in BENCHMARK_SETS:
            headline[f"macro_auroc_{name}"] = results["label_sets"][name]["macro"]
        return headline

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        return sorted(Path(eval_dir).glob("*.png")) + sorted(Path(pred_dir).glob("*/explanation.png"))[:4]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


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


def preprocess_signal(signal: np.ndarray, fs: float, cfg: EcgDataConfig, path: Any) -> np.ndarray:
    """Clinical ECG (12, n) mV at ``fs`` -> (12, seconds * rate) float32: check, resample, high-pass, crop/pad.

    The checks are `medml.io.ecg.check_signal`'s (with ``data.flat_lead_mv`` as the flat-lead limit) and the
    resampling/high-pass is the PTB-XL cache's own (`medml.data.ptbxl.resample_and_highpass`), so clinical inputs
    get exactly the preprocessing the model was trained with.

    Raises:
        SignalError: NaN values, a record too short for the length policy, or a flat lead (before or after
            preprocessing).
    """
    from medml.data.ptbxl import resample_and_highpass
    from medml.io.ecg import check_signal

    x = np.asarray(signal, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != 12:
        raise SignalError(f"expected 12 leads, got an array of shape {x.shape}", path)
    # before resampling, whose edge transients could hide a flat lead
    check_signal(x, fs, path, flat_lead_mv=cfg.flat_lead_mv)
    rate = cfg.sampling_rate
    want = int(round(cfg.seconds * rate))
    seconds = x.shape[1] / fs
    if cfg.length_policy == "strict" and abs(seconds - cfg.seconds) > 1.0 / fs:
        raise SignalError(f"record lasts {seconds:.2f} s; data.length_policy 'strict' needs {cfg.seconds:g} s", path)
    if seconds < cfg.min_seconds:
        raise SignalError(f"record lasts {seconds:.2f} s, shorter than data.min_seconds={cfg.min_seconds:g}", path)
    x = resample_and_highpass(x, fs, rate, cfg.highpass)
    n = x.shape[1]
    if n > want:
        start = 0 if cfg.crop == "start" else (n - want) // 2
        x = x[:, start : start + want]
    elif n < want:
        x = np.pad(x, ((0, 0), (0, want - n)))
    check_signal(x[:, : min(n, want)], rate, path, flat_lead_mv=cfg.flat_lead_mv)  # the high-pass can flatten too
    return np.ascontiguousarray(x, dtype=np.float32)


def evaluate_split(
    module: EcgModule, data_dir: Path, split: str, config: EcgConfig, n_bootstrap: int = 1000
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Whole-fold scores of the fused 71 outputs, and of each benchmark label set derived from them; also the
    per-record arrays (ecg_id, probabilities, targets) they were computed from.

    Aggregated labels (sub/superdiagnostic) take the max probability over their member codes; as in the
    benchmark, records with no positive label in a task are left out of that task.
    """
    from medml.data.ptbxl import PTBXL, ECGDataset
    from medml.metrics import fmax, multilabel_auroc

    if split not in ("train", "val", "test"):
        raise ConfigError(f"split '{split}' is not one of train, val, test")
    ptbxl = PTBXL(
        data_dir, sampling_rate=config.data.sampling_rate, highpass=config.data.highpass, source=config.data.source
    )
    codes = list(ptbxl.codes)
    if codes != list(module.label_names):
        raise DataLayoutError("scp_statements.csv rows differ from the labels the model was trained on", data_dir)
    rows = ptbxl.split_indices(split)
    out = module.predict_dataset(ECGDataset(ptbxl, rows, "all"), device=module.device)  # evaluate --device
    order = np.argsort(out["index"])  # predict_dataset keeps order; sorting makes that explicit
    probs, target = out["probs"][order], out["target"][order]
    row_ids = out["index"][order]
    label_sets: dict[str, Any] = {}
    label_sets["all"] = multilabel_auroc(target, probs, names=codes, n_bootstrap=n_bootstrap)
    for name in BENCHMARK_SETS:
        names, y_full = ptbxl.label_matrix(name)
        _, members = ptbxl.label_aggregation(name)  # (71, K) membership of each code in each task label
        y = np.asarray(y_full)[row_ids]
        scores = np.stack([probs[:, members[:, k] > 0].max(1) for k in range(len(names))], axis=1)
        keep = y.sum(1) > 0
        res = multilabel_auroc(y[keep], scores[keep], names=list(names), n_bootstrap=n_bootstrap)
        res["n_records_without_label_dropped"] = int((~keep).sum())
        label_sets[name] = res
    for branch, index in branch_label_indices(codes).items():
        label_sets[f"branch_{branch}"] = multilabel_auroc(
            target[:, index], probs[:, index], names=[codes[i] for i in index], n_bootstrap=n_bootstrap
        )
    fm, ft = fmax(target, probs)
    thresholds = module.thresholds.cpu().numpy()
    decisions = probs >= thresholds
    tp = float((decisions & (target > 0.5)).sum())
    f1_at_thresholds = 2 * tp / max(float(decisions.sum() + (target > 0.5).sum()), 1.0)
    results = {
        "split": split,
        "n_records": int(len(rows)),
        "label_sets": label_sets,
        "fmax": fm,
        "fmax_threshold": ft,
        "micro_f1_at_val_thresholds": f1_at_thresholds,
        "aggregation": "sub/superdiagnostic scores = max over member SCP codes of the 71 fused outputs",
    }
    return results, {"ecg_id": np.asarray(ptbxl.ecg_ids)[row_ids], "probs": probs, "target": target}


def benchmark_table(results: dict[str, Any]) -> str:
    """Markdown table in the PTB-XL benchmark's format: macro-AUC (95% bootstrap half-width in thousandths)."""
    lines = [
        f"Split: {results['split']} ({results['n_records']} records); macro-AUROC over the whole fold.",
        "",
        "| Task (#labels) | medml ProtoECGNet | best PTB-XL benchmark (Strodthoff 2020) | ProtoECGNet paper |",
        "|---|---|---|---|",
    ]
    for name in ("all", *BENCHMARK_SETS):
        res = results["label_sets"][name]
        k = len(res["per_label"]) + len(res["skipped"])
        lo, hi = res["macro_ci"]
        half = (hi - lo) / 2 if np.isfinite(lo) and np.isfinite(hi) else float("nan")
        ours = f"{res['macro']:.3f}({half * 1000:02.0f})" if np.isfinite(res["macro"]) else "n/a"
        model, value = BENCHMARK_BEST[name]
        paper = f"{PROTOECGNET_PUBLISHED[name]:.3f} (V3, unverified)" if name in PROTOECGNET_PUBLISHED else "not found"
        scored = f"; {len(res['per_label'])} scored" if res["skipped"] else ""
        lines.append(f"| {name} ({k}{scored}) | {ours} | {model} {value:.3f} | {paper} |")
    lines += [
        "",
        f"Fmax (micro, 71 labels): {results['fmax']:.3f} at threshold {results['fmax_threshold']:.2f}",
        "",
        f"{PROTOECGNET_PUBLISHED_NOTE}. Best PTB-XL benchmark: Strodthoff et al. 2020, V1 (official "
        "README of helme/ecg_ptbxl_benchmarking).",
    ]
    return "\n".join(lines) + "\n"
