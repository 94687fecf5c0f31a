"""CT-SSG model: paper-size parameter count, the slice graph, ChebConv against the explicit Chebyshev polynomial,
the graph mattering, the weights options (never a download in tests)."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from medml.config import load_config
from medml.errors import ConfigError
from medml.pipelines.ct.config import CtConfig
from medml.pipelines.ct.model import (
    CTSSG,
    ChebConv,
    GraphNorm,
    count_parameters,
    resnet_trunk,
    scaled_laplacian,
    slice_graph,
)
from medml.pipelines.ct.module import build_model


def test_paper_size_has_12_40_million_parameters():
    model = build_model(CtConfig(), pretrained=False)  # the paper config; pretrained=False: no download
    assert model.n_nodes == 80
    assert count_parameters(model) == 12_403_026  # trunk 11.18M + Cheb 0.79M + MLP 0.26M + pos 0.04M + head 0.14M
    assert round(count_parameters(model) / 1e6, 2) == 12.40
    assert model.pos_embed.shape == (1, 80, 512) and "model.pos_embed" not in dict(model.named_buffers())


def test_slice_graph_weights_in_mm():
    w = slice_graph(80, 16, 4.5)
    assert torch.allclose(w[10, 11], torch.tensor(1 / 5.5, dtype=w.dtype))  # 0.182 at one hop (spec)
    assert abs(float(w[10, 26]) - 0.0137) < 1e-4 and w[10, 27] == 0 and w[10, 10] == 0
    assert torch.equal(w, w.T)
    assert abs(float(slice_graph(5, 2, 4.5, "inverse_distance_legacy")[0, 1]) - 1 / 1.015) < 1e-9
    assert float(slice_graph(5, 2, 4.5, "uniform")[0, 2]) == 1.0


def test_chebconv_equals_the_explicit_chebyshev_polynomial():
    torch.manual_seed(0)
    w = slice_graph(12, 3, 4.5)
    deg = w.sum(1)
    lap = torch.eye(12, dtype=w.dtype) - w / torch.sqrt(deg[:, None] * deg[None, :])  # sym-normalised Laplacian
    lhat = lap - torch.eye(12, dtype=w.dtype)  # 2 L / lambda_max - I with lambda_max = 2
    assert torch.allclose(scaled_laplacian(w), lhat)
    eig = torch.linalg.eigvalsh(lhat)
    assert eig.min() >= -1 - 1e-9 and eig.max() <= 1 + 1e-9
    conv = ChebConv(5, 4, K=3).double()
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 12, 5, dtype=torch.float64)
    t0, t1, t2 = torch.eye(12, dtype=w.dtype), lhat, 2 * lhat @ lhat - torch.eye(12, dtype=w.dtype)
    expected = sum((t @ x) @ lin.weight.T for t, lin in zip((t0, t1, t2), conv.lins)) + conv.bias
    assert torch.allclose(conv(x, scaled_laplacian(w)), expected)


def test_graph_norm_modes():
    x = torch.randn(3, 8, 16) * 5 + 2
    per_graph = GraphNorm(16, "graph")(x)
    assert torch.allclose(per_graph.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    batch = GraphNorm(16, "batch")(x)
    assert abs(float(batch.mean())) < 1e-5 and not torch.allclose(batch, per_graph)
    # Per-graph normalisation makes a sample's output independent of its batch-mates; the original's does not.
    assert torch.allclose(GraphNorm(16, "graph")(x[:1]), per_graph[:1], atol=1e-5)


def _small(**kw) -> CTSSG:
    torch.manual_seed(0)
    return CTSSG(n_nodes=6, node_spacing_mm=30.0, trunk_blocks=(1, 1, 1, 1), window=2, dropout=0.0, **kw).eval()


def test_the_graph_matters():
    model = _small()
    x = torch.randn(2, 18, 32, 32)
    h = model.node_features(x)
    loss = model.forward_nodes(h).sum()
    loss.backward()
    for lin in model.blocks[0].conv.lins[1:]:  # the terms that use the Laplacian get gradient
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    with torch.no_grad():
        before = model.forward_nodes(h)
        model.operator.copy_(scaled_laplacian(slice_graph(6, 1, 30.0, "uniform")).float())
        assert not torch.allclose(before, model.forward_nodes(h), atol=1e-6)
        occ = model.node_occlusion(h)
    assert occ.shape == (2, 6, 18) and torch.isfinite(occ).all() and occ.abs().sum() > 0


@pytest.mark.parametrize("operator,readout", [("gcn", "max"), ("gat", "attention")])
def test_ablation_switches_run(operator, readout):
    model = _small(operator=operator, readout=readout, depth=2, grad_checkpointing=True, trunk_chunk=4)
    model.train()
    out = model(torch.randn(2, 18, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 18) and model.trunk[0].weight.grad is not None


def test_weights_offline_error_and_local_file(monkeypatch, tmp_path):
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(ConfigError, match="model.weights=/path/to/resnet18-f37072fd.pth") as err:
        resnet_trunk((2, 2, 2, 2), "imagenet")
    assert "\n" not in str(err.value)
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    trunk = resnet_trunk((2, 2, 2, 2), str(path))
    assert torch.equal(trunk[0].weight, reference.conv1.weight)
    with pytest.raises(ConfigError, match="no file"):
        resnet_trunk((2, 2, 2, 2), str(tmp_path / "nope.pth"))


def test_config_bounds_are_one_line_errors():
    with pytest.raises(ConfigError, match="data"):
        load_config(CtConfig, {"data": {"fold": 5, "folds": 5}})
    with pytest.raises(ConfigError, match="data.size"):
        load_config(CtConfig, {"data": {"size": [100, 480, 480]}})
    with pytest.raises(ConfigError, match="model.K"):
        load_config(CtConfig, {"model": {"K": 0}})
    with pytest.raises(ConfigError, match="data.split_seed"):
        load_config(CtConfig, {"data": {"split_seed": -1}})
    with pytest.raises(ConfigError, match="stage .pretrain."):
        load_config(CtConfig, {"stages": [{"name": "pretrain"}]})
