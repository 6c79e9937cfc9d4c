"""``--set KEY=VALUE``: the one syntax of config overrides on the command line (``vitlab bench``, ``export``,
``attention``).

VALUE is YAML (``depth=6``, ``qk_norm=true``, ``layer_scale_init=null``, ``img_size=[32, 48]``,
``tokenizer_options={layers: 2}``); a bare comma list is a tuple (``img_size=32,48``), ``none`` is None and ``1e-5``
a number. A dotted KEY sets one entry of a mapping field (``tokenizer_options.layers=2``). KEY must be a
``ViTConfig`` field.
"""
from __future__ import annotations

import argparse
import re
from typing import Any, Sequence

import yaml

from .config import RENAMED_FIELDS, ViTConfig, renamed_message

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
SET_HELP = ("ViTConfig override, repeatable: KEY=VALUE with a YAML value, e.g. --set depth=6 --set img_size=32,48 "
            "--set 'tokenizer_options={layers: 2}' or --set tokenizer_options.layers=2")


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML, a comma list as a tuple of YAML values, ``none`` as None, ``1e-5`` as a float."""
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"cannot read {text!r} as a YAML value: {' '.join(str(err).split())}") from None
    if isinstance(value, str) and not text.startswith(("'", '"')):
        if "," in value:
            return tuple(parse_value(part) for part in text.split(",") if part.strip())
        if _NUMBER.match(value):  # YAML 1.1 reads 1e-5 (no dot) as a string
            return float(value)
    return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"tokenizer_options.layers=2"`` -> ``(["tokenizer_options", "layers"], 2)``; ``ValueError`` (one line)
    for a missing ``=`` or a KEY that is not a ``ViTConfig`` field."""
    key, eq, value = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not eq or not all(path):
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    if path[0] in RENAMED_FIELDS:
        raise ValueError(renamed_message({path[0]: parse_value(value)}))
    if path[0] not in ViTConfig.field_names():
        raise ValueError(f"--set {item}: unknown config key {path[0]!r}; valid keys: {sorted(ViTConfig.field_names())}")
    return path, parse_value(value)


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["depth=6", "tokenizer=cct", "tokenizer_options.layers=2"]`` -> ``{"depth": 6, "tokenizer": "cct",
    "tokenizer_options": {"layers": 2}}``; later items win, dotted keys fill in the mapping."""
    out: dict[str, Any] = {}
    for item in items or []:
        path, value = parse_override(item)
        node = out
        for name in path[:-1]:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        node[path[-1]] = value
    return out


def _checked(item: str) -> str:
    """argparse ``type`` of ``--set``: the item unchanged, or a usage error saying what is wrong."""
    try:
        parse_override(item)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return item


def add_set_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The ``--set KEY=VALUE`` option, checked as the command line is parsed; read it with :func:`parse_overrides`."""
    parser.add_argument("--set", action="append", default=[], type=_checked, metavar="KEY=VALUE", help=SET_HELP)


__all__ = ["SET_HELP", "add_set_argument", "parse_overrides", "parse_override", "parse_value"]
