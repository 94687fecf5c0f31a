"""The training engine: run folder contents, stages, resume after a kill, DDP equivalence, EMA."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medml.config import StageConfig, load_config
from medml.engine.callbacks import EMAWeights
from medml.engine.train import train
from medml.errors import ConfigError
from tests.engine.toy_pipeline import ToyModule, ToyPipeline

RUN_TOY = Path(__file__).with_name("run_toy.py")
REPO = Path(__file__).resolve().parents[2]


def test_run_folder_holds_config_metrics_checkpoints_and_record(toy_run):
    run = toy_run.run_dir
    for name in ("config.yaml", "run.json", "metrics.csv", "model.ckpt"):
        assert (run / name).is_file(), name
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 42 and record["pipeline"] == "toy"
    assert len(record["data_fingerprint"]) == 64
    assert record["split"] == {"train": 64, "val": 32}
    assert record["versions"]["torch"] and record["versions"]["monai"]
    assert record["final_metrics"]["val_loss"] < 1.0  # it learned: the target variance is ~1.4
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["stage"] for r in rows} == {"fit"}
    assert all(r["val_loss"] and r["train_loss"] for r in rows)  # train and val joined per epoch
    assert len(rows) == 4
    # the run stage ran after fit and its effect is in the exported weights
    done = json.loads((run / "stages" / "01-calibrate" / "done.json").read_text())
    exported = torch.load(run / "model.ckpt", weights_only=True)["state_dict"]["offset"]
    assert float(exported) == pytest.approx(done["result"]["offset"])


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(toy_run, toy_data, tmp_path):
    with pytest.raises(ConfigError, match="--resume"):
        train(ToyPipeline(), toy_data, toy_run.run_dir)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(ToyPipeline(), toy_data, tmp_path / "fresh", resume=True)
    with pytest.raises(ConfigError, match="data folder not found"):
        train(ToyPipeline(), tmp_path / "missing", tmp_path / "run")


def _run_toy(data, run, *args, env_extra=None, launcher=None):
    env = {**os.environ, **(env_extra or {})}
    cmd = [*(launcher or [sys.executable]), str(RUN_TOY), str(data), str(run), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)


def _final(run: Path):
    state = torch.load(run / "model.ckpt", weights_only=True)["state_dict"]
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return state, [float(r["val_loss"]) for r in rows]


@pytest.mark.parametrize(
    "kill_at, overrides",
    [
        # inside a stage: continues from its last.ckpt, with the EMA and the warm-up-then-cosine schedule restored
        ("fit:2", ["train.ema_decay=0.9", "train.optim.warmup_epochs=1.5"]),
        # between stages: the next stage starts from the finished one's end state
        ("tune:0", ["stages=[{name: fit, epochs: 2}, {name: tune, epochs: 2, trainable: [net.4]}]"]),
    ],
    ids=["within-stage", "stage-boundary"],
)
def test_resume_after_kill_reproduces_uninterrupted_run(toy_data, tmp_path, kill_at, overrides):
    plain = _run_toy(toy_data, tmp_path / "plain", *overrides)
    assert plain.returncode == 0, plain.stderr[-2000:]
    killed = _run_toy(toy_data, tmp_path / "resumed", *overrides, env_extra={"TOY_KILL_AT": kill_at})
    assert killed.returncode == 3  # died mid-run
    assert not (tmp_path / "resumed" / "model.ckpt").exists()
    resumed = _run_toy(toy_data, tmp_path / "resumed", *overrides, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state_a, losses_a = _final(tmp_path / "plain")
    state_b, losses_b = _final(tmp_path / "resumed")
    assert losses_b == pytest.approx(losses_a, rel=1e-5)
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=1e-5, atol=1e-6)
    record = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert len(record["resumed"]) == 1 and record["finished"]


def test_resume_refuses_a_changed_config(toy_run, toy_data):
    cfg = load_config(ToyPipeline.Config, None, ["model.hidden=32"])
    with pytest.raises(ConfigError, match="'model.hidden' is 32 but the run being resumed used 16"):
        train(ToyPipeline(cfg), toy_data, toy_run.run_dir, resume=True)


@pytest.mark.parametrize("launcher", ["torchrun", "lightning"])
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(toy_data, tmp_path, launcher):
    # SyncBatchNorm needs CUDA, so the CPU check uses no BatchNorm; dropout off so both runs draw no randomness.
    # Two fit stages: each stage builds its own Trainer inside the already-launched processes.
    common = [
        "model.dropout=0",
        "model.batchnorm=false",
        "train.max_epochs=2",
        "train.accelerator=cpu",
        "stages=[{name: all}, {name: head, trainable: [net.4]}]",
    ]
    single = _run_toy(toy_data, tmp_path / "single", *common, "train.batch_size=8")
    assert single.returncode == 0, single.stderr[-2000:]
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        ddp = _run_toy(toy_data, tmp_path / "ddp", *common, "train.batch_size=4", launcher=torchrun)
    else:  # `medml train ... --set train.devices=2`: Lightning starts the second process itself
        ddp = _run_toy(toy_data, tmp_path / "ddp", *common, "train.batch_size=4", "train.devices=2")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    record = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert record["devices"]["devices"] == 2 and record["devices"]["strategy"] == "ddp"
    state_1, losses_1 = _final(tmp_path / "single")
    state_2, losses_2 = _final(tmp_path / "ddp")
    assert losses_2 == pytest.approx(losses_1, rel=1e-4)
    for key in state_1:
        torch.testing.assert_close(state_2[key], state_1[key], rtol=1e-4, atol=1e-5)
    torch.manual_seed(42)  # the engine's seed, so this is the runs' initial model
    initial = ToyPipeline(load_config(ToyPipeline.Config, None, ["model.batchnorm=false"])).build_module(None)
    assert not torch.allclose(state_1["net.0.weight"], initial.net[0].weight)  # training moved the weights


def test_ema_callback_tracks_the_moving_average(toy_data, tmp_path):
    cfg = load_config(ToyPipeline.Config, None, ["train.ema_decay=0.9", "train.max_epochs=1"])
    result = train(ToyPipeline(cfg), toy_data, tmp_path / "ema")
    ckpt = torch.load(
        next((tmp_path / "ema" / "stages" / "00-fit" / "checkpoints").glob("last.ckpt")), weights_only=True
    )
    ema_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMAWeights"))["ema"]
    live = ckpt["state_dict"]["net.0.weight"]
    assert not torch.allclose(ema_state["net.0.weight"], live)  # the average lags the live weights
    exported = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    torch.testing.assert_close(exported["net.0.weight"], ema_state["net.0.weight"])


def test_ema_starts_at_the_fit_start_weights_and_follows_each_batch():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    start = {k: v.clone() for k, v in module.state_dict().items()}
    cb = EMAWeights(0.5)
    cb.on_fit_start(None, module)
    module.train()(torch.randn(4, 2))  # moves the BatchNorm statistics and counts a batch
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    cb.on_train_batch_end(None, module, None, None, 0)
    for k, v in module.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(cb.ema[k], 0.5 * start[k] + 0.5 * v)
        else:  # counters follow the live model
            assert int(cb.ema[k]) == int(v) == 1
    restored = EMAWeights(0.9)
    restored.load_state_dict(cb.state_dict())
    restored.on_fit_start(None, module)  # as on --resume: the saved average, not the live weights
    assert restored.decay == 0.5
    for k, v in cb.ema.items():
        torch.testing.assert_close(restored.ema[k], v)


@pytest.fixture(autouse=True)
def _no_leftover_runs(tmp_path):
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_stage_that_trains_nothing_is_a_config_error(toy_data, tmp_path):
    cfg = load_config(ToyPipeline.Config, None, ["stages=[{name: head, trainable: [no_such_module]}]"])
    with pytest.raises(ConfigError, match="stage 'head' trains nothing"):
        train(ToyPipeline(cfg), toy_data, tmp_path / "run")


def test_early_stopping_ends_a_stage_that_stops_improving(toy_data, tmp_path):
    # lr 1e-30 (an lr must be > 0) leaves float32 weights as they are: the validation loss never improves, so
    # patience 2 stops the stage after 3 of its 20 epochs
    cfg = load_config(
        ToyPipeline.Config, None, ["train.optim.lr=1e-30", "train.max_epochs=20", "train.patience=2", "model.dropout=0"]
    )
    train(ToyPipeline(cfg), toy_data, tmp_path / "run")
    done = json.loads((tmp_path / "run" / "stages" / "00-fit" / "done.json").read_text())
    assert done["epochs_run"] == 3


def test_trainable_parameters_follow_the_modules_trainable_prefixes_hook():
    """A pipeline can derive what a stage trains from what the stage says, not from prefixes in the recipe."""

    class HeadStage(StageConfig):
        head_only: bool = False

    class DerivingModule(ToyModule):
        def trainable_prefixes(self, stage):
            return ["net.4"] if getattr(stage, "head_only", False) else super().trainable_prefixes(stage)

    module = DerivingModule(ToyPipeline.Config())
    module.start_stage(HeadStage(name="head", head_only=True))
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {"net.4.weight", "net.4.bias"}
    module.start_stage(HeadStage(name="all"))  # the default: stage.trainable, empty = everything
    assert all(p.requires_grad for p in module.parameters())
    module.start_stage(HeadStage(name="bn", trainable=["net.1"]))
    assert {n for n, _ in module.stage_parameters(module.stage)} == {"net.1.weight", "net.1.bias"}
