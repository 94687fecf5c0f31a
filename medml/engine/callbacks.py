"""Lightning callbacks the engine adds to every fit: exact resume of random state, and EMA of weights."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class RandomStateCallback(L.Callback):
    """Save and restore the Python, NumPy and torch RNG states with each checkpoint.

    Lightning restores weights, optimiser, schedulers and loop counters but not the global RNGs, so dropout and
    random augmentation after ``--resume`` would differ from the uninterrupted run. States are stored as tensors
    and plain lists so the checkpoint still loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _ema_update(decay: float):
    """torch's EMA update for float tensors; integer buffers (BatchNorm's ``num_batches_tracked``) follow the
    live model, since an average of counters truncated to integers would lag behind it."""
    ema = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point():  # AveragedModel groups tensors by dtype
            ema(averaged, current, n_averaged)
        else:
            torch._foreach_copy_(averaged, current)

    return update


class EMAWeights(L.Callback):
    """Exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``), used for validation
    and for the exported model.

    The average starts from the weights at the start of the fit and is updated after every training batch.
    Validation swaps it in and swaps the live weights back afterwards, so checkpoints hold the live weights
    (needed to resume) plus the average's state dict in this callback's state (``"ema"``), which
    ``medml.engine.train`` exports as the stage's result.
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.average: AveragedModel | None = None
        self._resumed: dict[str, torch.Tensor] | None = None  # the average from a checkpoint, until the fit starts
        self._backup: dict[str, torch.Tensor] | None = None

    @property
    def ema(self) -> dict[str, torch.Tensor] | None:
        """The averaged weights as a state dict of the module."""
        return None if self.average is None else self.average.module.state_dict()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A deep copy of the module (Lightning drops the trainer when copying); no gradients ever reach it.
        self.average = AveragedModel(pl_module, multi_avg_fn=_ema_update(self.decay), use_buffers=True)
        self.average.requires_grad_(False)
        self.average.update_parameters(pl_module)  # the first update copies: the average starts at these weights
        if self._resumed is not None:  # Lightning restores callback states before on_fit_start
            self.average.module.load_state_dict(self._resumed)
            self._resumed = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.average.update_parameters(pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.average is not None and not trainer.sanity_checking:
            self._backup = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            pl_module.load_state_dict(self.ema)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._backup is not None:
            pl_module.load_state_dict(self._backup)
            self._backup = None

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "ema": {k: v.detach().cpu() for k, v in (self.ema or {}).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self._resumed = dict(state["ema"]) or None
