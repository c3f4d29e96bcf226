"""Loading any config model: YAML in, `--set a.b=value` overrides applied, validated, errors naming the field.

Every model forbids unknown keys, so a typo fails at load with the dotted path of the field
(`sampling.sets.0.num_frames: ...`) instead of being ignored. The run and the trainer load their configs here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core.config_errors import format_validation_error
from pipeline.core.redact import redacted


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: `1e-4` and `2E6` are floats, not the strings PyYAML's 1.1 rules make of them
    (a strict number field would refuse the string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str) -> Any:
    """A config file's text or a `--set` value as YAML (safe: plain data only)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (["a", "b", "0", "c"], value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.path=value")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {e}") from None
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `value` at `path` inside nested dicts/lists, creating dicts as needed."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {'.'.join(path)}: {where} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if node is None:
                    node = {}
        else:
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:i])} is a value, not a section")


def load_config(
    path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    model: type[BaseModel],
) -> Any:
    """Load YAML (or start empty), apply `key=value` overrides, validate into `model`.

    A model with a `prefill(data)` classmethod fills list-valued defaults first, so an override can address
    an item of a default list (`--set sampling.sets.0.num_frames=64`).
    """
    data: dict[str, Any] = {}
    origin = None
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
        try:
            loaded = parse_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    prefill = getattr(model, "prefill", None)
    if prefill is not None:
        data = prefill(data)
    for item in overrides:
        key_path, value = parse_override(item)
        apply_override(data, key_path, value)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, origin, list(overrides))) from None


def config_record(cfg: BaseModel) -> dict[str, Any]:
    """The config as written into a run's files: JSON-ready, secrets redacted."""
    return redacted(cfg.model_dump(mode="json"))


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML: what every output directory keeps beside its results (secrets redacted)."""
    return yaml.safe_dump(config_record(cfg), sort_keys=False)


def write_resolved_config(cfg: BaseModel, out_dir: str | Path, name: str = "config.resolved.yaml") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(dump_config(cfg))
    return target
