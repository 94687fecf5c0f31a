"""Pipeline registry (timm's ``@register_model`` idea): the CLI, the demo and the tests find every pipeline here."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from medml.errors import ConfigError

if TYPE_CHECKING:
    from medml.pipelines.base import Pipeline

_PIPELINES: dict[str, type[Pipeline]] = {}


def register_pipeline(cls: type[Pipeline]) -> type[Pipeline]:
    """Class decorator: make a `Pipeline` subclass available under ``cls.name``."""
    if cls.name in _PIPELINES and _PIPELINES[cls.name] is not cls:
        raise ValueError(f"pipeline name '{cls.name}' registered twice")
    _PIPELINES[cls.name] = cls
    return cls


def _import_builtin_pipelines() -> None:
    import medml.pipelines as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            importlib.import_module(f"medml.pipelines.{info.name}")


def list_pipelines() -> list[str]:
    _import_builtin_pipelines()
    return sorted(_PIPELINES)


def get_pipeline(name: str) -> type[Pipeline]:
    _import_builtin_pipelines()
    if name not in _PIPELINES:
        known = ", ".join(sorted(_PIPELINES)) or "none"
        raise ConfigError(f"unknown pipeline '{name}' (registered: {known})")
    return _PIPELINES[name]
