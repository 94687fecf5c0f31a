"""The ``ecg`` pipeline's configuration: signal, model, loss blocks and the stage sequence.

The defaults are the paper's configuration (spec ``specs/ecg-protoecgnet-and-ct-ssg.md`` part 1);
``pipelines/ecg/paper.yaml`` writes them out.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from medml.config import OptimConfig, PipelineConfig, StageConfig, Strict, TrainConfig
from medml.pipelines.ecg.model import BRANCHES


class EcgDataConfig(Strict):
    """Input signal: rate, length and the preprocessing shared by training, evaluation and prediction."""

    sampling_rate: int = Field(100, gt=0)  # the paper trains on records100
    # None: records100 at 100 Hz, else records500 resampled to sampling_rate (the adapter's rule)
    source: Literal["records100", "records500"] | None = None
    seconds: float = Field(10.0, gt=0)  # PTB-XL records are exactly 10 s
    highpass: bool = True  # order-1 0.5 Hz Butterworth, zero-phase (spec 1.2)
    standardize: bool = False  # paper default: no amplitude normalisation; True fits per-lead mean/std on folds 1-8
    # Clinical ECGs of another length: "crop_or_pad" takes a 10-s window (see crop) or zero-pads a shorter record
    # (zero = the high-passed baseline) if it lasts at least min_seconds; "strict" refuses anything but 10 s.
    length_policy: Literal["crop_or_pad", "strict"] = "crop_or_pad"
    crop: Literal["start", "center"] = "start"
    min_seconds: float = Field(8.0, gt=0)
    flat_lead_mv: float = Field(0.02, ge=0)  # peak-to-peak below this (before or after preprocessing): a flat lead
    # Model selection in the branch stages: "official_sampling" = the official validation loader (fold 9 drawn with
    # replacement, record weight = its branch labels' validation class weights, so records without a label of the
    # branch are never drawn; one seeded draw per stage); "fold9" = every fold-9 record once.
    branch_validation: Literal["official_sampling", "fold9"] = "official_sampling"


class BranchConfig(Strict):
    """One prototype branch; depth and widths of its ResNet, prototype count and shape."""

    depth: Literal[18, 34] = 18
    widths: list[PositiveInt] = Field([64, 128, 256, 512], min_length=4, max_length=4)  # ResNet stages 1-4
    prototypes_per_class: int = Field(ge=1)
    prototype_length: int = Field(1, ge=1)  # latent time steps of a 2D prototype (ignored by the 1D branch)
    prototype_dim: int = Field(512, ge=1)


class EcgModelConfig(Strict):
    """ProtoECGNet at paper size; ``labels`` is filled from ``scp_statements.csv`` when training starts."""

    # the 71 SCP codes in scp_statements.csv row order, filled from the dataset at training and stored with the
    # model; None means PTB-XL's own 71 statements
    labels: list[str] | None = None
    # what the model was trained on ("PTB-XL" or the synthetic stand-in), filled at training; titles figures
    training_data: str | None = None
    branch_rhythm: BranchConfig = BranchConfig(prototypes_per_class=5)
    branch_morphology: BranchConfig = BranchConfig(prototypes_per_class=18, prototype_length=3)
    branch_global: BranchConfig = BranchConfig(prototypes_per_class=7, prototype_length=32)
    dropout: float = Field(
        0.35, ge=0, lt=1
    )  # before layer4 of the 2D backbones (unused by the 1D net, as in the official code)
    # 2D backbones' initialisation: "imagenet" (torchvision's ResNet weights API, downloaded once into torch's hub
    # cache), a local torchvision state dict file (offline machines), or null (random; tiny recipes and tests)
    imagenet_weights: str | None = "imagenet"
    threshold: Literal["per_label_f1", "fmax"] = "per_label_f1"  # decision threshold chosen on the val fold
    # a label needs this many fold-9 positives for its own F1-optimal threshold; fewer: the micro-Fmax threshold
    threshold_min_positives: int = Field(10, ge=1)
    # probability calibration fitted on fold 9 after fusion: one temperature per label, Platt (a, b) per label, none
    calibration: Literal["temperature", "platt", "none"] = "temperature"
    explain_top_k: int = Field(3, ge=1)  # prototypes listed per positive label
    explain_max_labels: int = Field(8, ge=1)  # positive labels explained per ECG (highest probability first)


class EcgLossConfig(Strict):
    """Loss weights (spec 1.7; the src/main.py values that tune.py also fixes)."""

    class_weights: bool = True  # BCE pos_weight w_c = (sum_k n_k - n_c) / n_c, training folds, per branch
    clst: float = Field(0.004, ge=0)
    sep: float = Field(0.0004, ge=0)
    spars: float = Field(0.0, ge=0)
    div: float = Field(250.0, ge=0)
    cnrst: float = Field(300.0, ge=0)
    l1: float = Field(1e-4, ge=0)  # classifier and fusion stages: L1 on off-class (fusion: all) last-layer weights


#: What each fit mode trains, as parameter names under ``model.branches.<branch>.`` (fusion: ``model.fusion``).
MODE_TRAINS = {
    "warmup": ("backbone", "warmup_head"),
    "joint": ("backbone", "add_on", "prototype_vectors"),
    "classifier": ("last_layer",),
}
RUN_MODES = ("project", "thresholds")
BRANCH_MODES = ("warmup", "joint", "project", "classifier")


def trained_prefixes(mode: str, branch: str | None) -> list[str]:
    """Parameter-name prefixes a stage of ``mode`` on ``branch`` trains; empty for run stages (they train nothing)."""
    if mode == "fusion":
        return ["model.fusion"]
    return [f"model.branches.{branch}.{part}" for part in MODE_TRAINS.get(mode, ())]


class EcgStage(StageConfig):
    """A ProtoECGNet stage says what it does: ``{mode: joint, branch: rhythm}``; the trainable parameters follow.

    ``mode``: warmup | joint | classifier (fit one branch), project (push one branch's prototypes onto training
    records), fusion (fit the fused classifier), thresholds (choose decision thresholds on the validation fold).
    ``name`` (default ``<mode>_<branch>`` or ``<mode>``) names the stage's folder and keys ``--resume``; ``kind``
    follows from the mode. A stage written the old way (name only, ``trainable`` prefixes) still loads when its
    prefixes are the ones its mode trains, so checkpoints of earlier runs keep working.
    """

    name: str = ""
    mode: Literal["warmup", "joint", "project", "classifier", "fusion", "thresholds"]
    branch: Literal["rhythm", "morphology", "global"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_from_mode(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "mode" not in data and data.get("name"):  # the earlier form: everything in the name
            mode, _, branch = str(data["name"]).partition("_")
            if mode in BRANCH_MODES and branch in BRANCHES:
                data["mode"], data["branch"] = mode, branch
            elif data["name"] in ("fusion", "thresholds"):
                data["mode"] = data["name"]
            else:
                raise ValueError(
                    f"unknown ECG stage '{data['name']}': give mode (warmup|joint|project|classifier|fusion|"
                    "thresholds) and branch (rhythm|morphology|global)"
                )
            if list(data.get("trainable") or []) == trained_prefixes(data["mode"], data.get("branch")):
                data["trainable"] = []
        mode = data.get("mode")
        if mode in RUN_MODES:
            data.setdefault("kind", "run")
        if not data.get("name") and mode is not None:
            data["name"] = f"{mode}_{data['branch']}" if data.get("branch") else str(mode)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> EcgStage:
        if (self.branch is None) == (self.mode in BRANCH_MODES):
            need = "needs a branch" if self.branch is None else "takes no branch"
            raise ValueError(f"stage '{self.name}': mode {self.mode} {need}")
        if (self.kind == "run") != (self.mode in RUN_MODES):
            raise ValueError(
                f"stage '{self.name}': mode {self.mode} is kind '{'fit' if self.kind == 'run' else 'run'}'"
            )
        if self.trainable:
            raise ValueError(f"stage '{self.name}': trainable parameters follow from mode and branch; remove trainable")
        return self


def _branch_stages(branch: str) -> list[EcgStage]:
    monitor = {"monitor": f"val_auroc_{branch}", "monitor_mode": "max"}
    return [
        EcgStage(mode="warmup", branch=branch, enabled=False, **monitor),
        EcgStage(mode="joint", branch=branch, keep="last", **monitor),  # the official push loads the last weights
        EcgStage(mode="project", branch=branch),
        EcgStage(mode="classifier", branch=branch, enabled=False, **monitor),
    ]


def paper_stages() -> list[EcgStage]:
    """Per branch: (warm-up) -> joint -> projection -> (classifier); then fusion and threshold selection."""
    stages = [s for branch in BRANCHES for s in _branch_stages(branch)]
    stages.append(EcgStage(mode="fusion", monitor="val_auroc", monitor_mode="max"))
    stages.append(EcgStage(mode="thresholds"))
    return stages


class EcgConfig(PipelineConfig):
    """ProtoECGNet paper configuration: Adam lr 1e-4, weight decay 1.7e-4, cosine over 200 epochs, batch 32,
    early stopping on validation macro-AUROC (patience 10), top-3 checkpoints, seed 42."""

    train: TrainConfig = TrainConfig(
        batch_size=32,
        global_batch_size=32,  # kept on any number of devices, with the paper's lr
        precision="32",  # fp32 as the official runs (TF32 matmuls allowed, see tf32); bf16-mixed is an option
        max_epochs=200,
        monitor="val_auroc",
        monitor_mode="max",
        patience=10,
        save_top_k=3,
        seed=42,
        optim=OptimConfig(name="adam", lr=1e-4, weight_decay=1.7e-4, schedule="cosine"),
    )
    stages: list[EcgStage] = paper_stages()
    data: EcgDataConfig = EcgDataConfig()
    model: EcgModelConfig = EcgModelConfig()
    loss: EcgLossConfig = EcgLossConfig()
    tf32: bool = True  # allow TF32 matmuls/convolutions on CUDA in fp32 runs (torch.set_float32_matmul_precision)
