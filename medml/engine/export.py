"""``medml export`` and ``medml push``: one self-contained, pickle-free model file, and publishing it to the hub.

The file is a safetensors file: the weights (and buffers) as tensors, and in its string metadata

* ``medml``: the checkpoint record (`checkpoint_meta`: pipeline, the resolved config, which holds the labels and
  the preprocessing, the medml version, ``final``), the same record ``model.ckpt`` carries;
* ``card``: JSON model card: the training data fingerprint, split (and fold), seed, training metrics, the metrics of
  every ``medml evaluate`` of this run found, versions, the source checkpoint's sha256;
* ``model_card``: the same card as Markdown (the hub's ``README.md``).

`medml.engine.checkpoint.read_checkpoint` recognises the file by its bytes, so ``predict``, ``evaluate`` and
`medml.load` take it wherever they take a ``model.ckpt``. Beside it goes ``OUT.sha256``, the checksum a download
from a URL is verified against.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from medml.engine.checkpoint import _not_final_error, is_final, read_checkpoint
from medml.engine.record import now
from medml.errors import ConfigError
from medml.hub import sha256_file
from medml.utils.files import atomic_path, write_text

MODEL_FILE = "model.safetensors"


def _run_checkpoint(run: Path) -> tuple[Path, Path | None]:
    """(model file, run folder or None) for ``RUN`` given as a run folder or a checkpoint file."""
    if run.is_dir():
        if not (run / "model.ckpt").is_file():
            raise ConfigError("no model.ckpt here: a run folder is exported once its training has finished", run)
        return run / "model.ckpt", run
    if not run.is_file():
        raise ConfigError("run folder or checkpoint not found", run)
    parent = run.parent
    return run, parent if (parent / "run.json").is_file() else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_evaluations(checkpoint: Path, run_dir: Path | None, extra: list[Path] | None = None) -> list[dict[str, Any]]:
    """``medml evaluate`` records of this checkpoint: folders given, and those inside or beside the run folder
    whose ``run.json`` names this checkpoint."""
    candidates = list(extra or [])
    if run_dir is not None:
        candidates += sorted(p.parent for p in run_dir.glob("*/run.json"))
        candidates += sorted(p.parent for p in run_dir.parent.glob("*/run.json") if p.parent != run_dir)
    found, target = [], checkpoint.resolve()
    for folder in dict.fromkeys(candidates):
        record = _read_json(folder / "run.json")
        if not record or record.get("kind") != "evaluate" or not isinstance(record.get("metrics"), dict):
            continue
        named = Path(str(record.get("checkpoint", "")))
        if folder not in (extra or []) and named.resolve() != target:
            continue
        found.append(
            {
                "split": record.get("split"),
                "metrics": record["metrics"],
                "data_fingerprint": record.get("data_fingerprint"),
                "finished": record.get("finished"),
            }
        )
    return found


def build_card(meta: dict[str, Any], checkpoint: Path, run_dir: Path | None, evaluations: list[dict]) -> dict:
    record = _read_json(run_dir / "run.json") if run_dir else None
    record = record or {}
    config = meta.get("config", {})
    labels = (config.get("model") or {}).get("labels") if isinstance(config.get("model"), dict) else None
    return {
        "pipeline": meta["pipeline"],
        "medml_version": meta.get("medml_version"),
        "exported": now(),
        "source_checkpoint_sha256": sha256_file(checkpoint),
        "labels": labels,
        "preprocessing": config.get("data"),
        "training": {
            "data_fingerprint": record.get("data_fingerprint"),
            "split": record.get("split"),
            "fold": record.get("fold"),
            "seed": record.get("seed"),
            "stages": record.get("stages"),
            "finished": record.get("finished"),
            "git_commit": record.get("git_commit"),
            "versions": record.get("versions"),
            "final_metrics": record.get("final_metrics"),
        },
        "evaluations": evaluations,
    }


def card_markdown(card: dict[str, Any], summary: str | None = None) -> str:
    """The card as the hub's README.md: what the model is, what it was trained on, how it scored."""
    lines = [
        "---",
        "library_name: medml",
        "tags: [medml, medical-imaging, " + card["pipeline"] + "]",
        "---",
        f"# medml `{card['pipeline']}` model",
        "",
        summary or "",
        "",
        "```bash",
        f"medml predict {card['pipeline']} --input DIR --checkpoint hf://ORG/REPO --output OUT",
        "```",
        "",
        f"- medml version: {card.get('medml_version')}",
        f"- training data fingerprint: `{card['training'].get('data_fingerprint')}`",
        f"- fold: {card['training'].get('fold')}, seed: {card['training'].get('seed')}",
        f"- labels: {len(card['labels']) if card.get('labels') else 'n/a'}",
        "",
        "## Evaluation",
        "",
    ]
    if not card["evaluations"]:
        lines.append("No `medml evaluate` record was found for this model.")
    for ev in card["evaluations"]:
        lines.append(f"### split `{ev.get('split')}` (data `{str(ev.get('data_fingerprint'))[:12]}`)")
        lines.append("")
        lines += [f"- {k}: {v}" for k, v in ev["metrics"].items() if isinstance(v, int | float | str)]
        lines.append("")
    return "\n".join(lines) + "\n"


