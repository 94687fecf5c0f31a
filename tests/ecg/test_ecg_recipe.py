"""``pipelines/ecg/paper.yaml`` pinned to the paper's recipe, and the engine rules it relies on (global batch across
devices, weights kept after a stage, official validation sampling, ImageNet initialisation through torchvision)."""

from __future__ import annotations

from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from medml.config import load_config, resolve_recipe
from medml.engine.data import per_device_batch
from medml.engine.train import effective_global_batch
from medml.errors import ConfigError
from medml.pipelines.ecg.config import EcgConfig
from medml.pipelines.ecg.data import DrawnDataset, branch_validation_draw
from medml.pipelines.ecg.model import ResNet2D


@pytest.fixture(scope="module")
def paper() -> EcgConfig:
    return load_config(EcgConfig, resolve_recipe("ecg", "paper"))


def test_paper_recipe_is_the_papers(paper):
    assert paper.model.imagenet_weights == "imagenet"  # official ResNet2D(pretrained=True) for both 2D branches
    assert (paper.train.precision, paper.tf32) == ("32", True)  # fp32 with TF32 matmuls, as the official runs
    assert (paper.train.global_batch_size, paper.train.optim.lr, paper.train.optim.weight_decay) == (32, 1e-4, 1.7e-4)
    assert (paper.train.optim.name, paper.train.optim.schedule, paper.train.seed) == ("adam", "cosine", 42)
    assert (paper.train.max_epochs, paper.train.patience, paper.train.save_top_k) == (200, 10, 3)
    assert paper.data.branch_validation == "official_sampling"
    assert (paper.data.sampling_rate, paper.data.highpass, paper.data.standardize) == (100, True, False)
    assert (paper.model.calibration, paper.model.threshold, paper.model.threshold_min_positives) == (
        "temperature",
        "per_label_f1",
        10,
    )
    sizes = [
        (b.depth, b.prototypes_per_class, b.prototype_length, b.prototype_dim)
        for b in (paper.model.branch_rhythm, paper.model.branch_morphology, paper.model.branch_global)
    ]
    assert sizes == [(18, 5, 1, 512), (18, 18, 3, 512), (18, 7, 32, 512)]
    enabled = {s.name: s for s in paper.stages if s.enabled}
    for branch in ("rhythm", "morphology", "global"):  # projection starts from the joint stage's last weights
        assert enabled[f"joint_{branch}"].keep == "last"
        assert enabled[f"joint_{branch}"].monitor == f"val_auroc_{branch}"
    assert enabled["fusion"].keep == "best" and enabled["fusion"].monitor == "val_auroc"
    assert paper == EcgConfig()  # the yaml writes out the defaults


def test_tiny_recipe_stays_random_and_bf16_is_an_option():
    tiny = load_config(EcgConfig, resolve_recipe("ecg", "tiny"))
    assert tiny.model.imagenet_weights is None
    assert load_config(EcgConfig, None, ["train.precision=bf16-mixed"]).train.precision == "bf16-mixed"
    assert load_config(EcgConfig, None, ["data.branch_validation=fold9"]).data.branch_validation == "fold9"


def test_global_batch_and_lr_are_kept_on_any_number_of_devices(paper):
    for processes in (1, 2, 4, 8):
        batch = effective_global_batch(paper.train, {"devices": processes, "num_nodes": 1})
        assert batch["global"] == 32 and batch["per_device"] == 32 // processes
    assert per_device_batch(paper.train, 4) == 8
    assert effective_global_batch(paper.train, {"devices": 2, "num_nodes": 2})["per_device"] == 8
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        per_device_batch(paper.train, 3)
    plain = load_config(EcgConfig, None, ["train.global_batch_size=null", "train.batch_size=16"]).train
    assert effective_global_batch(plain, {"devices": 4, "num_nodes": 1})["global"] == 64  # the old per-device rule


def test_imagenet_initialisation_goes_through_torchvision_and_fails_offline_in_one_line(monkeypatch, tmp_path):
    import torchvision.models._api as api

    reference = resnet18(weights=None).state_dict()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return reference

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_download)
    net = ResNet2D(imagenet_weights="imagenet")
    assert calls and calls[0].endswith("resnet18-f37072fd.pth")  # ResNet18_Weights.IMAGENET1K_V1
    torch.testing.assert_close(net.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    assert net.conv1.weight.shape == (64, 1, 12, 7)  # replaced, as in the official backbone

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match="model.imagenet_weights=/path/to/resnet18-f37072fd.pth") as info:
        ResNet2D(imagenet_weights="imagenet")
    assert "\n" not in str(info.value)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference, path)
    torch.testing.assert_close(
        ResNet2D(imagenet_weights=str(path)).layer4[1].conv2.weight, reference["layer4.1.conv2.weight"]
    )


def test_official_branch_validation_sampling_never_draws_records_without_a_branch_label():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 6)) < [0.3, 0.05, 0.2, 0.4, 0.1, 0.0]).astype(np.uint8)
    branch = [0, 1, 5]
    draw = branch_validation_draw(labels, branch, seed=42)
    assert len(draw) == len(labels)
    assert labels[draw][:, branch].any(axis=1).all()  # every drawn record has a label of the branch
    # weights: (sum_k n_k - n_c) / n_c per class, summed over a record's labels; rare class 1 drawn far more often
    n = labels[:, branch].sum(0)
    weight = np.where(n > 0, (n.sum() - n) / np.maximum(n, 1), 0.0)
    expected = labels[:, branch] @ weight
    expected = expected / expected.sum()
    counts = np.bincount(draw, minlength=len(labels)) / len(draw)
    assert np.corrcoef(counts, expected)[0, 1] > 0.8
    assert np.array_equal(draw, branch_validation_draw(labels, branch, seed=42))  # same draw every time
    assert branch_validation_draw(labels, [5], seed=0) is None  # nothing to draw: plain fold 9
    items = DrawnDataset([{"index": i} for i in range(len(labels))], draw)
    assert [items[k]["draw"] for k in range(3)] == [0, 1, 2] and items[0]["index"] == draw[0]
