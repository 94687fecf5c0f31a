"""A command line that explains itself: help for every argument, an example per verb, --version, ``medml config``,
and ``list`` / ``--help`` without importing torch."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import medml
from medml.cli import _parser, main
from medml.config_doc import config_rows

REPO = Path(__file__).resolve().parents[1]


def _verbs() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_argument_has_help_and_every_verb_an_example():
    verbs = _verbs()
    assert {"export", "push", "config", "train", "predict", "evaluate"} <= set(verbs)
    for name, parser in verbs.items():
        assert f"medml {name}" in parser.epilog, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.dest} has no help"


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"medml {medml.__version__}"


def test_config_lists_every_key_with_value_type_and_meaning(capsys):
    assert main(["config", "ecg", "--recipe", "tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_key = {line.split()[0]: line for line in lines}
    from medml.config import load_config, resolve_recipe
    from medml.registry import get_pipeline

    config = load_config(get_pipeline("ecg").Config, resolve_recipe("ecg", "tiny"))
    assert set(by_key) == {row[0] for row in config_rows(config)}
    assert "stages.0.enabled" in by_key and "train.optim.lr" in by_key
    assert by_key["data.sampling_rate"].split()[1] == "100" and "[int (>0)]" in by_key["data.sampling_rate"]
    assert "# the paper trains on records100" in by_key["data.sampling_rate"]  # the comment beside the field
    assert "# per device" in by_key["train.batch_size"]
    # every core (engine) key has a meaning
    assert all("  # " in line for key, line in by_key.items() if key.startswith("train."))
    assert main(["config", "ecg", "--set", "train.batch_size=7"]) == 0
    assert any(line.startswith("train.batch_size") and " 7 " in line for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["predict", "--help"], ["export", "--help"]])
def test_fast_commands_do_not_import_torch(argv):
    code = (
        "import sys\nfrom medml.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.stderr.strip().splitlines()[-1] == "NO-TORCH", proc.stderr[-2000:]
