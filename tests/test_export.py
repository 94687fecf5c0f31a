"""``medml export`` / ``push`` and checkpoints named by a file, a URL or a hub id: same model, same predictions.

Nothing here touches the network: the URL is a local ``http.server`` thread, the hub is ``huggingface_hub`` in
offline mode over a cache built in tmp, and ``push`` talks to a fake ``HfApi``.
"""

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
from safetensors import safe_open

from medml.cli import main
from medml.engine.checkpoint import load_checkpoint
from medml.engine.predict import model_fingerprint
from medml.errors import CheckpointError
from medml.hub import fetch_url, sha256_file

CASES = ("wfdb_normal", "wfdb_afib")


@pytest.fixture(scope="module")
def ecg(tiny_demo):
    return tiny_demo("ecg")


@pytest.fixture(scope="module")
def exported(ecg, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "ecg.safetensors"
    assert main(["export", str(ecg.run_dir), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def two_cases(ecg, tmp_path_factory):
    """Two of the demo's clinical ECGs: their probabilities from model.ckpt are in the demo's predictions."""
    folder = tmp_path_factory.mktemp("ecg-in")
    for case in CASES:
        for path in ecg.clinical_dir.glob(case + ".*"):
            shutil.copy(path, folder)
    return folder


def _probabilities(pred_dir: Path) -> dict[str, str]:
    return {case: (pred_dir / case / "probabilities.csv").read_text() for case in CASES}


def test_export_is_one_pickle_free_file_with_card(ecg, exported):
    with open(exported, "rb") as fh:
        head = fh.read(4)
    assert head[:2] != b"PK" and b"\x80" not in head[:1]  # neither a torch zip nor a pickle
    with safe_open(str(exported), framework="pt") as fh:
        meta = fh.metadata()
        n_tensors = len(list(fh.keys()))
    record, card = json.loads(meta["medml"]), json.loads(meta["card"])
    assert record["pipeline"] == "ecg" and record["final"] is True
    assert card["labels"] == record["config"]["model"]["labels"] and len(card["labels"]) == 71
    assert card["preprocessing"]["sampling_rate"] == 100
    run = json.loads((ecg.run_dir / "run.json").read_text())
    assert card["training"]["data_fingerprint"] == run["data_fingerprint"]
    # the demo's `medml evaluate` of this run (a folder beside it) is found and its metrics carried
    evaluation = json.loads((ecg.eval_dir / "run.json").read_text())
    assert [e["metrics"] for e in card["evaluations"]] == [evaluation["metrics"]]
    assert run["data_fingerprint"] in meta["model_card"]
    assert n_tensors > 10
    assert (exported.parent / "ecg.safetensors.sha256").read_text().split()[0] == sha256_file(exported)
    _, from_ckpt = load_checkpoint(ecg.checkpoint)
    _, from_export = load_checkpoint(exported)
    assert model_fingerprint(from_export) == model_fingerprint(from_ckpt)


def test_predict_with_exported_file_matches_model_ckpt(ecg, exported, two_cases, tmp_path, capsys):
    argv = ["predict", "ecg", "--input", str(two_cases), "--checkpoint", str(exported), "--output", str(tmp_path)]
    assert main(argv) == 0
    assert "2 predicted" in capsys.readouterr().out
    assert _probabilities(tmp_path) == _probabilities(ecg.pred_dir)
    assert (tmp_path / "predict.log").read_text().count("2 predicted") == 1


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def served(exported, monkeypatch):
    """The export folder on a local HTTP server (the model and its .sha256 sidecar)."""
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=exported.parent))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/{exported.name}"
    server.shutdown()
    server.server_close()  # twice is harmless


def test_predict_from_a_url_downloads_once_checks_the_sum(ecg, exported, two_cases, served, tmp_path, capsys):
    server, url = served
    out = tmp_path / "pred"
    assert main(["predict", "ecg", "--input", str(two_cases), "--checkpoint", url, "--output", str(out)]) == 0
    assert _probabilities(out) == _probabilities(ecg.pred_dir)
    record = json.loads((out / "run.json").read_text())
    assert record["checkpoint_sha256"] == sha256_file(exported)

    # A wrong checksum is refused in one line; the right one uses the cache, even with the server gone.
    capsys.readouterr()
    bad = url + "#sha256=" + "0" * 64
    code = main(["evaluate", "ecg", "--data", str(ecg.data_dir), "--checkpoint", bad, "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "sha256" in err
    server.shutdown()
    server.server_close()
    _, module = load_checkpoint(url + "#sha256=" + sha256_file(exported))
    assert model_fingerprint(module) == model_fingerprint(load_checkpoint(exported)[1])
    gone = url.replace(exported.name, "other.safetensors")
    code = main(["predict", "ecg", "--input", str(two_cases), "--checkpoint", gone, "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "local file" in err


def test_hub_id_from_the_offline_cache(ecg, exported, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    commit = "a" * 40
    snapshot = hub / "models--medml-test--ecg-tiny" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(exported, snapshot / "model.safetensors")
    (hub / "models--medml-test--ecg-tiny" / "refs").mkdir()
    (hub / "models--medml-test--ecg-tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))

    _, module = load_checkpoint("hf://medml-test/ecg-tiny", expect_pipeline="ecg")
    assert model_fingerprint(module) == model_fingerprint(load_checkpoint(exported)[1])
    _, module = load_checkpoint(f"hf://medml-test/ecg-tiny/model.safetensors#sha256={sha256_file(exported)}")
    with pytest.raises(CheckpointError, match="local hub cache"):
        load_checkpoint("hf://medml-test/absent")


def test_push_uploads_model_sidecar_and_card(ecg, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, **kwargs):
            calls.append(("create", kwargs))

        def upload_folder(self, folder_path, **kwargs):
            calls.append(("upload", sorted(p.name for p in Path(folder_path).iterdir()), kwargs))
            calls.append(("readme", (Path(folder_path) / "README.md").read_text()))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["push", str(ecg.run_dir), "medml-test/ecg-tiny", "--private"]) == 0
    assert "hf://medml-test/ecg-tiny" in capsys.readouterr().out
    create = next(c for c in calls if c[0] == "create")[1]
    assert create["repo_id"] == "medml-test/ecg-tiny" and create["private"] is True
    upload = next(c for c in calls if c[0] == "upload")
    assert {"model.safetensors", "model.safetensors.sha256", "README.md"} <= set(upload[1])
    readme = next(c for c in calls if c[0] == "readme")[1]
    assert "library_name: medml" in readme and "## Evaluation" in readme


def test_export_refuses_what_is_not_a_finished_run(ecg, tmp_path, capsys):
    stage_ckpt = next((ecg.run_dir / "stages").glob("*/checkpoints/last.ckpt"))
    code = main(["export", str(stage_ckpt), str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "model.ckpt" in err and not (tmp_path / "x.safetensors").exists()
    assert main(["export", str(tmp_path), str(tmp_path / "y.safetensors")]) == 2
    assert "no model.ckpt" in capsys.readouterr().err


def test_plain_http_is_refused_unless_from_this_machine():
    with pytest.raises(CheckpointError, match="use https://"):
        fetch_url("http://models.example.org/model.safetensors")  # refused before any connection is made
