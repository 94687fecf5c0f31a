"""Train the toy pipeline from a subprocess (plain or under torchrun): ``run_toy.py DATA RUN [--resume] [k=v ...]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medml.config import load_config  # noqa: E402
from medml.engine.train import train  # noqa: E402
from tests.engine.toy_pipeline import ToyPipeline  # noqa: E402

if __name__ == "__main__":
    data, run, *rest = sys.argv[1:]
    resume = "--resume" in rest
    overrides = [r for r in rest if r != "--resume"]
    # like the CLI: a resume without overrides uses the run's own config
    source = Path(run) / "config.yaml" if resume and not overrides else None
    train(ToyPipeline(load_config(ToyPipeline.Config, source, overrides)), Path(data), Path(run), resume=resume)
