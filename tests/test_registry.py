"""Registry-driven checks (timm's pattern): every registered pipeline ships what DESIGN.md promises."""

from pathlib import Path

import pytest
import yaml

from medml.config import RECIPES_DIR, load_config, resolve_recipe
from medml.pipelines.base import MedmlModule, Pipeline
from medml.registry import _declared, get_pipeline, list_pipelines

REPO = Path(__file__).resolve().parents[1]
NAMES = [n for n in list_pipelines() if n != "toy"]


@pytest.mark.parametrize("name", NAMES)
def test_paper_recipe_is_exactly_the_defaults(name):
    cls = get_pipeline(name)
    paper = yaml.safe_load((RECIPES_DIR / name / "paper.yaml").read_text())
    assert load_config(cls.Config, paper) == cls.Config(), "paper.yaml and the config defaults disagree"


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_ships_recipes_cards_and_notebook(name):
    cls = get_pipeline(name)
    assert issubclass(cls, Pipeline) and cls.summary and cls.input_kinds
    tiny = load_config(cls.Config, resolve_recipe(name, "tiny"))
    assert tiny != cls.Config()
    card = (RECIPES_DIR / name / "README.md").read_text()
    assert len(card) > 2000, "the model card is missing or a stub"
    assert list((REPO / "datasets").glob("*.md")), "no dataset cards"
    assert list((REPO / "notebooks").glob(f"{name}_*.ipynb")), f"no notebooks/{name}_*.ipynb"
    assert (REPO / "benchmarks" / f"{name}.py").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_tiny_module_builds_without_data(name):
    cls = get_pipeline(name)
    module = cls(load_config(cls.Config, resolve_recipe(name, "tiny"))).build_module(None)
    assert isinstance(module, MedmlModule)
    assert sum(p.numel() for p in module.parameters()) > 0


def test_pipelines_are_listed_from_their_source(tmp_path):
    """``medml list`` reads name and summary from the registered class's source instead of importing it."""
    source = tmp_path / "pipeline.py"
    source.write_text(
        "from medml import registry\n"
        "from medml.registry import register_pipeline\n"
        "class Helper:\n    name = 'not-a-pipeline'\n"
        "@register_pipeline\nclass A(Pipeline):\n    name = 'a'\n    summary = ('one line, '\n        'in two parts')\n"
        "@registry.register_pipeline\nclass B(Pipeline):\n    name: str = 'b'\n    summary = SUMMARY\n"
    )
    assert _declared(source) == {"a": "one line, in two parts", "b": None}  # None: import it to read the summary
    assert _declared(tmp_path / "missing.py") == {}
