"""What training shows on a terminal: one progress bar per stage with an ETA, and no framework chatter."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
from tqdm.auto import tqdm

# Lightning's advice to a developer (workers, eval-mode modules, sanity checks): true, but not the user's business
# in a demo; medml's configs already choose these on purpose.
LIGHTNING_ADVICE = (
    r".*does not have many workers.*",
    r".*module\(s\) in eval mode.*",
    r".*GPU available but not used.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
)


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Silence Lightning's info lines (devices, tips) and deprecation noise of the libraries below medml."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        for message in LIGHTNING_ADVICE:
            warnings.filterwarnings("ignore", message=message)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


class StageProgress(L.Callback):
    """One bar for a whole training stage (every epoch's batches), so its ETA is the stage's, with the epoch,
    the training loss and the monitored score beside it."""

    def __init__(self, label: str, monitor: str | None = None):
        self.label, self.monitor = label, monitor
        self.bar: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:  # one bar per run, not per DDP process
            return
        per_epoch = trainer.num_training_batches
        per_epoch = int(per_epoch) if per_epoch != float("inf") else 0
        name = getattr(pl_module, "pipeline_name", "") or ""
        self.bar = tqdm(
            total=per_epoch * trainer.max_epochs or None,
            initial=per_epoch * trainer.current_epoch,
            desc=f"{name} train {self.label}".strip(),
            unit="batch",
            dynamic_ncols=True,
            leave=True,
        )

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None:
            return
        shown = {"epoch": f"{trainer.current_epoch + 1}/{trainer.max_epochs}"}
        for key, value in trainer.callback_metrics.items():
            if key in ("train_loss", "train_loss_epoch", self.monitor) and value.numel() == 1:
                shown[key.removesuffix("_epoch")] = f"{float(value):.3g}"
        self.bar.set_postfix(shown, refresh=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_exception = on_train_end  # type: ignore[assignment]
