"""ProtoECGNet: three prototype branches over a 12-lead ECG and a linear fusion classifier.

Provenance: Sethi et al., "ProtoECGNet: Case-Based Interpretable Deep Learning for Multi-Label ECG Classification
with Contrastive Learning", MLHC 2025 (arXiv 2504.08713); official code ``bbj-lab/protoecgnet`` (MIT). This file
is written from the engineering brief ``specs/ecg-protoecgnet-and-ct-ssg.md`` part 1 (sections 1.4-1.6), not
copied from that code. The 1D ResNet follows the PTB-XL benchmark's resnet1d layout (GPL-3.0 code, re-implemented
from the description only).

Branches (paper sizes):

* ``rhythm``: 1D ResNet-18 (BasicBlock1D [2, 2, 2, 2], widths 64..512) -> global average pool -> add-on MLP ->
  5 global prototypes per class (16 classes, 80 x 512), cosine similarity.
* ``morphology``: torchvision ResNet-18 on the (1, 12, 1000) lead-by-time image, first convolution 12x7 with
  stride (1, 2), dropout before layer4, no average pool -> (512, 1, 32) map -> 1x1 add-on -> 18 prototypes per class
  (52 classes, 936 x 512 x 1 x 3), scaled cosine over sliding windows of 3 latent steps (about 0.93 s).
* ``global``: the same 2D backbone with 7 prototypes per class (3 classes, 21 x 512 x 1 x 32) covering all 10 s.
* fusion: ``Linear(80 + 936 + 21 = 1037 -> 71, bias=True)`` on the concatenated similarities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34

from medml.errors import CheckpointError, ConfigError

BRANCHES = ("rhythm", "morphology", "global")
PATH_BYTES = 512  # room for a record path stored as UTF-8 bytes in a checkpoint buffer


def encode_path(path: str) -> torch.Tensor:
    """A path as a fixed-length uint8 tensor (checkpoints hold tensors only, loaded with weights_only=True)."""
    raw = str(path).encode("utf-8")[:PATH_BYTES]
    out = torch.zeros(PATH_BYTES, dtype=torch.uint8)
    out[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    return out


def decode_path(row: torch.Tensor) -> str:
    raw = bytes(row.cpu().tolist())
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------------


class BasicBlock1D(nn.Module):
    """ResNet basic block with 1D convolutions (kernel 3), with a 1x1 projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_channels, channels, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv1d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm1d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet1D(nn.Module):
    """1D ResNet over (B, leads, T): stem conv k7/s2 + max-pool, four stages, global average pool -> (B, C)."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 12,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm1d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool1d(3, stride=2, padding=1)
        stages, channels = [], widths[0]
        for i, (blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock1D(channels, width, stride, kernel_size)]
            stage += [BasicBlock1D(width, width, 1, kernel_size) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.forward_map(x)).flatten(1)


class ResNet2D(nn.Module):
    """torchvision ResNet on the single-channel (1, leads, T) ECG image, returning the un-pooled layer4 map.

    conv1 becomes ``Conv2d(1, 64, (leads, 7), stride (1, 2), padding (0, 3))`` so it spans every lead at once and
    height collapses to 1; dropout sits between layer3 and layer4 as in the official backbone. With T=1000 the map
    is (B, 512, 1, 32).
    """

    def __init__(
        self,
        depth: int = 18,
        leads: int = 12,
        dropout: float = 0.35,
        widths: Sequence[int] | None = None,
        imagenet_weights: str | Path | None = None,
    ):
        super().__init__()
        if depth not in (18, 34):
            raise ConfigError(f"config key 'model.depth_2d': {depth} is not 18 or 34")
        narrow = widths is not None and tuple(widths) != (64, 128, 256, 512)
        if narrow and imagenet_weights is not None:
            raise ConfigError("config key 'model.imagenet_weights': ImageNet weights need the standard widths 64..512")
        net = _narrow_resnet(depth, widths) if narrow else (resnet18 if depth == 18 else resnet34)(weights=None)
        if imagenet_weights is not None:
            load_imagenet_weights(net, imagenet_weights, depth)
        first = net.layer1[0].conv1.in_channels
        self.conv1 = nn.Conv2d(1, first, kernel_size=(leads, 7), stride=(1, 2), padding=(0, 3), bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.dropout = nn.Dropout(dropout)
        self.out_channels = net.layer4[-1].conv2.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(self.dropout(x))


def _narrow_resnet(depth: int, widths: Sequence[int]) -> nn.Module:
    """A torchvision ResNet with other stage widths (tiny recipes only: the paper uses 64..512)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    layers = [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3]
    net = ResNet(BasicBlock, layers)
    net.inplanes = widths[0]
    net.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.layer1 = net._make_layer(BasicBlock, widths[0], layers[0])
    net.layer2 = net._make_layer(BasicBlock, widths[1], layers[1], stride=2)
    net.layer3 = net._make_layer(BasicBlock, widths[2], layers[2], stride=2)
    net.layer4 = net._make_layer(BasicBlock, widths[3], layers[3], stride=2)
    return net


IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file name


def imagenet_state_dict(weights: str | Path, depth: int = 18) -> dict[str, torch.Tensor]:
    """ImageNet weights of a torchvision ResNet: ``"imagenet"`` through torchvision's weights API (downloaded once
    into torch's hub cache with its checksum), or a local state dict file. Offline, one line names the config key."""
    if str(weights) == "imagenet":
        from torchvision.models import ResNet18_Weights, ResNet34_Weights

        api = ResNet18_Weights.IMAGENET1K_V1 if depth == 18 else ResNet34_Weights.IMAGENET1K_V1
        try:
            return api.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # noqa: BLE001 - URLError, socket errors, hash mismatch: all mean "not available"
            name = Path(api.url).name
            raise ConfigError(
                f"config key 'model.imagenet_weights': cannot fetch torchvision's ImageNet ResNet-{depth} weights "
                f"({type(exc).__name__}); offline, download {name} elsewhere and set "
                f"model.imagenet_weights=/path/to/{name} (or null for random initialisation)"
            ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError("config key 'model.imagenet_weights': file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling or format problem is the file's fault
        raise CheckpointError(f"not a readable weights file ({type(exc).__name__})", path) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def load_imagenet_weights(net: nn.Module, weights: str | Path, depth: int = 18) -> None:
    """Load ImageNet weights (`imagenet_state_dict`) into ``net``; conv1 and fc are skipped because the ECG model
    replaces them (as in the official backbone, whose conv1 is in effect trained from scratch)."""
    state = imagenet_state_dict(weights, depth)
    keep = {k: v for k, v in state.items() if not k.startswith(("conv1.", "fc."))}
    missing, unexpected = net.load_state_dict(keep, strict=False)
    missing = [k for k in missing if not k.startswith(("conv1.", "fc."))]
    if missing or unexpected:
        raise CheckpointError(
            f"not a ResNet state dict of this depth (missing {missing[:2]}, unexpected {unexpected[:2]})",
            None if str(weights) == "imagenet" else Path(weights),
        )


def prototype_class_identity(num_classes: int, per_class: int) -> torch.Tensor:
    """(P, C) one-hot: prototype j belongs to class j // per_class."""
    identity = torch.zeros(num_classes * per_class, num_classes)
    identity[torch.arange(num_classes * per_class), torch.arange(num_classes * per_class) // per_class] = 1.0
    return identity


def windowed_cosine(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Scaled cosine of every prototype with every time window of a (B, D, 1, W) map (spec 1.6).

    Returns a (B, P, W - T + 1) tensor ``(L / T) * cos(vec(z[..., w:w+T]), vec(p))`` with ``L = int(sqrt(D * T))``;
    flattening is channel-major, time-minor on both sides so a window copied into a prototype matches it exactly.
    """
    length = prototypes.shape[-1]
    depth = z.shape[1]
    windows = z.flatten(2).unfold(2, length, 1)  # (B, D, W', T)
    windows = windows.permute(0, 2, 1, 3).flatten(2)  # (B, W', D*T)
    protos = prototypes.flatten(1)  # (P, D*T)
    cos = torch.einsum("bwk,pk->bpw", F.normalize(windows, dim=-1), F.normalize(protos, dim=-1))
    return cos * (int(math.sqrt(depth * length)) / length)


# ----------------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------------


class PrototypeBranch(nn.Module):
    """One ProtoECGNet branch: backbone -> add-on layers -> class-specific prototypes -> last layer.

    ``forward`` returns ``{"logits": (B, C), "similarity": (B, P)}``; for 2D branches ``"window_similarity"``
    (B, P, W) holds the per-window scores whose mean is the similarity (the official forward pools by mean; the
    projection and the explanations use the best window).
    """

    def __init__(
        self,
        kind: str,
        num_classes: int,
        prototypes_per_class: int,
        prototype_length: int = 1,
        prototype_dim: int = 512,
        depth: int = 18,
        widths: Sequence[int] = (64, 128, 256, 512),
        dropout: float = 0.35,
        leads: int = 12,
        imagenet_weights: str | Path | None = None,
        warmup_head: bool = False,
        signal_length: int = 1000,
        latent_length: int = 32,
    ):
        super().__init__()
        if kind not in ("1d", "2d"):
            raise ValueError(f"branch kind must be '1d' or '2d', not {kind!r}")
        self.kind = kind
        self.num_classes = num_classes
        self.prototypes_per_class = prototypes_per_class
        self.prototype_length = prototype_length
        if kind == "1d":
            layers = (2, 2, 2, 2) if depth == 18 else (3, 4, 6, 3)
            self.backbone: nn.Module = ResNet1D(layers, widths, in_channels=leads)
            feat = self.backbone.out_channels
            self.add_on = nn.Sequential(
                nn.Linear(feat, prototype_dim), nn.ReLU(), nn.Linear(prototype_dim, prototype_dim), nn.Sigmoid()
            )
            shape: tuple[int, ...] = (prototype_dim,)
        else:
            self.backbone = ResNet2D(depth, leads, dropout, widths, imagenet_weights)
            feat = self.backbone.out_channels
            self.add_on = nn.Sequential(
                nn.Conv2d(feat, prototype_dim, 1), nn.ReLU(), nn.Conv2d(prototype_dim, prototype_dim, 1), nn.Sigmoid()
            )
            for m in self.add_on:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            shape = (prototype_dim, 1, prototype_length)
        num_prototypes = num_classes * prototypes_per_class
        self.prototype_vectors = nn.Parameter(torch.randn(num_prototypes, *shape))
        self.register_buffer("prototype_class_identity", prototype_class_identity(num_classes, prototypes_per_class))
        self.last_layer = nn.Linear(num_prototypes, num_classes, bias=False)
        self.reset_last_layer()
        # Optional feature-extractor warm-up head (spec 1.8 "feature_extractor"): built only when a recipe uses it.
        self.warmup_head = nn.Linear(feat, num_classes) if warmup_head else None
        # Where projection put each prototype, kept as buffers so the provenance travels in the checkpoint.
        self.signal_length = signal_length
        self.latent_length = latent_length
        self.segment_length = signal_length if kind == "1d" else self.raw_extent(prototype_length)
        self.register_buffer("projection_ecg_id", torch.full((num_prototypes,), -1, dtype=torch.long))
        self.register_buffer("projection_row", torch.full((num_prototypes,), -1, dtype=torch.long))
        self.register_buffer("projection_start", torch.zeros(num_prototypes, dtype=torch.long))  # raw sample
        self.register_buffer("projection_similarity", torch.full((num_prototypes,), float("nan")))
        self.register_buffer("projection_path", torch.zeros(num_prototypes, PATH_BYTES, dtype=torch.uint8))
        self.register_buffer(
            "projection_segment", torch.zeros(num_prototypes, leads, self.segment_length, dtype=torch.float16)
        )

    @property
    def num_prototypes(self) -> int:
        return self.prototype_vectors.shape[0]

    def raw_extent(self, latent_steps: int) -> int:
        """Raw samples covered by ``latent_steps`` steps of the 2D map (``int(3 * 1000 / 32) = 93`` at paper size)."""
        return int(latent_steps * self.signal_length / self.latent_length)

    def raw_start(self, window: int) -> int:
        """First raw sample of latent window ``window``."""
        return int(window * self.signal_length / self.latent_length)

    def prototype_class(self) -> torch.Tensor:
        """(P,) class index (within the branch) of every prototype."""
        return self.prototype_class_identity.argmax(1)

    def projection_paths(self) -> list[str]:
        """The record path of every projected prototype ('' where none was projected)."""
        return [decode_path(row) for row in self.projection_path]

    def reset_last_layer(self, positive: float = 1.0, negative: float = -0.5) -> None:
        """ProtoPNet initialisation: +1 from a prototype to its own class, -0.5 to every other class."""
        identity = self.prototype_class_identity.t()
        with torch.no_grad():
            self.last_layer.weight.copy_(positive * identity + negative * (1 - identity))

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Add-on features in (0, 1): (B, D) for 1D, (B, D, 1, W) for 2D."""
        if self.kind == "1d":
            return self.add_on(self.backbone(x))
        return self.add_on(self.backbone(x.unsqueeze(1)))

    def similarity_from_latent(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kind == "1d":
            sim = F.normalize(z, dim=-1) @ F.normalize(self.prototype_vectors, dim=-1).t()
            return sim, None
        windows = windowed_cosine(z, self.prototype_vectors)
        return windows.mean(-1), windows

    def warmup_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.warmup_head is None:
            raise RuntimeError("this branch was built without a warm-up head")
        if self.kind == "1d":
            return self.warmup_head(self.backbone(x))
        return self.warmup_head(self.backbone(x.unsqueeze(1)).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (B, leads, T) signal (the branch adds the image channel itself for 2D)."""
        z = self.latent(x)
        sim, windows = self.similarity_from_latent(z)
        out = {"logits": self.last_layer(sim), "similarity": sim}
        if windows is not None:
            out["window_similarity"] = windows
        return out


class ProtoECGNet(nn.Module):
    """The three branches and the fusion classifier over all labels.

    Args:
        branch_labels: for each branch name, the indices (into the fused label vector) of its classes, in order.
        num_labels: fused output width (71 for PTB-XL 'all').
        branch_kwargs: keyword arguments of each `PrototypeBranch`.
    """

    def __init__(self, branch_labels: dict[str, Sequence[int]], num_labels: int, branch_kwargs: dict[str, dict]):
        super().__init__()
        self.branch_names = tuple(name for name in BRANCHES if name in branch_labels)
        self.branches = nn.ModuleDict(
            {
                name: PrototypeBranch(num_classes=len(branch_labels[name]), **branch_kwargs[name])
                for name in self.branch_names
            }
        )
        for name in self.branch_names:
            self.register_buffer(f"label_index_{name}", torch.as_tensor(list(branch_labels[name]), dtype=torch.long))
        width = sum(b.num_prototypes for b in self.branches.values())
        self.fusion = nn.Linear(width, num_labels, bias=True)

    def label_index(self, name: str) -> torch.Tensor:
        return getattr(self, f"label_index_{name}")

    def forward(self, x: torch.Tensor, branches: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Run ``branches`` (default all) on ``x`` (B, 12, T); fused logits only when every branch ran."""
        names = self.branch_names if branches is None else tuple(branches)
        out: dict[str, torch.Tensor] = {}
        for name in names:
            for key, value in self.branches[name](x).items():
                out[f"{name}/{key}"] = value
        if names == self.branch_names:
            similarities = torch.cat([out[f"{n}/similarity"] for n in self.branch_names], dim=1)
            out["similarity"] = similarities
            out["logits"] = self.fusion(similarities)
        return out
