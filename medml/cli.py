"""The ``medml`` command. Every user error is one line on stderr and exit code 2; never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import medml
from medml.config import load_config, resolve_recipe
from medml.errors import ConfigError, MedmlError
from medml.info import info_lines
from medml.logs import command_logging
from medml.registry import get_pipeline, pipeline_summaries

log = logging.getLogger("medml.cli")

# Only what `list`, `info` and `--help` need is imported here, so they answer at once: the commands that run a
# model import torch, Lightning and MONAI (medml.engine, medml.demo, medml.io) inside their branch of `run`.

COMMANDS = """
commands:
  list                       pipelines, with one line each
  info                       versions, devices, optional codecs
  config NAME [--recipe R]   every config key with its default, type and meaning
  inspect PATH [--json]      what medml finds in a file or folder
  convert INPUT OUTPUT       e.g. a DICOM series folder to NIfTI with its geometry
  prepare NAME --data DIR    check a dataset's official layout and build caches
  train NAME --data DIR --out RUN [--config YAML] [--set key=value ...] [--resume] [--fold K]
  predict NAME --input DIR --checkpoint CKPT [--checkpoint CKPT2 ...] --output DIR [--set key=value ...]
  evaluate NAME --data DIR --checkpoint CKPT --out DIR [--split test] [--set key=value ...]
  export RUN OUT             one shareable model file (safetensors weights + config, labels, model card)
  push RUN ORG/REPO          export and publish to the Hugging Face hub
  demo [NAME]                synthetic data -> train tiny -> predict -> evaluate -> report.html

CKPT is a model.ckpt, an exported .safetensors, an https:// URL (optionally #sha256=HEX) or hf://org/repo[/file].
'medml COMMAND --help' shows each command's options and an example.
"""

EXAMPLES = {
    "list": "medml list",
    "info": "medml info",
    "config": "medml config ecg\n  medml config ecg --recipe tiny",
    "inspect": "medml inspect scans/ --json",
    "convert": "medml convert dicom/series1 series1.nii.gz\n  medml convert series1/ seg.dcm --mask labels.nii.gz",
    "prepare": "medml prepare ecg --data ptb-xl-1.0.3/",
    "train": "medml train ecg --data ptb-xl-1.0.3/ --out runs/ecg --set train.batch_size=64\n"
    "  medml train ecg --data ptb-xl-1.0.3/ --out runs/ecg-fold3 --fold 3   # one fold of the cross-validation\n"
    "  medml train ecg --data ptb-xl-1.0.3/ --out runs/ecg --resume",
    "predict": "medml predict ecg --input ecgs/ --checkpoint runs/ecg/model.ckpt --output preds/\n"
    "  medml predict ecg --input ecgs/ --checkpoint hf://org/medml-ecg --output preds/ --set model.explain_top_k=5\n"
    "  medml predict ecg --input ecgs/ --checkpoint f0.safetensors --checkpoint f1.safetensors --output ens/",
    "evaluate": "medml evaluate ecg --data ptb-xl-1.0.3/ --checkpoint runs/ecg/model.ckpt --out eval/",
    "export": "medml export runs/ecg ecg.safetensors\n  medml export runs/ecg models/ --evaluation eval/",
    "push": "medml push runs/ecg my-org/medml-ecg   # needs 'huggingface-cli login' or HF_TOKEN",
    "demo": "medml demo ecg --out medml-demo",
}

HELP = {
    "list": "pipelines, with one line each",
    "info": "versions, devices, optional codecs",
    "config": "every config key of a pipeline with its default, type and meaning",
    "inspect": "what medml finds in a file or folder",
    "convert": "convert a DICOM series or cine to NIfTI (or a mask to DICOM SEG)",
    "prepare": "check a dataset's official layout and build caches",
    "train": "train a pipeline on its dataset",
    "predict": "predict every case in a folder",
    "evaluate": "score a checkpoint on a dataset split",
    "export": "write a run's model as one shareable, pickle-free file",
    "push": "export a run's model and publish it on the Hugging Face hub",
    "demo": "synthetic data -> train tiny -> predict -> evaluate -> report.html",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) like every other user error."""

    def error(self, message: str) -> None:
        self.exit(2, f"medml: error: {message} (see '{self.prog} --help')\n")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _bytes(text: str) -> int:
    """``--max-case-bytes`` value: a number of bytes, optionally with K, M, G or T (binary units)."""
    number, unit = text.strip().upper().removesuffix("B"), ""
    if number and number[-1] in _SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a size such as 8G or 500M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a positive size")
    return value


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-case-bytes",
        type=_bytes,
        metavar="SIZE",
        help="refuse a case whose decoded pixels/samples would exceed SIZE (e.g. 8G); "
        "default: $MEDML_MAX_CASE_BYTES or a quarter of this machine's memory",
    )


