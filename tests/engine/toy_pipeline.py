"""A minimal pipeline used to test the engine on its own: noisy linear regression from CSV rows.

It has what the engine must handle for real pipelines (two stages, one of them a ``run`` stage that changes a
buffer, dropout so random state matters, optional BatchNorm), and nothing else.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medml.config import PipelineConfig, StageConfig, Strict, TrainConfig
from medml.engine.data import MedmlDataModule
from medml.errors import DataLayoutError, ReadError
from medml.pipelines.base import MedmlModule, Pipeline
from medml.registry import register_pipeline
from medml.utils.files import atomic_path

N_FEATURES = 6


class ToyModel(Strict):
    hidden: int = 16
    dropout: float = 0.2
    batchnorm: bool = True


class ToyConfig(PipelineConfig):
    model: ToyModel = ToyModel()
    train: TrainConfig = TrainConfig(
        batch_size=8,
        max_epochs=4,
        num_workers=0,
        progress=False,
        monitor="val_loss",
        log_every_n_steps=1,
        optim={"lr": 0.05},
    )
    stages: list[StageConfig] = [StageConfig(name="fit"), StageConfig(name="calibrate", kind="run")]


class ToyModule(MedmlModule):
    def __init__(self, config: ToyConfig):
        super().__init__(config)
        m = config.model
        self.net = nn.Sequential(
            nn.Linear(N_FEATURES, m.hidden),
            nn.BatchNorm1d(m.hidden) if m.batchnorm else nn.Identity(),
            nn.ReLU(),
            nn.Dropout(m.dropout),
            nn.Linear(m.hidden, 1),
        )
        self.register_buffer("offset", torch.zeros(1))
        self.kill_at = os.environ.get("TOY_KILL_AT", "")  # "stage:epoch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1) + self.offset

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), on_epoch=True, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        if self.kill_at == f"{self.stage.name}:{self.current_epoch}":  # a killed job: no clean shutdown
            os._exit(3)

    def run_stage(self, stage, datamodule):
        with self.evaluating():
            x, y = datamodule.val_dataset.tensors
            self.offset += (y - self(x)).mean()
        return {"offset": float(self.offset)}


class ToyData(MedmlDataModule):
    def build_datasets(self):
        rows = np.loadtxt(self.data_dir / "data.csv", delimiter=",", skiprows=1, dtype=np.float32)
        x, y, split = torch.from_numpy(rows[:, :N_FEATURES]), torch.from_numpy(rows[:, N_FEATURES]), rows[:, -1]
        train, val = TensorDataset(x[split == 0], y[split == 0]), TensorDataset(x[split == 1], y[split == 1])
        self.split_summary = {"train": len(train), "val": len(val)}
        return train, val


@dataclass
class ToyCase:
    case_id: str
    kind: str
    paths: list[Path]
    meta: dict = field(default_factory=dict)


@register_pipeline
class ToyPipeline(Pipeline):
    name = "toy"
    summary = "engine test pipeline: linear regression on CSV rows"
    Config = ToyConfig
    input_kinds = ("toy",)
    predict_batch_size = 2

    def check_layout(self, data_dir: Path) -> None:
        if not (data_dir / "data.csv").is_file():
            raise DataLayoutError("missing data.csv", data_dir)

    def datamodule(self, data_dir: Path) -> ToyData:
        return ToyData(data_dir, self.config)

    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(96, N_FEATURES)).astype(np.float32)
        y = x @ np.linspace(-1, 1, N_FEATURES) + 0.5 + 0.05 * rng.normal(size=96)
        split = (np.arange(96) >= 64).astype(int)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "data.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([f"x{i}" for i in range(N_FEATURES)] + ["y", "split"])
            w.writerows([[*map(float, xi), float(yi), int(si)] for xi, yi, si in zip(x, y, split)])
        return out_dir

    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i in range(5):
            (out_dir / f"case{i}.toy").write_text(",".join(map(str, rng.normal(size=N_FEATURES))))
        (out_dir / "broken.toy").write_text("not,numbers")
        return out_dir

    def build_module(self, datamodule) -> MedmlModule:
        return ToyModule(self.config)

    def discover(self, input_dir: Path):
        cases = [ToyCase(p.stem, "toy", [p]) for p in sorted(Path(input_dir).glob("*.toy"))]
        return cases, []

    def load_case(self, case) -> dict[str, Any]:
        try:
            values = [float(v) for v in case.paths[0].read_text().split(",")]
        except ValueError:
            raise ReadError("not a row of numbers", case.paths[0]) from None
        if len(values) != N_FEATURES:
            raise ReadError(f"expected {N_FEATURES} values, found {len(values)}", case.paths[0])
        return {"x": torch.tensor(values)}

    def predict_batch(self, module, samples):
        x = torch.stack([s["x"] for s in samples]).to(next(module.parameters()).device)
        return [{"y": float(v)} for v in module(x)]

    def write_case(self, case, sample, output, out_dir: Path) -> dict[str, Any]:
        with atomic_path(out_dir / "prediction.txt") as tmp:
            tmp.write_text(f"{output['y']:.6f}\n")
        return {"y": output["y"]}

    def evaluate(self, module, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        dm = ToyData(data_dir, self.config)
        dm.setup()
        x, y = dm.val_dataset.tensors
        with module.evaluating():
            mse = float(nn.functional.mse_loss(module(x), y))
        return {"mse": mse}
