"""ProtoECGNet model and loss unit tests: paper-size shapes and parameter counts, similarity, every loss term
against a brute-force loop over the spec's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from medml.pipelines.ecg import losses
from medml.pipelines.ecg.config import EcgConfig
from medml.pipelines.ecg.model import PrototypeBranch, windowed_cosine
from medml.pipelines.ecg.module import build_protoecgnet

PAPER_LABELS = {"rhythm": list(range(16)), "morphology": list(range(16, 68)), "global": list(range(68, 71))}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _resnet1d18_count(leads: int = 12) -> int:
    """Parameters of the 1D ResNet-18 from its layout: stem, 4 stages of 2 BasicBlock1D (kernel 3), no fc."""
    total = leads * 64 * 7 + 2 * 64  # conv1 (no bias) + BN
    channels = 64
    for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
        for block in range(2):
            cin, s = (channels, stride) if block == 0 else (width, 1)
            total += 3 * cin * width + 2 * width + 3 * width * width + 2 * width
            if s != 1 or cin != width:
                total += cin * width + 2 * width  # 1x1 projection + BN
        channels = width
    return total


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    config = EcgConfig()  # the paper's configuration
    config.model.labels = [f"L{i}" for i in range(71)]
    return build_protoecgnet(config, PAPER_LABELS, load_imagenet=False).eval()


def test_paper_size_parameter_counts(paper_model):
    tv = resnet18()
    backbone_2d = _count(tv) - _count(tv.fc) - tv.conv1.weight.numel() + 1 * 64 * 12 * 7
    addon = 2 * (512 * 512 + 512)
    expected = {
        "rhythm": _resnet1d18_count() + addon + 80 * 512 + 80 * 16,
        "morphology": backbone_2d + addon + 936 * 512 * 3 + 936 * 52,
        "global": backbone_2d + addon + 21 * 512 * 32 + 21 * 3,
    }
    for name, count in expected.items():
        assert _count(paper_model.branches[name]) == count, name
    assert paper_model.fusion.in_features == 80 + 936 + 21 == 1037
    assert _count(paper_model.fusion) == 1037 * 71 + 71
    assert _count(paper_model) == sum(expected.values()) + 1037 * 71 + 71
    assert tuple(paper_model.branches["morphology"].prototype_vectors.shape) == (936, 512, 1, 3)
    assert tuple(paper_model.branches["global"].prototype_vectors.shape) == (21, 512, 1, 32)
    assert tuple(paper_model.branches["rhythm"].prototype_vectors.shape) == (80, 512)


def test_paper_size_forward_shapes(paper_model):
    x = torch.randn(2, 12, 1000)
    with torch.no_grad():
        out = paper_model(x)
        fmap = paper_model.branches["morphology"].backbone(x.unsqueeze(1))
    assert tuple(fmap.shape) == (2, 512, 1, 32)
    assert tuple(out["logits"].shape) == (2, 71)
    assert tuple(out["similarity"].shape) == (2, 1037)
    assert tuple(out["morphology/window_similarity"].shape) == (2, 936, 30)
    assert tuple(out["global/window_similarity"].shape) == (2, 21, 1)
    # 1D similarity is a cosine; 2D ones are cosines scaled by L/T = 13 (T=3) and 4 (T=32).
    assert out["rhythm/similarity"].abs().max() <= 1 + 1e-5
    assert out["morphology/window_similarity"].abs().max() <= 13 + 1e-4
    assert out["global/similarity"].abs().max() <= 4 + 1e-4
    assert paper_model.fusion.bias is not None
    assert paper_model.branches["rhythm"].last_layer.bias is None


def test_last_layer_initialisation():
    branch = PrototypeBranch("1d", num_classes=4, prototypes_per_class=3, prototype_dim=16, widths=(8, 8, 8, 8))
    weight = branch.last_layer.weight  # (C, P)
    for c in range(4):
        for p in range(12):
            assert weight[c, p].item() == (1.0 if p // 3 == c else -0.5)


def test_windowed_cosine_matches_loop():
    torch.manual_seed(1)
    z = torch.rand(2, 8, 1, 10)
    protos = torch.randn(5, 8, 1, 3)
    got = windowed_cosine(z, protos)
    scale = int(math.sqrt(8 * 3)) / 3
    for b in range(2):
        for p in range(5):
            for w in range(8):
                a = z[b, :, :, w : w + 3].reshape(-1)
                ref = scale * torch.nn.functional.cosine_similarity(a, protos[p].reshape(-1), dim=0)
                assert torch.isclose(got[b, p, w], ref, atol=1e-5)


def test_projected_window_gives_max_similarity():
    """A prototype equal to a latent window is maximally similar there: the scaled cosine reaches L/T."""
    torch.manual_seed(2)
    z = torch.rand(1, 16, 1, 12)
    protos = z[:, :, :, 4:7].clone()
    sims = windowed_cosine(z, protos)[0, 0]
    assert int(sims.argmax()) == 4
    assert torch.isclose(sims[4], torch.tensor(int(math.sqrt(16 * 3)) / 3), atol=1e-5)


# ----- losses against brute-force loops ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loss_case():
    gen = torch.Generator().manual_seed(3)
    batch, classes, per_class = 4, 3, 2
    sim = torch.randn(batch, classes * per_class, generator=gen)
    labels = (torch.rand(batch, classes, generator=gen) > 0.5).float()
    labels[0] = 0  # a record with no label
    identity = torch.zeros(classes * per_class, classes)
    for p in range(classes * per_class):
        identity[p, p // per_class] = 1
    protos = torch.randn(classes * per_class, 5, 1, 2, generator=gen)
    return sim, labels, identity, protos


def test_clustering_and_separation_match_loop(loss_case):
    sim, labels, identity, _ = loss_case
    batch, classes = labels.shape
    clst, sep = 0.0, 0.0
    for b in range(batch):
        for c in range(classes):
            correct = [float(sim[b, p] * identity[p, c] * labels[b, c]) for p in range(sim.shape[1])]
            wrong = [float(sim[b, p] * (1 - identity[p, c] * labels[b, c])) for p in range(sim.shape[1])]
            clst += max(correct)
            sep += max(wrong)
    assert math.isclose(float(losses.clustering_loss(sim, labels, identity)), -clst / (batch * classes), rel_tol=1e-5)
    assert math.isclose(float(losses.separation_loss(sim, labels, identity)), sep / (batch * classes), rel_tol=1e-5)
    ref_spars = sum(max(float(v), 0.0) for row in sim for v in row) / batch
    assert math.isclose(float(losses.sparsity_loss(sim)), ref_spars, rel_tol=1e-5)


def test_diversity_matches_loop(loss_case):
    protos = loss_case[3]
    flat = protos.reshape(protos.shape[0], -1)
    n = flat.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            cos = float(torch.dot(flat[i], flat[j]) / (flat[i].norm() * flat[j].norm()))
            total += (cos - (1.0 if i == j else 0.0)) ** 2
    assert math.isclose(float(losses.diversity_loss(protos)), total / n**2, rel_tol=1e-4)


def test_jaccard_and_contrastive_match_loop(loss_case):
    _, _, identity, protos = loss_case
    train_labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    jac = losses.label_jaccard(train_labels)
    classes = train_labels.shape[1]
    for i in range(classes):
        for k in range(classes):
            both = int(np.sum(train_labels[:, i] & train_labels[:, k]))
            union = int(train_labels[:, i].sum() + train_labels[:, k].sum()) - both
            assert math.isclose(float(jac[i, k]), both / max(union, 1e-6), rel_tol=1e-6)

    flat = protos.reshape(protos.shape[0], -1)
    n = flat.shape[0]
    pos = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            ca, cb = int(identity[a].argmax()), int(identity[b].argmax())
            pos[a, b] = float(jac[ca, cb])
    neg = 1 - pos
    pos_n, neg_n = pos / (pos.sum() + 1e-6), neg / (neg.sum() + 1e-6)
    total = 0.0
    for a in range(n):
        for b in range(n):
            cos = float(torch.dot(flat[a], flat[b]) / (flat[a].norm() * flat[b].norm()))
            cos = min(max(cos, -1 + 1e-6), 1 - 1e-6)
            total += cos * pos_n[a, b] - cos * neg_n[a, b]
    got = float(losses.contrastive_loss(protos, identity, jac))
    assert math.isclose(got, -total / math.sqrt(n), rel_tol=1e-4, abs_tol=1e-6)


def test_pos_weight_uses_total_positive_count():
    labels = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    weights = losses.class_pos_weight(labels)
    counts = labels.sum(0)  # 3, 1, 1 -> total 5
    for c in range(3):
        assert math.isclose(float(weights[c]), (counts.sum() - counts[c]) / counts[c], rel_tol=1e-6)
    assert float(losses.class_pos_weight(np.array([[1, 0], [1, 0]]))[1]) == 1.0  # no positives: neutral weight


def test_branch_pos_weights_use_the_branch_labels_only():
    """Each branch is its own run (spec 1.7): sum_k n_k counts the branch's positives; fusion counts all 71."""
    module = _tiny_module(["joint_rhythm"])
    labels = (np.random.default_rng(0).random((40, 6)) < 0.4).astype(np.uint8)  # what _tiny_module trains on
    branches = {"rhythm": [0, 1], "morphology": [2, 3, 4], "global": [5]}

    def formula(y: np.ndarray) -> list[float]:
        counts = y.sum(0)
        return [(counts.sum() - n) / n if n else 1.0 for n in counts]

    for name, index in branches.items():
        expected = torch.tensor(formula(labels[:, index]), dtype=torch.float32)
        torch.testing.assert_close(module.proto_losses[name].pos_weight, expected)
        torch.testing.assert_close(module.classifier_losses[name].pos_weight, expected)
    torch.testing.assert_close(module.fusion_loss.pos_weight, torch.tensor(formula(labels), dtype=torch.float32))
    # not the slice of the 71-label weights (whose sum_k n_k counts every branch's positives)
    assert not torch.allclose(module.proto_losses["morphology"].pos_weight, module.fusion_loss.pos_weight[2:5])


