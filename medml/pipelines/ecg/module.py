"""The ProtoECGNet LightningModule: per-branch warm-up / joint / classifier stages, projection ("push") onto
training segments, fusion, and threshold selection on the validation fold.

A stage (`EcgStage`) says what it does and to which branch: ``{mode: warmup|joint|project|classifier, branch:
rhythm|morphology|global}``, ``{mode: fusion}``, ``{mode: thresholds}``. Which parameters train follows from the mode
and branch (`stage_parameters`; the engine freezes the rest); frozen backbones are kept in eval mode so their
BatchNorm statistics and dropout do not move (spec 1.8: "all three projected branches frozen, in eval mode").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medml.engine.data import eval_loader
from medml.errors import ConfigError
from medml.metrics import fmax, macro_auroc, per_label_f1_thresholds
from medml.metrics.calibration import calibration_summary, fit_platt, fit_temperature
from medml.pipelines.base import MedmlModule
from medml.pipelines.ecg.config import EcgStage, trained_prefixes
from medml.pipelines.ecg.losses import ClassifierLoss, PrototypeLoss, class_pos_weight, label_jaccard
from medml.pipelines.ecg.model import BRANCHES, ProtoECGNet, encode_path


def choose_thresholds(
    targets: np.ndarray, probs: np.ndarray, policy: str = "per_label_f1", min_positives: int = 1
) -> np.ndarray:
    """Decision thresholds from validation predictions.

    ``fmax``: the micro-Fmax threshold (`medml.metrics.fmax`) for every label. ``per_label_f1``: each label its own
    F1-optimal threshold in 0.01..0.99. That is `fmax` applied to the label's column alone (micro-F1 over one
    column is that label's F1), so it reuses the metric; it differs from the ``fmax`` policy only in choosing one
    threshold per label instead of one shared threshold, which matters for PTB-XL's rare labels. A label with fewer
    than ``min_positives`` validation positives (``model.threshold_min_positives``) would get a threshold fitted to a
    handful of records: it falls back to the micro-Fmax threshold over all labels (the documented rule).
    """
    _, global_t = fmax(targets, probs)
    if policy == "fmax":
        return np.full(targets.shape[1], global_t, dtype=np.float32)
    return per_label_f1_thresholds(targets, probs, fallback=global_t, min_positives=min_positives)


def build_protoecgnet(config, branch_labels: dict[str, Sequence[int]], load_imagenet: bool = True) -> ProtoECGNet:
    """ProtoECGNet as ``config`` describes it (the paper's model for the default config)."""
    mcfg = config.model
    seconds_length = int(round(config.data.seconds * config.data.sampling_rate))
    warmup = {s.branch for s in config.stages if s.enabled and s.mode == "warmup"}
    branch_kwargs = {}
    for name in BRANCHES:
        bcfg = getattr(mcfg, f"branch_{name}")
        branch_kwargs[name] = {
            "kind": "1d" if name == "rhythm" else "2d",
            "prototypes_per_class": bcfg.prototypes_per_class,
            "prototype_length": bcfg.prototype_length if name != "rhythm" else 1,
            "prototype_dim": bcfg.prototype_dim,
            "depth": bcfg.depth,
            "widths": tuple(bcfg.widths),
            "dropout": mcfg.dropout,
            "imagenet_weights": mcfg.imagenet_weights if name != "rhythm" and load_imagenet else None,
            "warmup_head": name in warmup,
            "signal_length": seconds_length,
            "latent_length": _latent_length(seconds_length),
        }
    return ProtoECGNet(branch_labels, len(mcfg.labels), branch_kwargs)


class EcgModule(MedmlModule):
    """ProtoECGNet in Lightning.

    Args:
        config: the `EcgConfig` (``model.labels`` must be set).
        branch_labels: indices of each branch's labels in the 71-label vector.
        train_labels: (N, 71) training-fold labels for class weights and Jaccard matrices; ``None`` when the
            module is rebuilt from a checkpoint (the buffers are then loaded from it).
        mean, std: per-lead standardisation fitted on the training folds (``None``: identity).
        load_imagenet: read ``model.imagenet_weights`` (False when rebuilding from a checkpoint, whose weights
            replace them anyway, so prediction never needs the ImageNet file).
    """

    def __init__(
        self,
        config,
        branch_labels: dict[str, Sequence[int]],
        train_labels: np.ndarray | None = None,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        load_imagenet: bool = True,
    ):
        super().__init__(config)
        lcfg = config.loss
        num_labels = len(config.model.labels)
        self.model = build_protoecgnet(config, branch_labels, load_imagenet)

        y = np.zeros((1, num_labels)) if train_labels is None else np.asarray(train_labels)
        weights_on = lcfg.class_weights and train_labels is not None
        self.proto_losses = torch.nn.ModuleDict()
        self.classifier_losses = torch.nn.ModuleDict()
        for name in BRANCHES:
            index = list(branch_labels[name])
            # Each branch is its own training run (spec 1.7), so sum_k n_k runs over the branch's own labels.
            weight = class_pos_weight(y[:, index]) if weights_on else torch.ones(len(index))
            self.proto_losses[name] = PrototypeLoss(
                weight,
                label_jaccard(y[:, index]),
                clst=lcfg.clst,
                sep=lcfg.sep,
                spars=lcfg.spars,
                div=lcfg.div,
                cnrst=lcfg.cnrst,
            )
            self.classifier_losses[name] = ClassifierLoss(weight, l1=lcfg.l1)
        # Fusion trains on all 71 outputs at once: its weights use the totals over the whole label set.
        self.fusion_loss = ClassifierLoss(class_pos_weight(y) if weights_on else torch.ones(num_labels), l1=lcfg.l1)
        self.register_buffer("signal_mean", torch.zeros(12) if mean is None else torch.as_tensor(mean).float())
        self.register_buffer("signal_std", torch.ones(12) if std is None else torch.as_tensor(std).float())
        self.register_buffer("thresholds", torch.full((num_labels,), 0.5))
        # calibrated logit = scale * logit + bias (temperature: scale 1/T, bias 0; Platt: a, b), fitted on fold 9
        self.register_buffer("calibration_scale", torch.ones(num_labels))
        self.register_buffer("calibration_bias", torch.zeros(num_labels))
        self._val_outputs: list[dict[str, torch.Tensor]] = []

    # ----- helpers -------------------------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        return list(self.config.model.labels)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of fused logits (identity until the thresholds stage fits the calibration)."""
        return torch.sigmoid(logits * self.calibration_scale + self.calibration_bias)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Checkpoints written before calibration existed load with the identity calibration."""
        state = dict(state_dict)
        state.setdefault("calibration_scale", torch.ones_like(self.calibration_scale))
        state.setdefault("calibration_bias", torch.zeros_like(self.calibration_bias))
        return super().load_state_dict(state, strict=strict, assign=assign)

    def on_fit_start(self) -> None:
        if self.config.tf32 and self.device.type == "cuda":  # fp32 weights and accumulation, TF32 matmuls
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True

    def standardize(self, signal: torch.Tensor) -> torch.Tensor:
        std = torch.where(self.signal_std > 0, self.signal_std, torch.ones_like(self.signal_std))
        return (signal - self.signal_mean[:, None]) / std[:, None]

    def stage_mode(self) -> tuple[str, str | None]:
        return self.stage.mode, self.stage.branch

    def forward(self, signal: torch.Tensor, branches: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Raw (B, 12, T) mV signal (high-passed) -> the model's outputs; standardisation happens here."""
        return self.model(self.standardize(signal), branches)

    def train(self, mode: bool = True):
        """Keep every frozen backbone / add-on block in eval mode whatever Lightning asks."""
        super().train(mode)
        if mode:
            for branch in self.model.branches.values():
                for part in (branch.backbone, branch.add_on):
                    if not any(p.requires_grad for p in part.parameters()):
                        part.eval()
        return self

    def stage_parameters(self, stage: EcgStage) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """What the stage's mode trains on its branch (`trained_prefixes`); run stages keep the engine's default."""
        prefixes = tuple(trained_prefixes(stage.mode, stage.branch))
        if not prefixes:
            yield from super().stage_parameters(stage)
            return
        for name, param in self.named_parameters():
            if name.startswith(prefixes):
                yield name, param

    def start_stage(self, stage: EcgStage) -> None:
        super().start_stage(stage)
        self.train(self.training)

    # ----- steps ---------------------------------------------------------------------------------------------------
    def _branch_targets(self, target: torch.Tensor, branch: str) -> torch.Tensor:
        return target[:, self.model.label_index(branch)]

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mode, name = self.stage_mode()
        signal, target = batch["signal"], batch["target"].float()
        if mode == "fusion":
            out = self(signal)
            return self.fusion_loss(out["logits"], target, self.model.fusion.weight)
        branch = self.model.branches[name]
        y = self._branch_targets(target, name)
        x = self.standardize(signal)
        if mode == "warmup":
            logits = branch.warmup_logits(x)
            bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.proto_losses[name].pos_weight)
            return {"bce": bce, "loss": bce}
        out = branch(x)
        if mode == "classifier":
            return self.classifier_losses[name](
                out["logits"], y, branch.last_layer.weight, branch.prototype_class_identity
            )
        return self.proto_losses[name](
            out["logits"], out["similarity"], y, branch.prototype_vectors, branch.prototype_class_identity
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self._losses(batch)
        size = batch["signal"].shape[0]
        self.log(
            "train_loss", terms["loss"], on_step=False, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True
        )
        for key, value in terms.items():
            if key != "loss":
                self.log(f"train_{key}", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return terms["loss"]

    def _scores(self, signal: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities of whatever the current stage trains: one branch's labels, or the fused 71."""
        mode, name = self.stage_mode()
        if mode in ("fusion", "thresholds") or name is None:
            return {"all": torch.sigmoid(self(signal)["logits"])}
        branch = self.model.branches[name]
        x = self.standardize(signal)
        logits = branch.warmup_logits(x) if mode == "warmup" else branch(x)["logits"]
        return {name: torch.sigmoid(logits)}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms = self._losses(batch)
        self.log(
            "val_loss", terms["loss"], on_step=False, on_epoch=True, batch_size=batch["signal"].shape[0], sync_dist=True
        )
        # "draw": position in the official resampled fold 9 (a record drawn twice counts twice); else the record row
        record = {"index": batch.get("draw", batch["index"]).long(), "target": batch["target"].float()}
        for key, probs in self._scores(batch["signal"]).items():
            record[f"probs/{key}"] = probs.float()
        self._val_outputs.append(record)

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        merged = {k: torch.cat([o[k] for o in self._val_outputs]) for k in self._val_outputs[0]}
        self._val_outputs.clear()
        # Whole-fold AUROC: gather every process's predictions, drop the DistributedSampler's padding duplicates.
        gathered = {k: self.all_gather(v) for k, v in merged.items()}
        if self.trainer.world_size > 1:
            gathered = {k: v.reshape(-1, *v.shape[2:]) for k, v in gathered.items()}
        index = gathered["index"].cpu().numpy()
        _, keep = np.unique(index, return_index=True)
        target = gathered["target"].cpu().numpy()[keep]
        for key, value in gathered.items():
            if not key.startswith("probs/"):
                continue
            which = key.split("/", 1)[1]
            probs = value.cpu().numpy()[keep]
            # Every process computed the same whole-fold value; sync_dist only keeps Lightning's DDP check quiet.
            if which == "all":
                self.log("val_auroc", macro_auroc(target, probs), on_epoch=True, prog_bar=True, sync_dist=True)
            else:
                y = target[:, self.model.label_index(which).cpu().numpy()]
                self.log(f"val_auroc_{which}", macro_auroc(y, probs), on_epoch=True, prog_bar=True, sync_dist=True)

    # ----- run stages ----------------------------------------------------------------------------------------------
    def run_stage(self, stage: EcgStage, datamodule) -> dict[str, Any]:
        mode, name = stage.mode, stage.branch
        if mode == "project":
            return self.push_prototypes(name, datamodule)
        if mode == "thresholds":
            return self.select_thresholds(datamodule)
        raise ConfigError(f"config key 'stages': stage '{stage.name}' must be kind 'fit', not 'run'")

    def _loader(self, dataset):
        # Every process scans the whole set (no sharding) so each ends with identical prototypes/thresholds.
        return eval_loader(dataset, self.config.train, shard=False)

    def branch_logits(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 71) logits of each label's own branch classifier (every label belongs to exactly one branch)."""
        first = out[f"{self.model.branch_names[0]}/logits"]
        logits = first.new_zeros(first.shape[0], len(self.label_names))
        for name in self.model.branch_names:
            logits[:, self.model.label_index(name)] = out[f"{name}/logits"].to(logits.dtype)
        return logits

    def predict_dataset(self, dataset, device: torch.device | None = None) -> dict[str, np.ndarray]:
        """Fused probabilities (calibrated ``probs`` and ``raw_probs``), fused ``logits``, each label's own branch
        probabilities (``branch_probs``), targets and record rows of a dataset (eval mode, whole set).

        Runs on ``device``, by default the module's own device (where ``load_checkpoint(..., device=)`` put it).
        """
        logits, branch, targets, index = [], [], [], []
        with self.evaluating(device):
            for batch in self._loader(dataset):
                out = self(batch["signal"].to(self.device))
                logits.append(out["logits"].float())
                branch.append(self.branch_logits(out).float().cpu())
                targets.append(batch["target"].float())
                index.append(batch["index"].long())
            fused = torch.cat(logits)
            calibrated = self.calibrate(fused).cpu()
        fused = fused.cpu()
        return {
            "probs": calibrated.numpy(),
            "raw_probs": torch.sigmoid(fused).numpy(),
            "logits": fused.numpy(),
            "branch_probs": torch.sigmoid(torch.cat(branch)).numpy(),
            "target": torch.cat(targets).numpy(),
            "index": torch.cat(index).numpy(),
        }

    def push_prototypes(self, name: str, datamodule) -> dict[str, Any]:
        """Projection (spec 1.8): replace each prototype by the closest latent patch of a training record of its
        own class (1D: the record's feature vector; 2D: the best window), and record where it came from."""
        branch = self.model.branches[name]
        device = self.run_device()
        with self.evaluating(device):
            label_index = self.model.label_index(name)
            proto_class = branch.prototype_class()
            num, length = branch.num_prototypes, branch.prototype_length
            best_sim = torch.full((num,), float("-inf"), device=device)
            best_row = torch.full((num,), -1, dtype=torch.long)
            best_ecg = torch.full((num,), -1, dtype=torch.long)
            best_start = torch.zeros(num, dtype=torch.long)
            best_latent = branch.prototype_vectors.detach().clone()
            best_segment = branch.projection_segment.detach().cpu().clone()
            for batch in self._loader(datamodule.train_dataset):
                signal = batch["signal"].to(device)
                z = branch.latent(self.standardize(signal))
                sim, windows = branch.similarity_from_latent(z)
                if windows is not None:
                    sim, window = windows.max(-1)  # projection uses the best window, not the mean
                else:
                    window = torch.zeros_like(sim, dtype=torch.long)
                y = batch["target"].to(device)[:, label_index][:, proto_class] > 0.5  # (B, P) own-class records
                sim = sim.masked_fill(~y, float("-inf"))
                batch_best, batch_arg = sim.max(0)
                better = torch.nonzero(batch_best > best_sim).flatten()
                if better.numel() == 0:
                    continue
                rec = batch_arg[better]  # record (in the batch) of each improved prototype
                best_sim[better] = batch_best[better]
                rec_cpu, better_cpu = rec.cpu(), better.cpu()
                best_row[better_cpu] = batch["index"][rec_cpu].long()
                best_ecg[better_cpu] = torch.as_tensor(batch["ecg_id"])[rec_cpu].long()
                if branch.kind == "1d":
                    best_latent[better] = z[rec]
                    best_segment[better_cpu] = signal[rec].half().cpu()
                    best_start[better_cpu] = 0
                else:
                    w = window[rec, better]
                    patches = z.flatten(2).unfold(2, length, 1)[rec, :, w]  # (K, D, T)
                    best_latent[better] = patches.unsqueeze(2)
                    starts = (w * branch.signal_length) // branch.latent_length  # = branch.raw_start(w)
                    raw = signal.unfold(2, branch.segment_length, 1)[rec, :, starts]  # (K, 12, segment)
                    best_segment[better_cpu] = raw.half().cpu()
                    best_start[better_cpu] = starts.cpu()
            found = best_row >= 0
            branch.prototype_vectors.data.copy_(best_latent)
            branch.projection_row.copy_(best_row)
            branch.projection_ecg_id.copy_(best_ecg)
            branch.projection_start.copy_(best_start)
            branch.projection_similarity.copy_(torch.where(found, best_sim.cpu(), torch.tensor(float("nan"))))
            branch.projection_segment.copy_(best_segment.to(branch.projection_segment.device))
            for p in torch.nonzero(found).flatten().tolist():
                branch.projection_path[p] = encode_path(str(datamodule.record_path(int(best_row[p]))))
        missing = sorted({self.label_names[int(label_index[c])] for c in proto_class.cpu()[~found].tolist()})
        return {
            "branch": name,
            "prototypes": num,
            "projected": int(found.sum()),
            "unique_records": int(torch.unique(best_row[found]).numel()),
            "classes_without_training_positive": missing,
            "mean_similarity": float(best_sim[found.to(device)].mean()) if found.any() else None,
        }

    def fit_calibration(self, logits: np.ndarray, target: np.ndarray) -> None:
        """Per-label temperature or Platt scaling of the fused logits on fold 9 (``model.calibration``)."""
        method = self.config.model.calibration
        scale, bias = np.ones(logits.shape[1]), np.zeros(logits.shape[1])
        if method == "temperature":
            scale = fit_temperature(logits, target)
        elif method == "platt":
            scale, bias = fit_platt(logits, target)
        self.calibration_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        self.calibration_bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def select_thresholds(self, datamodule) -> dict[str, Any]:
        """Fit the probability calibration, then choose every label's decision threshold on the calibrated
        probabilities, both on the validation fold (whole fold, every record once)."""
        cfg = self.config.model
        self.calibration_scale.fill_(1.0)
        self.calibration_bias.fill_(0.0)
        out = self.predict_dataset(datamodule.val_dataset, device=self.device)
        self.fit_calibration(out["logits"], out["target"])
        probs = self.calibrate(torch.as_tensor(out["logits"]).to(self.calibration_scale.device)).cpu().numpy()
        thresholds = choose_thresholds(out["target"], probs, cfg.threshold, cfg.threshold_min_positives)
        self.thresholds.copy_(torch.as_tensor(thresholds))
        n_pos = (out["target"] > 0.5).sum(0)
        return {
            "policy": cfg.threshold,
            "calibration": cfg.calibration,
            "min_positives": cfg.threshold_min_positives,
            "labels_on_fallback_threshold": [
                name for name, n in zip(self.label_names, n_pos) if n < cfg.threshold_min_positives
            ],
            "mean_threshold": float(thresholds.mean()),
            "val_macro_auroc": macro_auroc(out["target"], out["probs"]),
            "val_calibration_before": calibration_summary(out["target"], out["raw_probs"]),
            "val_calibration_after": calibration_summary(out["target"], probs),
        }


def _latent_length(signal_length: int) -> int:
    """Width of the 2D branches' layer4 map for a signal of ``signal_length`` samples (32 for 1000)."""
    length = signal_length
    for _ in range(5):  # conv1 stride 2, maxpool stride 2, layer2..4 stride 2; each (n + 2p - k) // s + 1
        length = (length - 1) // 2 + 1
    return length
