"""CT-SSG: a structured spectral graph over axial slice triplets of a chest CT (re-implemented, not vendored).

Provenance: Di Piazza, Lazarus, Nempont, Boussel, "Structured Spectral Graph Representation Learning for
Multi-label Abnormality Analysis from 3D CT Scans", MELBA 2026 (arXiv 2510.10779); architecture as read from
``theodpzz/ct-ssg`` (no licence, so nothing is copied; spec part 2 §2.3).

A volume (D, H, W) becomes D/3 nodes: each triplet of consecutive slices is a 3-channel image for a ResNet-18 trunk
(global average pooled to 512 features), plus a learnable axial position embedding. Nodes link to the ``window``
nearest triplets on each side with weights 1 / (1 + distance in mm). Pre-norm residual blocks apply a Chebyshev
spectral convolution (K = 3) and an MLP; the mean over nodes feeds an 18-label head.

The graph is fixed, so the scaled Laplacian is a dense (N, N) buffer applied with a matmul: the same numbers as
torch-geometric's ``ChebConv`` (``normalization='sym'``, lambda_max = 2) without the dependency (tested against the
explicit polynomial).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, ResNet

from medml.errors import ConfigError
from medml.transforms.ct import slice_triplets

IMAGENET_FILE = "resnet18-f37072fd.pth"


# ----- the fixed slice graph ------------------------------------------------------------------------------------------
def slice_graph(n_nodes: int, window: int, node_spacing_mm: float, scheme: str = "inverse_distance") -> torch.Tensor:
    """Dense symmetric edge weights (N, N), zero diagonal: node i links to i +- 1..window.

    ``inverse_distance``: 1 / (1 + |i-j| x node spacing in mm) (the current official code; node spacing =
    3 slices x z spacing); ``inverse_distance_legacy``: 1 / (1 + 0.015 |i-j|) (the code before 2026-01-20);
    ``uniform``: 1.
    """
    idx = torch.arange(n_nodes, dtype=torch.float64)
    hops = (idx[:, None] - idx[None, :]).abs()
    mask = (hops >= 1) & (hops <= window)
    if scheme == "inverse_distance":
        weights = 1.0 / (1.0 + hops * node_spacing_mm)
    elif scheme == "inverse_distance_legacy":
        weights = 1.0 / (1.0 + hops * 0.015)
    elif scheme == "uniform":
        weights = torch.ones_like(hops)
    else:
        raise ValueError(f"unknown edge weighting '{scheme}'")
    return torch.where(mask, weights, torch.zeros_like(weights))


def _inv_sqrt_degree(weights: torch.Tensor) -> torch.Tensor:
    deg = weights.sum(1)
    return torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))


def scaled_laplacian(weights: torch.Tensor, lambda_max: float = 2.0) -> torch.Tensor:
    """2 L / lambda_max - I with L = I - D^-1/2 W D^-1/2 (self-loops dropped), as PyG's ChebConv builds it."""
    weights = weights.clone().fill_diagonal_(0.0)
    d = _inv_sqrt_degree(weights)
    lap = torch.eye(len(weights), dtype=weights.dtype) - d[:, None] * weights * d[None, :]
    return 2.0 * lap / lambda_max - torch.eye(len(weights), dtype=weights.dtype)


def gcn_operator(weights: torch.Tensor) -> torch.Tensor:
    """Kipf and Welling's D~^-1/2 (W + I) D~^-1/2 (PyG ``GCNConv`` with its default self-loops of weight 1)."""
    w = weights.clone().fill_diagonal_(0.0) + torch.eye(len(weights), dtype=weights.dtype)
    d = _inv_sqrt_degree(w)
    return d[:, None] * w * d[None, :]


