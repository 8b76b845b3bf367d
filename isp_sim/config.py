"""Small experiment configs: YAML files (read with ``yaml.safe_load``) -> validated dataclass sections.

Every package's config (``pynet.train``, ``dir.config``, ``tasks.config``, ``evaluate.demo``) is a dataclass of
dataclass sections built with these helpers, so that a typo, a wrong type or a missing file gets the same clear
error everywhere, naming the file and the section.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


def build_section(cls: type, values: Mapping[str, Any] | None, where: str, error: type[Exception] = ValueError):
    """``cls(**values)`` for a dataclass ``cls``; unknown keys, a non-mapping or bad values raise ``error`` naming
    ``where`` (e.g. ``"config.yaml: section 'optim'"``). ``None`` gives the defaults."""
    if values is not None and not isinstance(values, Mapping):
        raise error(f"{where} must be a mapping, got {type(values).__name__}")
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise error(f"unknown key(s) in {where}: {unknown}; allowed: {sorted(names)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise error(f"bad values in {where}: {e}") from e


def check_sections(d: Mapping[str, Any], allowed: Iterable[str], where: str,
                   error: type[Exception] = ValueError) -> None:
    """Raise ``error`` when ``d`` has top-level keys outside ``allowed``."""
    allowed = set(allowed)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown} at the top level; sections allowed: {sorted(allowed)}")


def read_yaml_mapping(path: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """Read a YAML file with ``yaml.safe_load``; an empty file is ``{}``. A missing file raises
    ``FileNotFoundError``; unparsable YAML or a non-mapping top level raise ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            d = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise error(f"config {path} is not valid YAML: {e}") from e
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise error(f"config {path} must be a YAML mapping, got {type(d).__name__}")
    return d


def apply_overrides(d: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None,
                    error: type[Exception] = ValueError) -> dict[str, Any]:
    """Set dotted keys in ``d`` (in place, returned): ``["run.max_steps=20", ...]`` (values parsed as YAML) or
    ``{"run.max_steps": 20}``."""
    if not overrides:
        return d
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for ov in overrides:
            if "=" not in ov:
                raise error(f"override {ov!r} must look like section.key=value")
            k, v = ov.split("=", 1)
            items.append((k.strip(), yaml.safe_load(v)))
    for key, value in items:
        parts = key.split(".")
        cur = d
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise error(f"override {key!r}: {p!r} is not a section")
        cur[parts[-1]] = value
    return d
