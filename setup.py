"""Packaging that pyproject.toml cannot say alone: ship the top-level ``pipelines/`` folder as ``medml.recipes``.

``pipelines/<name>/`` stays where users read and edit recipes and model cards; the wheel carries the same files
under ``medml/recipes/<name>/`` so an installed medml resolves ``--config tiny`` like a checkout
(`medml.config.recipes_dir`). Everything else is declared in pyproject.toml.
"""

from pathlib import Path

from setuptools import find_packages, setup

RECIPES = sorted(p.name for p in (Path(__file__).parent / "pipelines").iterdir() if p.is_dir())

setup(
    packages=[*find_packages(include=["medml", "medml.*"]), "medml.recipes", *(f"medml.recipes.{n}" for n in RECIPES)],
    package_dir={"medml.recipes": "pipelines"},
    package_data={"medml.recipes": ["*/*.yaml", "*/*.md"]},
)
