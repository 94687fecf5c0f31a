"""``medml config NAME``: every key of a pipeline's config with its value, type and one-line meaning.

The meaning is the field's pydantic ``description`` when it has one, else the comment written beside (or just
above) the field in its class's source, which is where medml's configs explain their keys; keys of a list of
blocks (``stages``) are listed per item, as ``--set stages.3.enabled=false`` addresses them.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import json
import tokenize
import types
import typing
from typing import Any

from pydantic import BaseModel


@functools.cache
def _source_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class body's source: the trailing comment, else the comment lines above."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        return {}
    try:
        body = ast.parse(inspect.cleandoc("\n" + source) if source[:1].isspace() else source).body[0]
    except SyntaxError:
        return {}
    found = {}
    for stmt in getattr(body, "body", []):
        if not isinstance(stmt, ast.AnnAssign | ast.Assign):
            continue
        targets = [stmt.target] if isinstance(stmt, ast.AnnAssign) else stmt.targets
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if not names:
            continue
        text = next(
            (comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if n in comments), ""
        )
        if not text:  # comment lines right above the field
            above, n = [], stmt.lineno - 1
            while n in comments and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            text = " ".join(above)
        for name in names:
            found[name] = text
    return found


def field_meaning(cls: type[BaseModel], name: str) -> str:
    """The one-line meaning of field ``name`` of ``cls`` (searched up the class hierarchy)."""
    info = cls.model_fields.get(name)
    if info is not None and info.description:
        return " ".join(info.description.split())
    for klass in cls.__mro__:
        if (
            isinstance(klass, type)
            and issubclass(klass, BaseModel)
            and name in klass.__dict__.get("__annotations__", {})
        ):
            text = _source_comments(klass).get(name)
            if text:
                return text
    return ""


def type_name(annotation: Any) -> str:
    """A short, readable form of a field's type (``int``, ``'adam' | 'sgd'``, ``list[str]``, ``float | None``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        base, *meta = args
        bounds = []
        for item in meta:
            for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                value = getattr(item, attr, None)
                if value is not None:
                    bounds.append(f"{sign}{value}")
            for sub in getattr(item, "metadata", []):
                for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    value = getattr(sub, attr, None)
                    if value is not None:
                        bounds.append(f"{sign}{value}")
        return type_name(base) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _bounds(info: Any) -> str:
    marks = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "len>=")):
            value = getattr(item, attr, None)
            if value is not None:
                marks.append(f"{sign}{value}")
    return f" ({', '.join(marks)})" if marks else ""


def config_rows(config: BaseModel, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, value as JSON, meaning) of every leaf key of ``config``."""
    rows = []
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            rows += config_rows(value, key + ".")
        elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
            for i, item in enumerate(value):
                rows += config_rows(item, f"{key}.{i}.")
        else:
            shown = json.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value, default=str)
            rows.append((key, type_name(info.annotation) + _bounds(info), shown, field_meaning(type(config), name)))
    return rows


def config_lines(config: BaseModel) -> list[str]:
    """The rows as aligned text: ``key  type  = value  # meaning``."""
    rows = config_rows(config)
    width = max((len(r[0]) for r in rows), default=0)
    lines = []
    for key, kind, value, meaning in rows:
        if len(value) > 60:
            value = value[:57] + "..."
        line = f"{key:<{width}}  {value}  [{kind}]"
        lines.append(line + (f"  # {meaning}" if meaning else ""))
    return lines
