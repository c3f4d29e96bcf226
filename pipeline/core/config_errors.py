"""Config errors a user can act on: which field, where its value came from (the file or a `--set`), and for a
typo the nearest valid key."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation can hold (through Optional, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section at `loc` (list indices and dict keys stepped over)."""
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            continue
        nxt: list[type[BaseModel]] = []
        for m in current:
            field = m.model_fields.get(str(part))
            if field is not None:
                nxt += _models_in(field.annotation)
        if not nxt:
            return []
        current = nxt
    keys: list[str] = []
    for m in current:
        keys += [k for k in m.model_fields if k not in keys]
    return keys


def suggestion(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """`did you mean output.dir?` for an unknown key `output.dri`, or nothing."""
    near = difflib.get_close_matches(str(loc[-1]), keys_at(model, loc[:-1]), n=1, cutoff=0.6)
    if not near:
        return ""
    return "; did you mean " + ".".join([*(str(p) for p in loc[:-1]), near[0]]) + "?"


def _source(loc: str, origin: str | None, overrides: list[tuple[str, str]]) -> str:
    """The `--set` that wrote this field (or a section above it), else the file."""
    for key, item in reversed(overrides):
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return f"from --set {item}"
    return f"from {origin}" if origin else "a default"


def format_validation_error(err: ValidationError, model: type[BaseModel], origin: str | None,
                            overrides: list[str]) -> str:  # fmt: skip
    keyed = [(item.partition("=")[0].strip(), item) for item in overrides]
    head = f"invalid config {origin}" if origin else "invalid config"
    lines = [head + (" with --set overrides:" if overrides else ":")]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + suggestion(model, tuple(e["loc"]))
        got = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        where = f"set it in the file or with --set {loc}=..." if e["type"] == "missing" else _source(loc, origin, keyed)
        lines.append(f"  {loc}: {msg}{shown} [{where}]")
    return "\n".join(lines)
