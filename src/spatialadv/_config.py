"""Frozen-dataclass configs whose fields carry their CLI help: one source for defaults, options and validation.

A field declared with :func:`option` holds its default, its one-line help and how the command line spells it;
:func:`add_config_arguments` generates the ``--options`` of a parser from a Config instance,
:func:`config_from_args` reads them back, :func:`validate_config` checks each declared domain, and
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

__all__ = ["option", "option_name", "INT_MAX", "MAX_THREADS", "add_config_arguments", "config_from_args", "validate_config", "config_to_dict", "config_from_dict"]

# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------
#: Most torch intra-op threads an option (``--threads``) accepts.
MAX_THREADS = 1024
#: Largest integer an option accepts unless it declares a smaller ``maximum`` (seeds, counts: SQLite's and torch's int64).
INT_MAX = 2**63 - 1


def option(default: Any, help: str, *, choices: Iterable | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | None = None, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None, finite: bool = True,
           check: Callable[[Any], str | None] | None = None, sep: str | None = None) -> Any:
    """Declare a field of a ``Config`` (an experiment's, the audit's): its default, its CLI help and its domain.

    The domain is declared here, once, and checked by :func:`validate_config` (before any work, with the message
    naming the CLI option); a tuple field's bounds apply to each of its values, an optional field's ``None`` is
    always accepted.

    Args:
        default: the default value (immutable: numbers, strings, None, tuples).
        help: one line for ``--help``.
        choices: accepted values (of each element for tuple fields).
        parse: converts one command-line token (overrides the type's parser).
        metavar: the CLI placeholder.
        minimum: inclusive lower bound of a number field.
        maximum: inclusive upper bound.
        above: exclusive lower bound (e.g. a probability: ``above=0, below=1``).
        below: exclusive upper bound.
        finite: refuse ±inf for a float field (NaN is always refused; an int field's values lie within
            ±:data:`INT_MAX`).
        check: ``check(value) -> None | "must be ..."``: a further rule of each value (e.g. "0 or >= 2"),
            its return value completing the message ``--option must be ...``.
        sep: for a tuple field, its values as one token split on ``sep`` (e.g. ``--threats linf,stm``)
            instead of space-separated tokens; ``choices`` are then left to the Config's own validation.

    Returns:
        A :func:`dataclasses.field`.
    """
    meta = {"help": help, "choices": None if choices is None else tuple(choices), "parse": parse, "metavar": metavar,
            "minimum": minimum, "maximum": maximum, "above": above, "below": below, "finite": finite, "check": check,
            "sep": sep}
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

    The help ends with the default and, for a bounded number field, its domain (``default: 0.3; a finite number in
    (0, 1]``). Options left out on the command line keep ``default``'s value (see :func:`config_from_args`). An option the
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
        dom = ""
        leaf = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
        if leaf in (int, float) and any(meta.get(k) is not None for k in ("minimum", "maximum", "above", "below")):
            dom = "; " + _domain(meta, leaf)
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name,
                              "help": f"{meta['help']} (default: {shown}{dom})".replace("%", "%%")}
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
    hints = typing.get_type_hints(type(default))
    for f in dataclasses.fields(default):
        if f.name in given:
            v = given[f.name]
            changes[f.name] = tuple(v) if isinstance(v, list) else v
            _check_field(f, hints[f.name], changes[f.name])  # each option in its domain before the cross-field checks
    return dataclasses.replace(default, **changes)


def option_name(name: str) -> str:
    """The CLI spelling of a Config field: ``max_train`` → ``--max-train``."""
    return "--" + name.replace("_", "-")


def _domain(meta: Mapping, kind: type, value=None) -> str:
    """The declared domain of a number field in words, e.g. ``in (0, 1)``, ``>= 1``, ``an integer in [0, 2**63-1]``.

    An int field's implicit maximum (:data:`INT_MAX`) is named only for a ``value`` above it.
    """
    lo, hi = meta.get("minimum"), meta.get("maximum")
    above, below = meta.get("above"), meta.get("below")
    if kind is int and hi is None and below is None and (isinstance(value, int) and value > INT_MAX):
        hi = INT_MAX
    left = None if lo is None and above is None else ("[" if above is None else "(")
    lo_v = lo if above is None else above
    right = None if hi is None and below is None else ("]" if below is None else ")")
    hi_v = hi if below is None else below

    def g(v):
        return "2**63-1" if v == INT_MAX else f"{v:g}"

    what = "an integer" if kind is int else ("a finite number" if meta.get("finite", True) else "a number (inf allowed)")
    if left and right:
        return f"{what} in {left}{g(lo_v)}, {g(hi_v)}{right}"
    if left:
        return f"{what} {'>=' if left == '[' else '>'} {g(lo_v)}"
    if right:
        return f"{what} {'<=' if right == ']' else '<'} {g(hi_v)}"
    return what


def _problem(meta: Mapping, kind: type, u) -> str | None:
    """Why the value ``u`` of a field is outside its declared domain ("must be ..."), or None."""
    if kind is bool or kind is str:
        return None
    if kind is int:
        if isinstance(u, bool) or not isinstance(u, int):
            return "must be " + _domain(meta, kind, u)
    elif kind is float:
        if isinstance(u, bool) or not isinstance(u, (int, float)) or math.isnan(u) \
                or (meta.get("finite", True) and math.isinf(u)):
            return "must be " + _domain(meta, kind, u)
    else:
        return None
    lo, hi = meta.get("minimum"), meta.get("maximum")
    above, below = meta.get("above"), meta.get("below")
    if kind is int and hi is None and below is None:
        hi = INT_MAX
    if kind is int and (lo is None and above is None):
        lo = -INT_MAX - 1
    if (lo is not None and u < lo) or (hi is not None and u > hi) or (above is not None and u <= above) \
            or (below is not None and u >= below):
        return "must be " + _domain(meta, kind, u)
    check = meta.get("check")
    why = None if check is None else check(u)
    return None if why is None else "must be " + why


def validate_config(cfg: Any) -> None:
    """Check every field declared with :func:`option` against its declared domain (type, bounds, finiteness, ``check``).

    Number fields (int, float; in tuples, pairs and optionals too) must lie within their bounds; a float must
    not be NaN, nor ±inf unless declared ``finite=False``; an int must lie within ±2**63 unless narrower.

    Raises:
        ValueError: the first field outside its domain; the message names the CLI option (``--max-train``),
            the domain and the value given.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        _check_field(f, hints[f.name], getattr(cfg, f.name))


def _check_field(f: dataclasses.Field, tp, v) -> None:
    """Check the value ``v`` of the Config field ``f`` (type ``tp``) against its declared domain."""
    meta = f.metadata
    if "help" not in meta or v is None:
        return
    shape, kind = _shape(tp)
    if shape == "tuple" and typing.get_origin(kind) is tuple:  # e.g. tuple[tuple[int, int], ...]: check the leaves
        kind = typing.get_args(kind)[0]
        vals = tuple(u for t in v for u in (t if isinstance(t, tuple) else (t,)))
    else:
        vals = v if isinstance(v, tuple) else (v,)
    for u in vals:
        why = _problem(meta, kind, u)
        if why:
            raise ValueError(f"{option_name(f.name)} {why}, got {v!r}")


def config_to_dict(cfg: Any) -> dict:
    """The JSON-able value of a Config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type, values: dict) -> Any:
    """Rebuild a Config stored with :func:`config_to_dict` (lists become tuples, nested too)."""
    def tup(v):
        return tuple(tup(u) for u in v) if isinstance(v, list) else v

    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tup(v) for k, v in values.items() if k in known})