def test_per_label_thresholds_maximise_each_labels_f1():
    from medml.metrics import fmax
    from medml.pipelines.ecg.module import choose_thresholds

    rng = np.random.default_rng(6)
    targets = (rng.random((60, 4)) < 0.3).astype(np.uint8)
    targets[:, 3] = 0  # no validation positive: falls back to the micro-Fmax threshold
    probs = np.clip(0.5 * targets + 0.6 * rng.random((60, 4)), 0, 1)

    chosen = choose_thresholds(targets, probs)
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    for c in range(3):
        y = targets[:, c] == 1
        f1 = [2 * np.sum((probs[:, c] >= t) & y) / (np.sum(probs[:, c] >= t) + y.sum()) for t in grid]
        assert chosen[c] == pytest.approx(grid[int(np.argmax(f1))])
    assert chosen[3] == pytest.approx(fmax(targets, probs)[1])
    assert np.all(choose_thresholds(targets, probs, "fmax") == pytest.approx(fmax(targets, probs)[1]))


def test_off_class_l1_and_total_loss(loss_case):
    sim, labels, identity, protos = loss_case
    weight = torch.randn(3, 6)
    ref = sum(abs(float(weight[c, p])) for c in range(3) for p in range(6) if identity[p, c] == 0)
    assert math.isclose(float(losses.off_class_l1(weight, identity)), ref, rel_tol=1e-5)
    assert math.isclose(float(losses.off_class_l1(weight)), float(weight.abs().sum()), rel_tol=1e-6)

    loss = losses.PrototypeLoss(torch.ones(3), losses.label_jaccard(labels.numpy()))
    logits = torch.randn(4, 3)
    terms = loss(logits, sim, labels, protos, identity)
    expected = terms["bce"] + 0.004 * terms["clst"] + 0.0004 * terms["sep"] + 250 * terms["div"] + 300 * terms["cnrst"]
    assert torch.isclose(terms["loss"], expected)
    assert "spars" not in terms  # weight 0 in the paper


