"""A synthetic task whose labels each need their own branch, trained through the module's own stage losses.

Three labels, routed to the branches as the official partition routes their kind of statement:

* ``fast`` (rhythm branch): beats every 0.48 s instead of every 1.28 s, a rhythm over the whole record.
* ``notch`` (morphology branch): short biphasic notches here and there, a local shape.
* ``late`` (global branch): a burst late in the record instead of early. Only the global branch, whose prototype
  spans the whole record, can tell the two apart: the rhythm branch (global average pool) and the morphology branch
  (mean over its windows) are translation invariant away from the record's edges, which the test checks on the
  trained weights.

Each label must be learned by its own branch's logits (joint stage, with its prototype loss) and by the fused
classifier (fusion stage). Routing ``late`` to another branch cannot pass, nor can a stage that trains nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medml.metrics import multilabel_auroc
from medml.pipelines.ecg.config import EcgConfig, EcgStage
from medml.pipelines.ecg.module import EcgModule

LABELS = ["fast", "notch", "late"]
BRANCH_LABELS = {"rhythm": [0], "morphology": [1], "global": [2]}
FS, SECONDS = 100, 30.72  # 3072 samples: bursts a receptive field (~5 s) away from the edges
N = int(FS * SECONDS)
STRIDE = 32  # the backbones' total downsampling: shifts by a multiple of it shift the feature maps exactly
EARLY, LATE = 15 * STRIDE, 79 * STRIDE  # burst positions


def _event(kind: str) -> np.ndarray:
    t = np.arange(64)
    if kind == "spike":
        return 1.5 * np.exp(-0.5 * ((t - 32) / 2.0) ** 2)
    return -2.0 * (t - 32) / 1.5 * np.exp(-0.5 * ((t - 32) / 1.5) ** 2)  # the notch


def _record(
    period: int | None, phase: int, notch: list[int], late: bool | None, rng: np.random.Generator | None
) -> np.ndarray:
    """One record: beats every ``period`` samples (None: no beats), notches at the samples in ``notch``, a burst
    early or late (None: no burst), light noise when ``rng`` is given (the clean probes have none)."""
    x = np.zeros((12, N), np.float32)
    gains = np.linspace(0.5, 1.5, 12)[:, None]
    if period is not None:
        for where in range(phase, N - 64, period):
            x[:, where : where + 64] += gains * _event("spike")
    for where in notch:
        x[:, where : where + 64] += gains * _event("notch")
    if late is not None:
        burst = LATE if late else EARLY
        x[:, burst : burst + 64] += np.sin(np.arange(64) / 2.0) * 0.6 * gains[::-1]
    if rng is not None:
        x += 0.01 * rng.standard_normal(x.shape).astype(np.float32)
    return x


def _dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    signals, targets = [], []
    for _ in range(n):
        fast, notch, late = (bool(v) for v in rng.integers(2, size=3))
        period = 48 if fast else 128
        where = [int(w) for w in rng.integers(64, N - 128, size=8)] if notch else []
        signals.append(_record(period, int(rng.integers(period)), where, late, rng))
        targets.append([fast, notch, late])
    return torch.as_tensor(np.stack(signals)), torch.as_tensor(np.array(targets, np.float32))


def _config() -> EcgConfig:
    config = EcgConfig()
    config.data.seconds = SECONDS
    config.model.labels = LABELS
    config.model.imagenet_weights = None
    config.loss.class_weights = False  # with one label per branch, (sum_k n_k - n_c) / n_c would weight positives 0
    small = {"widths": [8, 16, 16, 16], "prototypes_per_class": 2, "prototype_dim": 16}
    config.model.branch_rhythm = config.model.branch_rhythm.model_copy(update=small)
    config.model.branch_morphology = config.model.branch_morphology.model_copy(update=small)
    config.model.branch_global = config.model.branch_global.model_copy(update={**small, "prototype_length": 96})
    return config


def _fit(module: EcgModule, stage: EcgStage, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    module.start_stage(stage)
    module.train()
    params = [p for _, p in module.stage_parameters(stage) if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(16):
            loss = module._losses({"signal": x[batch], "target": y[batch]})["loss"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    module.eval()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = _dataset(96, seed=0)
    config = _config()
    module = EcgModule(config, BRANCH_LABELS, train_labels=y.numpy())
    assert module.model.branches["global"].latent_length == 96  # one global window over the whole record
    for branch, epochs in (("rhythm", 4), ("morphology", 8), ("global", 8)):
        _fit(module, EcgStage(mode="joint", branch=branch), x, y, epochs=epochs, lr=3e-3)
    # fusion stage: the branches are frozen, so their similarities are computed once; the stage's own loss
    module.start_stage(EcgStage(mode="fusion"))
    with torch.no_grad():
        similarity = module(x)["similarity"]
    optimiser = torch.optim.Adam(module.model.fusion.parameters(), lr=3e-2)
    for _ in range(150):
        loss = module.fusion_loss(module.model.fusion(similarity), y, module.model.fusion.weight)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return module


def test_each_label_is_learned_by_its_own_branch_and_by_fusion(trained):
    x, y = _dataset(64, seed=1)
    with torch.no_grad():
        out = trained(x)
    branch_logits = trained.branch_logits(out)
    own = multilabel_auroc(y.numpy(), branch_logits.numpy(), names=LABELS, n_bootstrap=0)["per_label"]
    fused = multilabel_auroc(y.numpy(), out["logits"].numpy(), names=LABELS, n_bootstrap=0)["per_label"]
    for label in LABELS:
        assert own[label]["auroc"] >= 0.75, (label, own)  # chance is 0.5; a branch that did not learn stays there
        assert fused[label]["auroc"] >= 0.75, (label, fused)


def test_only_the_global_branch_can_represent_late(trained):
    """The invariance behind ``late``, on the trained weights: routed to another branch it could not be learned."""
    early = torch.as_tensor(_record(None, 0, [], False, None))[None]
    late = torch.as_tensor(_record(None, 0, [], True, None))[None]
    with torch.no_grad():
        a, b = trained(early), trained(late)
    for branch in ("rhythm", "morphology"):
        torch.testing.assert_close(a[f"{branch}/similarity"], b[f"{branch}/similarity"], rtol=1e-4, atol=1e-4)
    assert (a["global/similarity"] - b["global/similarity"]).abs().max() > 1e-2
