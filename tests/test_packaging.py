"""A wheel install works like a checkout: recipes and model cards ship in the wheel and resolve from it."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from medml.config import recipes_dir
from medml.registry import list_pipelines

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = [n for n in list_pipelines() if n != "toy"]

# Run from a folder without the checkout, so only the installed copy of medml can answer.
CHECK = """
import sys
from pathlib import Path

import medml
from medml.cli import main
from medml.config import recipes_dir

site = Path(sys.argv[1]).resolve()
assert Path(medml.__file__).resolve().is_relative_to(site), medml.__file__
assert recipes_dir().resolve().is_relative_to(site), recipes_dir()
for name in sys.argv[2:]:
    # The recipe resolves before the data folder is checked: "data folder not found", never "no recipe 'tiny'".
    code = main(["train", name, "--data", "missing-data", "--out", "run", "--config", "tiny"])
    assert code == 2, name
print("ok")
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source tree (the build writes build/ and *.egg-info beside its sources)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("medml", "pipelines"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("medml-*.whl")
    return whl


def test_wheel_holds_recipes_and_model_cards(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PIPELINES:
        for file in ("paper.yaml", "tiny.yaml", "README.md"):
            assert f"medml/recipes/{name}/{file}" in names, (name, file)
    assert "medml/cli.py" in names
    assert not any(n.startswith(("pipelines/", "tests/")) for n in names)  # no stray top-level import names


def test_installed_wheel_resolves_recipes(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(site), *PIPELINES], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no recipe" not in done.stderr
    assert done.stderr.count("data folder not found") == len(PIPELINES), done.stderr[-2000:]


def test_checkout_resolves_recipes_from_pipelines_folder():
    assert recipes_dir() == ROOT / "pipelines"


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize(
    "page", ["README.md", "docs/io.md", "docs/design.md", *(f"pipelines/{n}/README.md" for n in PIPELINES)]
)
def test_every_link_resolves_inside_the_project(page):
    text = (ROOT / page).read_text()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (ROOT / page).parent / target.split("#")[0]
        assert path.exists(), f"{page}: {target}"
        assert path.resolve().is_relative_to(ROOT), f"{page}: {target} leaves the project"
    if not page.startswith("pipelines/"):
        assert "shared/" not in text, f"{page} points into the developers' shared folder, which users do not have"