def test_local_imagenet_weights_load_into_2d_backbone(tmp_path):
    from medml.errors import ConfigError
    from medml.pipelines.ecg.model import ResNet2D

    torch.manual_seed(4)
    reference = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = ResNet2D(imagenet_weights=path)
    torch.testing.assert_close(net.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    assert net.conv1.weight.shape == (64, 1, 12, 7)  # conv1 is the ECG one, not ImageNet's
    with pytest.raises(ConfigError, match="imagenet_weights"):
        ResNet2D(imagenet_weights=tmp_path / "missing.pth")


def _tiny_module(stages: list[str]):
    from medml.pipelines.ecg.config import EcgStage
    from medml.pipelines.ecg.module import EcgModule

    config = EcgConfig()
    config.model.imagenet_weights = None  # narrow test networks: random initialisation
    for name in ("branch_rhythm", "branch_morphology", "branch_global"):
        block = getattr(config.model, name)
        block.widths, block.prototypes_per_class, block.prototype_dim = [8, 8, 16, 16], 2, 8
    config.model.labels = [f"L{i}" for i in range(6)]
    config.stages = [
        EcgStage(mode=s.split("_")[0], branch=s.split("_")[1]) for s in stages
    ]  # trains what the mode says
    labels = (np.random.default_rng(0).random((40, 6)) < 0.4).astype(np.uint8)
    branches = {"rhythm": [0, 1], "morphology": [2, 3, 4], "global": [5]}
    return EcgModule(config, branches, labels)


@pytest.mark.parametrize("stage", ["warmup_morphology", "classifier_rhythm", "joint_global"])
def test_stage_trains_only_its_parameters(stage):
    torch.manual_seed(5)
    module = _tiny_module([stage])
    module.start_stage(module.config.stages[0])
    module.train()
    batch = {"signal": torch.randn(4, 12, 1000), "target": (torch.rand(4, 6) < 0.5).float()}
    loss = module._losses(batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    branch = stage.split("_")[1]
    trained = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith(f"model.branches.{branch}.") for n in trained)
    if stage.startswith("classifier"):
        assert trained == {f"model.branches.{branch}.last_layer.weight"}
        assert not module.model.branches[branch].backbone.training  # frozen backbone kept in eval mode
    if stage.startswith("joint"):
        assert f"model.branches.{branch}.prototype_vectors" in trained
        assert module.model.branches[branch].last_layer.weight.grad is None  # frozen at +1/-0.5