# ----- graph convolutions on (B, N, C) with a fixed dense operator ---------------------------------------------
class ChebConv(nn.Module):
    """sum_k T_k(L^) X Theta_k + b with T_0 = X, T_1 = L^ X, T_k = 2 L^ T_{k-1} - T_{k-2} (K terms)."""

    def __init__(self, in_channels: int, out_channels: int, K: int = 3, bias: bool = True):
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(in_channels, out_channels, bias=False) for _ in range(K))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        for lin in self.lins:
            nn.init.xavier_uniform_(lin.weight)  # PyG's glorot init

    def forward(self, x: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
        tx0 = x
        out = self.lins[0](tx0)
        if len(self.lins) > 1:
            tx1 = torch.matmul(operator, x)
            out = out + self.lins[1](tx1)
            for lin in self.lins[2:]:
                tx2 = 2.0 * torch.matmul(operator, tx1) - tx0
                out = out + lin(tx2)
                tx0, tx1 = tx1, tx2
        return out if self.bias is None else out + self.bias


class GCNConv(nn.Module):
    """A^ X Theta + b (spatial baseline of the paper's operator ablation)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
        return torch.matmul(operator, self.lin(x)) + self.bias


class GATConv(nn.Module):
    """Single-head graph attention restricted to the slice graph's neighbourhoods plus self-loops (weights unused)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(out_channels))
        self.att_dst = nn.Parameter(torch.empty(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        bound = 1.0 / math.sqrt(out_channels)
        nn.init.uniform_(self.att_src, -bound, bound)
        nn.init.uniform_(self.att_dst, -bound, bound)

    def forward(self, x: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        scores = F.leaky_relu((h @ self.att_dst)[..., :, None] + (h @ self.att_src)[..., None, :], 0.2)
        mask = (operator != 0) | torch.eye(operator.shape[-1], dtype=torch.bool, device=operator.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ h + self.bias


class GraphNorm(nn.Module):
    """LayerNorm without affine over a graph: ``graph`` per sample over nodes and channels (PyG's 'graph' mode with a
    batch vector), ``batch`` over the whole mini-batch tensor (PyG called without one, as the original code does),
    ``node`` per node over channels."""

    def __init__(self, channels: int, mode: str = "graph", eps: float = 1e-5):
        super().__init__()
        self.mode, self.eps = mode, eps
        self.node = nn.LayerNorm(channels, elementwise_affine=False, eps=eps) if mode == "node" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.node is not None:
            return self.node(x)
        dims = tuple(range(x.dim())) if self.mode == "batch" else tuple(range(1, x.dim()))
        x = x - x.mean(dim=dims, keepdim=True)
        return x / (x.std(dim=dims, keepdim=True, unbiased=False) + self.eps)


class GraphBlock(nn.Module):
    """Pre-norm residual block: h + Conv(LN(h)), then h + MLP(LN(h)) with MLP = Linear -> GELU -> Dropout."""

    def __init__(self, dim: int, operator: str, K: int, dropout: float, norm: str):
        super().__init__()
        self.norm_in, self.norm_out = GraphNorm(dim, norm), GraphNorm(dim, norm)
        if operator == "cheb":
            self.conv: nn.Module = ChebConv(dim, dim, K=K)
        elif operator == "gcn":
            self.conv = GCNConv(dim, dim)
        else:
            self.conv = GATConv(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, h: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
        h = h + self.conv(self.norm_in(h), operator)
        return h + self.mlp(self.norm_out(h))


# ----- trunk -------------------------------------------------------------------------------------------------------
def resnet_trunk(blocks=(2, 2, 2, 2), weights: str = "none") -> nn.Sequential:
    """torchvision ResNet (BasicBlock) without avgpool and fc; ``blocks`` (2, 2, 2, 2) is ResNet-18.

    ``weights``: ``none``, ``imagenet`` (torchvision ``ResNet18_Weights.IMAGENET1K_V1``, downloaded once into torch's
    hub cache with its checksum) or a path to that state_dict.
    """
    resnet = ResNet(BasicBlock, list(blocks))
    if weights != "none":
        if tuple(blocks) != (2, 2, 2, 2):
            raise ConfigError("model.weights: ImageNet weights exist for ResNet-18 only (model.trunk_blocks 2,2,2,2)")
        resnet.load_state_dict(_imagenet_state_dict(weights))
    return nn.Sequential(*list(resnet.children())[:-2])


def _imagenet_state_dict(weights: str) -> dict[str, torch.Tensor]:
    if weights == "imagenet":
        from torchvision.models import ResNet18_Weights

        try:
            return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # noqa: BLE001 - URLError, socket errors, hash mismatch: all mean "not available"
            raise ConfigError(
                f"cannot fetch torchvision's ImageNet ResNet-18 weights ({type(exc).__name__}); offline, download "
                f"{IMAGENET_FILE} elsewhere and set model.weights=/path/to/{IMAGENET_FILE} (or model.weights=none)"
            ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: no file {path} (use 'imagenet', 'none' or a {IMAGENET_FILE} path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"model.weights: not a readable state_dict ({type(exc).__name__})", path) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise ConfigError("model.weights: not a torchvision ResNet-18 state_dict (no conv1.weight)", path)
    return state


# ----- the model ---------------------------------------------------------------------------------------------------
class CTSSG(nn.Module):
    """(B, D, H, W) preprocessed volume -> (B, n_labels) logits.

    Args:
        n_nodes: D / 3.
        node_spacing_mm: z distance between neighbouring triplet centres (3 x slice spacing).
        Remaining arguments mirror `medml.pipelines.ct.config.CtModel`.
    """

    def __init__(
        self,
        n_nodes: int = 80,
        node_spacing_mm: float = 4.5,
        n_labels: int = 18,
        trunk_blocks=(2, 2, 2, 2),
        weights: str = "none",
        embed_dim: int = 512,
        depth: int = 1,
        operator: str = "cheb",
        K: int = 3,
        window: int = 16,
        edge_weight: str = "inverse_distance",
        norm: str = "graph",
        readout: str = "mean",
        position_embedding: bool = True,
        dropout: float = 0.2,
        head_hidden: int = 256,
        head_dropout: float = 0.5,
        grad_checkpointing: bool = False,
        trunk_chunk: int = 0,
    ):
        super().__init__()
        self.n_nodes, self.readout_mode = n_nodes, readout
        self.grad_checkpointing, self.trunk_chunk = grad_checkpointing, trunk_chunk
        self.trunk = resnet_trunk(trunk_blocks, weights)
        if embed_dim != 512:
            raise ConfigError(f"model.embed_dim {embed_dim}: a BasicBlock ResNet trunk gives 512 features per node")
        self.pos_embed = nn.Parameter(torch.zeros(1, n_nodes, embed_dim)) if position_embedding else None
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.dropout = nn.Dropout(dropout)
        weights_nn = slice_graph(n_nodes, window, node_spacing_mm, edge_weight)
        self.register_buffer("edge_weights", weights_nn.float(), persistent=False)
        op = scaled_laplacian(weights_nn) if operator == "cheb" else gcn_operator(weights_nn)
        self.register_buffer("operator", op.float(), persistent=False)
        self.blocks = nn.ModuleList(GraphBlock(embed_dim, operator, K, dropout, norm) for _ in range(depth))
        self.attention = nn.Linear(embed_dim, 1) if readout == "attention" else None
        self.head = nn.Sequential(
            nn.Linear(embed_dim, head_hidden), nn.ReLU(), nn.Dropout(head_dropout), nn.Linear(head_hidden, n_labels)
        )

    def _trunk(self, images: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self.trunk, images, use_reentrant=False)
        return self.trunk(images)

    def node_features(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) or (B, 1, D, H, W) -> (B, N, C): trunk per triplet, global average pool, position, dropout."""
        if volume.dim() == 5:
            volume = volume[:, 0]
        b = volume.shape[0]
        triplets = slice_triplets(volume)  # (B, N, 3, H, W)
        if triplets.shape[1] != self.n_nodes:
            raise ValueError(f"{triplets.shape[1]} triplets, the model has {self.n_nodes} nodes (depth must be 3 x N)")
        images = triplets.flatten(0, 1)
        chunk = self.trunk_chunk or len(images)
        feats = torch.cat([self._trunk(images[i : i + chunk]).mean(dim=(-2, -1)) for i in range(0, len(images), chunk)])
        h = feats.view(b, self.n_nodes, -1)
        if self.pos_embed is not None:
            h = h + self.pos_embed
        return self.dropout(h)

    def graph(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, self.operator)
        return h

    def readout(self, h: torch.Tensor, node_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, C); ``node_mask`` (B, N) of 0/1 leaves nodes out (used by node occlusion)."""
        if node_mask is None:
            node_mask = h.new_ones(h.shape[:2])
        m = node_mask[..., None]
        if self.readout_mode == "mean":
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.readout_mode == "max":
            return h.masked_fill(m == 0, float("-inf")).amax(1)
        scores = self.attention(h).masked_fill(m == 0, float("-inf"))
        return (torch.softmax(scores, dim=1) * h).sum(1)

    def forward_nodes(self, h: torch.Tensor, node_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Node features -> logits (graph blocks, readout, head)."""
        return self.head(self.readout(self.graph(h), node_mask))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.forward_nodes(self.node_features(volume))

    @torch.no_grad()
    def node_occlusion(self, h: torch.Tensor) -> torch.Tensor:
        """(B, N, C) node features -> (B, N, labels): logit drop when node i is removed from the graph and readout.

        A removed node's features are zeroed before the graph blocks and it is left out of the readout, so both its
        own evidence and what it passes to its neighbours disappear. Costs N passes of the (cheap) graph part only.
        """
        b, n, _ = h.shape
        full = self.forward_nodes(h)  # (B, L)
        keep = 1.0 - torch.eye(n, device=h.device, dtype=h.dtype)  # row i: every node but i
        out = []
        for s in range(b):
            occluded = h[s][None] * keep[..., None]  # (N, N, C)
            out.append(full[s][None] - self.forward_nodes(occluded, keep))  # (N, L)
        return torch.stack(out)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
