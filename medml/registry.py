"""Pipeline registry (timm's ``@register_model`` idea): the CLI, the demo and the tests find every pipeline here.

A pipeline imports torch, Lightning and MONAI, which takes seconds, while ``medml list`` and ``--help`` must answer
at once. So the built-in pipelines (the packages under ``medml/pipelines/``) are listed by reading their source: the
``name`` and ``summary`` of the ``@register_pipeline`` class in the package's ``pipeline.py`` (or ``__init__.py``),
which stays the one place they are written. A pipeline is imported only when `get_pipeline` asks for it.

Pipelines of other packages register through the ``medml.pipelines`` entry-point group, e.g. in their
``pyproject.toml``::

    [project.entry-points."medml.pipelines"]
    mypipe = "mypackage.pipeline"        # a module holding a @register_pipeline class (or "module:Class")

They are listed the same way (their module's source is read, not imported, where it can be found) and imported on
first use.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import logging
import pkgutil
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import medml.pipelines
from medml.errors import ConfigError

if TYPE_CHECKING:
    from medml.pipelines.base import Pipeline

log = logging.getLogger(__name__)

_PIPELINES: dict[str, type[Pipeline]] = {}


def register_pipeline(cls: type[Pipeline]) -> type[Pipeline]:
    """Class decorator: make a `Pipeline` subclass available under ``cls.name``."""
    if cls.name in _PIPELINES and _PIPELINES[cls.name] is not cls:
        raise ValueError(f"pipeline name '{cls.name}' registered twice")
    _PIPELINES[cls.name] = cls
    return cls


def _is_register(decorator: ast.expr) -> bool:
    if isinstance(decorator, ast.Attribute):  # @registry.register_pipeline
        return decorator.attr == "register_pipeline"
    return isinstance(decorator, ast.Name) and decorator.id == "register_pipeline"


def _declared(source: Path) -> dict[str, str | None]:
    """``{name: summary}`` of the ``@register_pipeline`` classes in a source file (summary ``None`` when it is not
    a plain string there)."""
    if not source.is_file():
        return {}
    found: dict[str, str | None] = {}
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.ClassDef) or not any(_is_register(d) for d in node.decorator_list):
            continue
        values = {
            target.id: stmt.value.value
            for stmt in node.body
            if isinstance(stmt, ast.Assign | ast.AnnAssign) and isinstance(stmt.value, ast.Constant)
            for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
            if isinstance(target, ast.Name)
        }
        if isinstance(values.get("name"), str):
            summary = values.get("summary")
            found[values["name"]] = summary if isinstance(summary, str) else None
    return found


@functools.cache
def _builtin() -> tuple[dict[str, tuple[str, str | None]], tuple[str, ...]]:
    """(``{name: (package, summary)}`` read from source, packages whose pipelines could not be read that way)."""
    found: dict[str, tuple[str, str | None]] = {}
    unread = []
    for info in pkgutil.iter_modules(medml.pipelines.__path__):
        if not info.ispkg:
            continue
        package = f"medml.pipelines.{info.name}"
        folder = Path(info.module_finder.path) / info.name
        declared = {**_declared(folder / "__init__.py"), **_declared(folder / "pipeline.py")}
        found.update({name: (package, summary) for name, summary in declared.items()})
        if not declared:
            unread.append(package)
    return found, tuple(unread)


ENTRY_POINT_GROUP = "medml.pipelines"


def _module_source(module: str) -> Path | None:
    """The source file of ``module`` without importing it (its parent packages are imported by ``find_spec``)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


def _external() -> dict[str, tuple[metadata.EntryPoint, str | None]]:
    """``{name: (entry point, summary read from source or None)}`` of the ``medml.pipelines`` entry points.

    Read on every call (not cached): installing a package into a running interpreter (a notebook) is seen."""
    found: dict[str, tuple[metadata.EntryPoint, str | None]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = _module_source(ep.module)
        declared = _declared(source) if source else {}
        if ep.name in declared:
            found[ep.name] = (ep, declared[ep.name])
        elif len(declared) == 1 and not ep.attr:
            name, summary = next(iter(declared.items()))
            found[name] = (ep, summary)
        else:  # names only known once imported
            found[ep.name] = (ep, None)
    return found


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    """Import an external pipeline; a class it names that its module did not register is registered here."""
    try:
        loaded = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is one line, not a traceback
        raise ConfigError(f"pipeline entry point '{ep.name}' ({ep.value}) cannot be loaded: {exc}") from None
    if isinstance(loaded, type) and getattr(loaded, "name", None) and loaded.name not in _PIPELINES:
        register_pipeline(loaded)


def _import_unread() -> None:
    for package in _builtin()[1]:
        importlib.import_module(package)


def list_pipelines() -> list[str]:
    """Names of the built-in pipelines, of the installed external ones and of any registered in this process,
    without importing the built-ins (nor external ones whose module says its name in plain literals)."""
    _import_unread()
    external = _external()
    for name, (ep, summary) in external.items():
        if summary is None and name not in _PIPELINES:
            try:
                _load_entry_point(ep)  # its real name(s) are registered now
            except ConfigError as exc:  # one broken plugin must not hide the others
                log.warning("%s", exc)
    names = set(_builtin()[0]) | set(_PIPELINES)
    names |= {name for name, (_, summary) in external.items() if summary is not None}
    return sorted(names)


def pipeline_summaries() -> dict[str, str]:
    """``{name: one-line summary}`` for `list_pipelines`, read without importing a pipeline where the source says."""
    summaries = {}
    external = _external()
    for name in list_pipelines():
        static = _builtin()[0].get(name) or (None, external.get(name, (None, None))[1])
        summary = static[1] if name not in _PIPELINES else None
        summaries[name] = summary if summary is not None else get_pipeline(name).summary
    return summaries


def get_pipeline(name: str) -> type[Pipeline]:
    """The pipeline class registered as ``name``, importing its package (or entry point) on first use."""
    if name not in _PIPELINES and name in _builtin()[0]:
        importlib.import_module(_builtin()[0][name][0])
    if name not in _PIPELINES:
        external = _external()
        if name in external:
            _load_entry_point(external[name][0])
    if name not in _PIPELINES:
        _import_unread()
    if name not in _PIPELINES:
        known = ", ".join(list_pipelines()) or "none"
        raise ConfigError(f"unknown pipeline '{name}' (registered: {known})")
    return _PIPELINES[name]
