"""The ``medml`` command: help, list, info, and one-line errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tests.engine.toy_pipeline  # noqa: F401  (registers the toy pipeline in this process)
from medml.cli import main
from medml.registry import get_pipeline, list_pipelines

REPO = Path(__file__).resolve().parents[1]


def test_entry_point_lists_pipelines_without_importing_torch():
    """The one test through a real interpreter: ``python -m medml`` works, and ``list`` imports no pipeline."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "medml", "list"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert names == sorted(n for n in list_pipelines() if n != "toy")  # every built-in pipeline, one line each
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "medml.cli" in imported
    assert not {"torch", "lightning", "monai"} & imported


def test_help_list_info(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    helped = capsys.readouterr().out
    for verb in ("list", "info", "inspect", "convert", "prepare", "train", "predict", "evaluate", "demo"):
        assert verb in helped
    assert main(["list"]) == 0
    listed = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines() if line.strip())
    assert list(listed) == list_pipelines()  # the built-ins and the toy registered here
    for name, summary in listed.items():
        assert summary == get_pipeline(name).summary
    assert main(["info"]) == 0
    info = capsys.readouterr().out
    for word in ("torch", "monai", "cuda", "openjpeg", "dciodvfy"):
        assert word in info


def _one_line_error(capsys, argv, *expected):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("medml: error:")
    for text in expected:
        assert text in err
    return err


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("model.no_such_key=1", "model.no_such_key"),
        ("train.batch_size=-1", "train.batch_size"),
        ("train.optim.lr=-3", "train.optim.lr"),
        ("train.seed=" + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ],
)
def test_bad_set_is_a_one_line_error(capsys, toy_data, tmp_path, override, key):
    argv = ["train", "toy", "--data", str(toy_data), "--out", str(tmp_path / "r"), "--set", override]
    _one_line_error(capsys, argv, key)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_missing_data_unknown_pipeline_missing_recipe(capsys, tmp_path):
    _one_line_error(
        capsys,
        ["train", "toy", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
        "data folder not found",
        "nope",
    )
    _one_line_error(
        capsys, ["train", "nosuch", "--data", str(tmp_path), "--out", str(tmp_path / "r")], "unknown pipeline 'nosuch'"
    )
    _one_line_error(
        capsys,
        ["train", "toy", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config", "nosuchrecipe"],
        "no recipe 'nosuchrecipe'",
    )
    _one_line_error(
        capsys,
        [
            "predict",
            "toy",
            "--input",
            str(tmp_path),
            "--checkpoint",
            str(tmp_path / "x.ckpt"),
            "--output",
            str(tmp_path / "o"),
        ],
        "checkpoint file not found",
    )


def test_cli_train_predict_evaluate_roundtrip(capsys, toy_data, tmp_path):
    assert (
        main(["train", "toy", "--data", str(toy_data), "--out", str(tmp_path / "run"), "--set", "train.max_epochs=2"])
        == 0
    )
    clinical = tests.engine.toy_pipeline.ToyPipeline().synthesize_clinical(tmp_path / "in")
    assert (
        main(
            [
                "predict",
                "toy",
                "--input",
                str(clinical),
                "--checkpoint",
                str(tmp_path / "run" / "model.ckpt"),
                "--output",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    assert "5 predicted" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                "toy",
                "--data",
                str(toy_data),
                "--checkpoint",
                str(tmp_path / "run" / "model.ckpt"),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    assert (tmp_path / "eval" / "run.json").is_file()


@pytest.mark.parametrize("name", [n for n in list_pipelines() if n != "toy"])
def test_every_pipeline_rejects_a_bad_set_in_one_line(capsys, name, tmp_path):
    argv = ["train", name, "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "train.seed=x"]
    _one_line_error(capsys, argv, "train.seed")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_stage_checkpoint_is_refused_naming_the_runs_model(capsys, toy_run, toy_data, tmp_path, command):
    """The toy run has two stages (fit, then a run stage that calibrates): its fit checkpoint is not its model."""
    stage_ckpt = toy_run.run_dir / "stages" / "00-fit" / "checkpoints" / "last.ckpt"
    where = ["--input", str(toy_data), "--output"] if command == "predict" else ["--data", str(toy_data), "--out"]
    argv = [command, "toy", "--checkpoint", str(stage_ckpt), *where, str(tmp_path / "out")]
    _one_line_error(capsys, argv, "not a finished run's model", "stage 'fit'", str(toy_run.run_dir / "model.ckpt"))
    assert not (tmp_path / "out").exists()


def test_a_model_ckpt_from_before_the_final_marker_is_still_accepted(capsys, toy_run, toy_data, tmp_path):
    old = torch.load(toy_run.checkpoint, weights_only=True)
    assert old["medml"].pop("final") is True
    torch.save(old, tmp_path / "model.ckpt")
    argv = ["evaluate", "toy", "--data", str(toy_data), "--checkpoint", str(tmp_path / "model.ckpt")]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 0
    lightning = torch.load(toy_run.run_dir / "stages" / "00-fit" / "checkpoints" / "last.ckpt", weights_only=True)
    del lightning["medml"]["final"]
    torch.save(lightning, tmp_path / "last.ckpt")
    _one_line_error(capsys, [*argv[:-1], str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "e2")], "finished run")


def _usage_error(capsys, argv, *expected):
    """argparse's own errors are one line too (exit 2), not a usage block."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("medml: error:")
    for text in expected:
        assert text in err


def test_usage_errors_are_one_line(capsys):
    _usage_error(capsys, ["predict"], "required", "--input")
    _usage_error(capsys, ["inspect", ".", "--max-case-bytes", "12Q"], "--max-case-bytes", "12Q")
    _usage_error(capsys, ["inspect", ".", "--max-case-bytes=0"], "positive")
    _usage_error(capsys, ["frobnicate"], "invalid choice")


def test_device_that_is_not_there_is_a_one_line_error(capsys, toy_run, tmp_path):
    n = torch.cuda.device_count()
    for device in (f"cuda:{n + 7}", "warp-drive"):
        _one_line_error(
            capsys,
            ["predict", "toy", "--input", str(tmp_path), "--checkpoint", str(toy_run.checkpoint)]
            + ["--output", str(tmp_path / "out"), "--device", device],
            device,
        )
    assert not (tmp_path / "out").exists()


def test_max_case_bytes_refuses_a_large_case_and_is_reset_after(capsys, tmp_path):
    from PIL import Image

    from medml.io import memory_budget

    Image.new("L", (512, 512)).save(tmp_path / "big.png")
    default = memory_budget()
    assert main(["inspect", str(tmp_path / "big.png"), "--max-case-bytes", "64K"]) == 0  # inspect reports, exit 0
    assert "above the budget of 65.5 kB" in capsys.readouterr().out
    assert memory_budget() == default
    assert main(["inspect", str(tmp_path / "big.png"), "--max-case-bytes", "1G"]) == 0
    assert "budget" not in capsys.readouterr().out.lower()


def test_trackers_off_by_default_and_a_missing_one_is_one_line(capsys, toy_data, tmp_path, monkeypatch):
    from medml.engine.train import tracker_loggers

    cfg = tests.engine.toy_pipeline.ToyConfig().train
    assert cfg.trackers == [] and tracker_loggers(cfg, tmp_path, "fit") == []
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed, whatever this machine has
    argv = ["train", "toy", "--data", str(toy_data), "--out", str(tmp_path / "r"), "--set", "train.trackers=[wandb]"]
    _one_line_error(capsys, argv, "train.trackers", "wandb is enabled but", "pip install")
    assert not (tmp_path / "r").exists()


def test_auto_accelerator_prefers_cuda_then_mps(monkeypatch):
    from medml.engine import train as engine_train

    cfg = tests.engine.toy_pipeline.ToyConfig().train
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert engine_train.resolve_devices(cfg)["accelerator"] == "mps"
    assert engine_train.resolve_precision(cfg, "mps") == "32-true"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert engine_train.resolve_devices(cfg)["accelerator"] == "cpu"


def test_log_files_and_quiet(capsys, toy_run, tmp_path):
    clinical = tests.engine.toy_pipeline.ToyPipeline().synthesize_clinical(tmp_path / "in")
    out = tmp_path / "pred"
    argv = ["predict", "toy", "-q", "--input", str(clinical), "--checkpoint", str(toy_run.checkpoint)]
    assert main([*argv, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "5 predicted" in captured.out and captured.err == ""  # -q: no progress bar, no messages
    log = (out / "predict.log").read_text()
    assert "medml predict toy" in log and "5 predicted" in log
    # a refused command leaves no folder and no log behind
    assert (
        main(
            [
                "predict",
                "toy",
                "--input",
                str(clinical),
                "--checkpoint",
                str(toy_run.checkpoint),
                "--output",
                str(clinical / "inside"),
            ]
        )
        == 2
    )
    assert not (clinical / "inside").exists()
