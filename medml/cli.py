"""The ``medml`` command. Every user error is one line on stderr and exit code 2; never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from medml.config import load_config, resolve_recipe
from medml.errors import ConfigError, MedmlError
from medml.info import info_lines
from medml.registry import get_pipeline, pipeline_summaries

# Only what `list`, `info` and `--help` need is imported here, so they answer at once: the commands that run a
# model import torch, Lightning and MONAI (medml.engine, medml.demo, medml.io) inside their branch of `run`.

COMMANDS = """
commands:
  list                       pipelines, with one line each
  info                       versions, devices, optional codecs
  inspect PATH [--json]      what medml finds in a file or folder
  convert INPUT OUTPUT       e.g. a DICOM series folder to NIfTI with its geometry
  prepare NAME --data DIR    check a dataset's official layout and build caches
  train NAME --data DIR --out RUN [--config YAML] [--set key=value ...] [--resume]
  predict NAME --input DIR --checkpoint CKPT --output DIR [--num-parts N --part-id I]
  evaluate NAME --data DIR --checkpoint CKPT --out DIR [--split test]
  demo [NAME]                synthetic data -> train tiny -> predict -> evaluate -> report.html
"""


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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medml",
        description="Published medical imaging methods on clinical files.",
        epilog=COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("list", help="pipelines, with one line each")
    sub.add_parser("info", help="versions, devices, optional codecs")

    p = sub.add_parser("inspect", help="what medml finds in a file or folder")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_budget(p)

    p = sub.add_parser("convert", help="convert a DICOM series or cine to NIfTI (or a mask to DICOM SEG)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--mask", type=Path, help="a label map to write as DICOM SEG referencing INPUT")
    p.add_argument(
        "--keep-paths", action="store_true", help="name the input in the JSON sidecar instead of its case id"
    )
    _add_budget(p)

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="recipe name (paper, tiny) or a YAML file; default: the paper recipe")
        p.add_argument(
            "--set",
            dest="overrides",
            nargs="+",
            action="extend",
            default=[],
            metavar="KEY=VALUE",
            help="override config keys, e.g. --set train.batch_size=16 train.optim.lr=3e-4",
        )

    p = sub.add_parser("prepare", help="check a dataset's official layout and build caches")
    p.add_argument("name")
    p.add_argument("--data", type=Path, required=True)
    add_config(p)

    p = sub.add_parser("train", help="train a pipeline on its dataset")
    p.add_argument("name")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config(p)

    p = sub.add_parser("predict", help="predict every case in a folder")
    p.add_argument("name")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--num-parts", type=int, default=1, help="split the cases into N parts ...")
    p.add_argument("--part-id", type=int, default=0, help="... and process part I (0-based)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--keep-paths",
        action="store_true",
        help="write source paths (relative to --input) in failures.csv and run.json instead of case ids",
    )
    _add_budget(p)

    p = sub.add_parser("evaluate", help="score a checkpoint on a dataset split")
    p.add_argument("name")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("demo", help="synthetic data -> train tiny -> predict -> evaluate -> report.html")
    p.add_argument("name", nargs="?", help="one pipeline (default: all)")
    p.add_argument("--out", type=Path, default=Path("medml-demo"), help="demo folder (default: ./medml-demo)")
    return parser


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
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


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0

    if not getattr(args, "max_case_bytes", None):
        return _dispatch(args)
    from medml.io import set_memory_budget

    set_memory_budget(args.max_case_bytes)
    try:
        return _dispatch(args)
    finally:
        set_memory_budget(None)  # in-process callers (tests, notebooks) get the default back


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
        result = train(_pipeline(args.name, config, args.overrides), args.data, args.out, resume=args.resume)
        print(f"trained {args.name}: {result.checkpoint}")
    elif args.command == "predict":
        from medml.engine.checkpoint import load_checkpoint
        from medml.engine.predict import predict_folder

        pipeline, module = load_checkpoint(
            args.checkpoint, expect_pipeline=args.name, device=_device(args.device), final_only=True
        )
        summary = predict_folder(
            pipeline,
            module,
            args.input,
            args.output,
            num_parts=args.num_parts,
            part_id=args.part_id,
            checkpoint=args.checkpoint,
            anonymize_paths=not args.keep_paths,
        )
        print(
            f"{summary.done} predicted, {summary.skipped} already done, {summary.failed} failed "
            f"(see {summary.output_dir / 'failures.csv'})"
        )
    elif args.command == "evaluate":
        from medml.engine.evaluate import evaluate

        metrics = evaluate(
            args.name, args.data, args.checkpoint, args.out, split=args.split, device=_device(args.device)
        )
        print(json.dumps(metrics, indent=2, default=str))
    elif args.command == "demo":
        from medml.demo import run_demo

        report = run_demo(args.out, names=[args.name] if args.name else None)
        print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except MedmlError as exc:
        print(f"medml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medml: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