def _add_verbosity(p: argparse.ArgumentParser, top: bool = False) -> None:
    # On the subcommands the defaults are suppressed so `medml -v train ...` and `medml train ... -v` both work.
    default = 0 if top else argparse.SUPPRESS
    p.add_argument(
        "-v", "--verbose", action="count", default=default, help="more detail on stderr and in the log (repeatable)"
    )
    p.add_argument("-q", "--quiet", action="count", default=default, help="only warnings and errors on stderr")


def _add_set(p: argparse.ArgumentParser, what: str, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"{what}, e.g. --set {example} ('medml config NAME' lists the keys)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medml",
        description="Published medical imaging methods on clinical files.",
        epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medml {medml.__version__}", help="print the version")
    _add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def verb(name: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=HELP[name],
            description=HELP[name][0].upper() + HELP[name][1:] + ".",
            epilog="examples:\n  " + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_verbosity(p)
        return p

    def pipeline_name(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="pipeline name ('medml list' shows them), e.g. ecg")

    verb("list")
    verb("info")

    p = verb("config")
    pipeline_name(p)
    p.add_argument("--recipe", help="show the values of this recipe (paper, tiny) or YAML file; default: paper")
    _add_set(p, "show the values after these overrides", "train.batch_size=16")

    p = verb("inspect")
    p.add_argument("path", type=Path, metavar="PATH", help="a file or folder of DICOM, NIfTI, WFDB, images or video")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_budget(p)

    p = verb("convert")
    p.add_argument("input", type=Path, metavar="INPUT", help="a DICOM series folder, a cine or another image file")
    p.add_argument("output", type=Path, metavar="OUTPUT", help="the file to write (.nii.gz, or .dcm with --mask)")
    p.add_argument("--mask", type=Path, help="a label map to write as DICOM SEG referencing INPUT")
    p.add_argument(
        "--keep-paths", action="store_true", help="name the input in the JSON sidecar instead of its case id"
    )
    _add_budget(p)

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="recipe name (paper, tiny) or a YAML file; default: the paper recipe")
        _add_set(p, "override config keys", "train.batch_size=16 train.optim.lr=3e-4")

    p = verb("prepare")
    pipeline_name(p)
    p.add_argument("--data", type=Path, required=True, help="the dataset folder in its official layout")
    add_config(p)

    p = verb("train")
    pipeline_name(p)
    p.add_argument("--data", type=Path, required=True, help="the dataset folder in its official layout")
    p.add_argument("--out", type=Path, required=True, help="run folder (config, logs, checkpoints, model.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="train on fold K of the cross-validation: the dataset's official folds (PTB-XL: 1-9, fold 10 is the "
        "test set) or fold K (0-based) of a generated --folds split of the training cases; see docs/models.md",
    )
    p.add_argument(
        "--folds", type=int, default=5, metavar="N", help="folds of a generated split (default 5; ignored for official)"
    )
    add_config(p)

    p = verb("predict")
    pipeline_name(p)
    p.add_argument("--input", type=Path, required=True, help="folder (or file) of clinical files to predict")
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="CKPT",
        help="model.ckpt, exported .safetensors, https:// URL[#sha256=HEX] or hf://org/repo[/file]; "
        "repeat to ensemble several models (probabilities averaged)",
    )
    p.add_argument("--output", type=Path, required=True, help="folder for one output folder per case and the tables")
    p.add_argument("--num-parts", type=int, default=1, help="split the cases into N parts ...")
    p.add_argument("--part-id", type=int, default=0, help="... and process part I (0-based)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--keep-paths",
        action="store_true",
        help="write source paths (relative to --input) in failures.csv and run.json instead of case ids",
    )
    _add_set(p, "inference options on the model's stored config", "model.explain_top_k=5")
    _add_budget(p)

    p = verb("evaluate")
    pipeline_name(p)
    p.add_argument("--data", type=Path, required=True, help="the dataset folder in its official layout")
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="model.ckpt, exported .safetensors, https:// URL[#sha256=HEX] or hf://org/repo[/file]",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, figures and run.json")
    p.add_argument("--split", default="test", help="dataset split to score (default: test)")
    p.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    _add_set(p, "inference options on the model's stored config", "model.explain_top_k=5")

    p = verb("export")
    p.add_argument("run", type=Path, metavar="RUN", help="a finished run folder (or its model.ckpt)")
    p.add_argument("out", type=Path, metavar="OUT", help="the file to write (.safetensors), or a folder for it")
    p.add_argument(
        "--evaluation",
        type=Path,
        action="append",
        metavar="DIR",
        help="a 'medml evaluate' folder whose metrics go into the model card (default: those found in and beside RUN)",
    )

    p = verb("push")
    p.add_argument("run", type=Path, metavar="RUN", help="a finished run folder (or its model.ckpt)")
    p.add_argument("repo", metavar="ORG/REPO", help="Hugging Face model repository (created if absent)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="hub token (default: HF_TOKEN or the 'huggingface-cli login' token)")
    p.add_argument("--evaluation", type=Path, action="append", metavar="DIR", help="as for 'medml export'")

    p = verb("demo")
    p.add_argument("name", nargs="?", metavar="NAME", help="one pipeline (default: all)")
    p.add_argument("--out", type=Path, default=Path("medml-demo"), help="demo folder (default: ./medml-demo)")
    return parser


def _device(name: str) -> str:
    import torch

    if name == "auto":
        from medml.engine.train import auto_accelerator

        return {"gpu": "cuda"}.get(auto_accelerator(), auto_accelerator())
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device '{name}' is not a device (auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine")
    return name


def _pipeline(name: str, config: str | None, overrides: list[str]):
    cls = get_pipeline(name)
    return cls(load_config(cls.Config, resolve_recipe(name, config), overrides))


def _log_target(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """(log file, the path whose existence says medml made the folder) of a command that writes a folder.

    The log waits for that marker so it never creates a folder a refused command would not have (an output
    folder inside the input, a run folder already in use)."""
    if args.command == "train":
        return args.out / "train.log", args.out / "config.yaml"
    if args.command == "predict":
        name = "predict.log" if args.num_parts == 1 else f"predict.part{args.part_id}of{args.num_parts}.log"
        return args.output / name, args.output / ".medml"
    if args.command == "evaluate":
        return args.out / "evaluate.log", args.out / "run.json"
    return None


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    with command_logging(args.verbose - args.quiet, _log_target(args), " ".join(["medml", *(argv or sys.argv[1:])])):
        if not getattr(args, "max_case_bytes", None):
            return _dispatch(args)
        from medml.io import set_memory_budget

        set_memory_budget(args.max_case_bytes)
        try:
            return _dispatch(args)
        finally:
            set_memory_budget(None)  # in-process callers (tests, notebooks) get the default back


def _say(text: str) -> None:
    """A command's result: on stdout, and in the folder's log."""
    print(text, flush=True)
    log.info("%s", text)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("inspect", "convert", "predict"):
        # Hostile files make the format libraries warn once per oddity; each unusable file already gets its one-line
        # reason (inspect's errors, failures.csv), so their warnings would only bury those lines.
        for library in ("pydicom", "PIL", "nibabel", "wfdb", "imageio", "highdicom"):
            warnings.filterwarnings("ignore", module=library)
    if args.command == "list":
        for name, summary in pipeline_summaries().items():
            print(f"{name:10s} {summary}")
    elif args.command == "info":
        for line in info_lines():
            print(line, flush=True)  # the device lines wait for torch; the rest need not
    elif args.command == "config":
        from medml.config_doc import config_lines

        cls = get_pipeline(args.name)
        config = load_config(cls.Config, resolve_recipe(args.name, args.recipe), args.overrides)
        for line in config_lines(config):
            print(line)
    elif args.command == "inspect":
        from medml import io

        report = io.inspect(args.path)
        print(json.dumps(report, indent=2, default=str) if args.json else io.format_inspect(report))
    elif args.command == "convert":
        from medml import io

        written = io.convert(args.input, args.output, mask=args.mask, anonymize_paths=not args.keep_paths)
        print(f"wrote {written}")
    elif args.command == "prepare":
        if not args.data.is_dir():
            raise ConfigError("data folder not found", args.data)
        summary = _pipeline(args.name, args.config, args.overrides).prepare(args.data)
        print(json.dumps(summary, indent=2, default=str))
    elif args.command == "train":
        from medml.engine.train import train

        config = args.config
        if args.resume and config is None and not args.overrides and (args.out / "config.yaml").is_file():
            config = str(args.out / "config.yaml")  # resume with the run's own config
        pipeline = _pipeline(args.name, config, args.overrides)
        result = train(pipeline, args.data, args.out, resume=args.resume, fold=args.fold, num_folds=args.folds)
        _say(f"trained {args.name}: {result.checkpoint}")
    elif args.command == "predict":
        from medml.engine.predict import load_models, predict_folder
        from medml.hub import resolve_source

        pipeline, module = load_models(
            args.checkpoint, expect_pipeline=args.name, device=_device(args.device), overrides=args.overrides
        )
        summary = predict_folder(
            pipeline,
            module,
            args.input,
            args.output,
            num_parts=args.num_parts,
            part_id=args.part_id,
            checkpoint=[resolve_source(c) for c in args.checkpoint],
            anonymize_paths=not args.keep_paths,
            progress=args.verbose - args.quiet >= 0,
        )
        _say(
            f"{summary.done} predicted, {summary.skipped} already done, {summary.failed} failed "
            f"(see {summary.output_dir / 'failures.csv'})"
        )
    elif args.command == "evaluate":
        from medml.engine.evaluate import evaluate

        metrics = evaluate(
            args.name,
            args.data,
            args.checkpoint,
            args.out,
            split=args.split,
            device=_device(args.device),
            overrides=args.overrides,
        )
        _say(json.dumps(metrics, indent=2, default=str))
    elif args.command == "export":
        from medml.engine.export import export_model

        written = export_model(args.run, args.out, args.evaluation)
        print(f"wrote {written} (checksum in {written.name}.sha256)")
    elif args.command == "push":
        from medml.engine.export import push_model

        print(f"published {push_model(args.run, args.repo, args.private, args.token, args.evaluation)}")
    elif args.command == "demo":
        from medml.demo import run_demo

        report = run_demo(args.out, names=[args.name] if args.name else None)
        print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if sys.platform == "darwin":  # ops without an MPS kernel run on the CPU instead of failing (docs/cli.md)
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    try:
        return run(argv)
    except MedmlError as exc:
        log.debug("error", exc_info=True)
        print(f"medml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medml: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
