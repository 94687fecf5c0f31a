"""Lightning callbacks the engine adds to every fit: exact resume of random state, and EMA of weights."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


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


class EMAWeights(L.Callback):
    """Exponential moving average of the weights, used for validation and for the exported model.

    The average is kept in float32 beside the live weights; validation swaps it in and swaps the live weights
    back afterwards, so checkpoints hold the live weights (needed to resume) plus the average in this callback's
    state. ``medml.engine.train`` exports the average as the stage's result.
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is None:
            self.ema = {
                k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                for k, v in pl_module.state_dict().items()
            }
        else:
            self.ema = {k: v.to(pl_module.device) for k, v in self.ema.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for key, value in pl_module.state_dict().items():
            avg = self.ema[key]
            if avg.is_floating_point():
                avg.lerp_(value.float(), 1.0 - self.decay)
            else:
                avg.copy_(value)

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        self._backup = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(self.ema)

    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._backup is not None:
            pl_module.load_state_dict(self._backup)
            self._backup = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.ema is not None and not trainer.sanity_checking:
            self._swap_in(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._swap_out(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "ema": {k: v.detach().cpu() for k, v in (self.ema or {}).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.ema = dict(state["ema"]) or None