def export_model(run: str | Path, out: str | Path, evaluations: list[str | Path] | None = None) -> Path:
    """Write ``run``'s final model as one safetensors file at ``out`` (a folder gets ``model.safetensors``)."""
    from safetensors.torch import save_file

    from medml.registry import get_pipeline

    checkpoint, run_dir = _run_checkpoint(Path(run))
    ckpt = read_checkpoint(checkpoint)
    if not is_final(ckpt):
        raise _not_final_error(checkpoint, ckpt)
    meta = {**ckpt["medml"], "final": True}
    extra = [Path(e) for e in evaluations or []]
    for folder in extra:
        if not (folder / "run.json").is_file():
            raise ConfigError("not a medml evaluate folder (no run.json)", folder)
    card = build_card(meta, checkpoint, run_dir, find_evaluations(checkpoint, run_dir, extra))
    summary = getattr(get_pipeline(meta["pipeline"]), "summary", None)
    out = Path(out)
    if out.is_dir() or out.suffix == "":
        out = out / MODEL_FILE
    # safetensors refuses tensors that share memory; own contiguous copies have none.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    metadata = {
        "format": "medml",
        "medml": json.dumps(meta),
        "card": json.dumps(card, default=str),
        "model_card": card_markdown(card, summary),
    }
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    write_text(out.with_name(out.name + ".sha256"), f"{sha256_file(out)}  {out.name}\n")
    return out


def push_model(
    run: str | Path,
    repo: str,
    private: bool = False,
    token: str | None = None,
    evaluations: list[str | Path] | None = None,
) -> str:
    """Export ``run`` and upload ``model.safetensors`` (+ ``.sha256``) and the card as ``README.md`` to a hub repo."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise ConfigError("medml push needs the huggingface_hub package (pip install huggingface_hub)") from None
    from safetensors import safe_open

    with tempfile.TemporaryDirectory(prefix="medml-push-") as tmp:
        model = export_model(run, Path(tmp) / MODEL_FILE, evaluations)
        with safe_open(str(model), framework="pt") as fh:
            readme = (fh.metadata() or {}).get("model_card", "")
        write_text(Path(tmp) / "README.md", readme)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id=repo, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo,
                folder_path=tmp,
                repo_type="model",
                commit_message="medml push",
                allow_patterns=[MODEL_FILE, MODEL_FILE + ".sha256", "README.md"],
            )
        except (hf_errors.HfHubHTTPError, OSError, ValueError) as exc:
            raise ConfigError(
                f"push to the hub failed: {str(exc).splitlines()[0] if str(exc) else exc!r}", repo
            ) from None
    return f"hf://{repo}"
