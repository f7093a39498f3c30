"""Frozen-dataclass configs whose fields carry their CLI help: one source for defaults, options and validation.

A field declared with :func:`option` holds its default, its one-line help and how the command line spells it;
:func:`add_config_arguments` generates the ``--options`` of a parser from a Config instance,
:func:`config_from_args` reads them back, :func:`validate_config` checks declared minimums, and
:func:`config_to_dict` / :func:`config_from_dict` store a Config as JSON. Used by the experiments' Configs
(:mod:`spatialadv.experiments.framework`) and the audit's (:class:`spatialadv.audit.AuditConfig`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any

__all__ = ["option", "add_config_arguments", "config_from_args", "validate_config", "config_to_dict", "config_from_dict"]

# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------
def option(default: Any, help: str, *, choices: Iterable | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | None = None, minimum: float | None = None, sep: str | None = None) -> Any:
    """Declare a field of a ``Config`` (an experiment's, the audit's): its default and its CLI help.

    Args:
        default: the default value (immutable: numbers, strings, None, tuples).
        help: one line for ``--help``.
        choices: accepted values (of each element for tuple fields).
        parse: converts one command-line token (overrides the type's parser).
        metavar: the CLI placeholder.
        minimum: lowest accepted value of a number field (checked by :func:`validate_config`).
        sep: for a tuple field, its values as one token split on ``sep`` (e.g. ``--threats linf,stm``)
            instead of space-separated tokens; ``choices`` are then left to the Config's own validation.

    Returns:
        A :func:`dataclasses.field`.
    """
    meta = {"help": help, "choices": None if choices is None else tuple(choices), "parse": parse, "metavar": metavar,
            "minimum": minimum, "sep": sep}
    return field(default=default, metadata=meta)


def _parse_optional(kind: type) -> Callable[[str], Any]:
    def parse(s: str):
        return None if s.lower() in ("none", "all") else kind(s)

    parse.__name__ = kind.__name__
    return parse


def _parse_split(kind: Callable[[str], Any], sep: str) -> Callable[[str], tuple]:
    def parse(s: str) -> tuple:
        return tuple(kind(v.strip()) for v in s.split(sep) if v.strip())

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _shape(tp) -> tuple[str, Any]:
    """``("scalar" | "optional" | "tuple" | "pair", element type)`` of a Config field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return "optional", args[0]
    if origin is tuple:
        targs = typing.get_args(tp)
        if len(targs) == 2 and targs[1] is Ellipsis:
            return "tuple", targs[0]
        return "pair", targs[0]
    return "scalar", tp


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: Any) -> None:
    """Add one ``--option`` per field of the Config instance ``default`` (type, default and help from the field).

    Options left out on the command line keep ``default``'s value (see :func:`config_from_args`). An option the
    parser already has (a shared one such as ``--threads``, see :mod:`spatialadv.cli`) is not added again: the
    shared option must store into the field's name with ``default=argparse.SUPPRESS``. ``%`` in the help is
    escaped (argparse %-formats help strings).
    """
    hints = typing.get_type_hints(type(default))
    for f in dataclasses.fields(default):
        meta = f.metadata
        if "help" not in meta:
            continue
        value = getattr(default, f.name)
        shape, kind = _shape(hints[f.name])
        name = "--" + f.name.replace("_", "-")
        if name in parser._option_string_actions:
            continue
        sep = meta.get("sep")
        if isinstance(value, tuple) and not (value and isinstance(value[0], tuple)):
            shown = (sep or " ").join(map(str, value))
        else:
            shown = value
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name,
                              "help": f"{meta['help']} (default: {shown})".replace("%", "%%")}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if kind is bool and shape == "scalar":
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kw)
            continue
        parse = meta.get("parse") or (_parse_optional(kind) if shape == "optional" else kind)
        if shape == "tuple" and sep:
            parser.add_argument(name, type=_parse_split(parse, sep), **kw)
            continue
        if shape == "tuple":
            kw["nargs"] = "*" if f.name == "budgets" else "+"
        elif shape == "pair":
            kw["nargs"] = len(typing.get_args(hints[f.name]))
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        parser.add_argument(name, type=parse, **kw)


def config_from_args(default: Any, args: argparse.Namespace) -> Any:
    """``default`` with the fields given on the command line replaced (validated by the Config).

    An option left out keeps ``default``'s value; ``none`` given for an optional field sets it to None.
    """
    given = vars(args)
    changes = {}
    for f in dataclasses.fields(default):
        if f.name in given:
            v = given[f.name]
            changes[f.name] = tuple(v) if isinstance(v, list) else v
    return dataclasses.replace(default, **changes)


def validate_config(cfg: Any) -> None:
    """Check the ``minimum`` of every number field declared with :func:`option`.

    Raises:
        ValueError: a field below its minimum (the message names the CLI option).
    """
    for f in dataclasses.fields(cfg):
        lo = f.metadata.get("minimum")
        v = getattr(cfg, f.name)
        if lo is None or v is None:
            continue
        vals = v if isinstance(v, tuple) else (v,)
        if any(not isinstance(u, (int, float)) or isinstance(u, bool) or math.isnan(u) or u < lo for u in vals):
            raise ValueError(f"--{f.name.replace('_', '-')} must be >= {lo:g}, got {v!r}")


def config_to_dict(cfg: Any) -> dict:
    """The JSON-able value of a Config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type, values: dict) -> Any:
    """Rebuild a Config stored with :func:`config_to_dict` (lists become tuples, nested too)."""
    def tup(v):
        return tuple(tup(u) for u in v) if isinstance(v, list) else v

    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tup(v) for k, v in values.items() if k in known})
