"""SQLite results store: one row per attacked (image, target) pair, written as it goes.

Each batch is committed in one transaction, so a run killed at any point keeps
every finished batch and loses nothing else; re-running the same command skips
the pairs already stored (see :func:`spatialadv.eval.runner.run_attack`).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["ResultStore", "StoreError", "encode_array", "decode_array", "encode_arrays", "decode_arrays", "array_to_text",
           "array_from_text"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY, model TEXT NOT NULL, attack TEXT NOT NULL,
    config TEXT NOT NULL, created REAL NOT NULL, tags TEXT NOT NULL DEFAULT '{}',
    planned INTEGER
);
CREATE TABLE IF NOT EXISTS records (
    run_key TEXT NOT NULL, idx INTEGER NOT NULL, target INTEGER NOT NULL,
    label INTEGER NOT NULL, clean_pred INTEGER, success INTEGER NOT NULL, pred INTEGER NOT NULL,
    l2 REAL, linf REAL, size REAL, flow_tv REAL, flow_l2 REAL,
    grad_evals INTEGER, forward_evals INTEGER, time_s REAL, params BLOB, x_adv BLOB, flow BLOB,
    PRIMARY KEY (run_key, idx, target)
);
CREATE TABLE IF NOT EXISTS items (
    run_key TEXT NOT NULL, item TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (run_key, item)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: Version of the table layout; a store written with another layout is refused with a clear error.
SCHEMA_VERSION = 3
#: Older layouts this version still reads and appends to: layout 2 named the ``grad_evals`` column ``iterations``.
_READABLE_VERSIONS = (2, SCHEMA_VERSION)
#: Columns renamed since layout 2 (new name → name in a layout-2 store).
_RENAMED = {"grad_evals": "iterations"}

_COLUMNS = ("run_key", "idx", "target", "label", "clean_pred", "success", "pred", "l2", "linf", "size", "flow_tv",
            "flow_l2", "grad_evals", "forward_evals", "time_s", "params", "x_adv", "flow")
_ARRAYS = ("params", "x_adv", "flow")


def encode_array(a: np.ndarray | None) -> bytes | None:
    """Serialise an array as ``.npy`` bytes (no pickle)."""
    if a is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def decode_array(b: bytes | None) -> np.ndarray | None:
    """Inverse of :func:`encode_array`."""
    if b is None:
        return None
    return np.load(io.BytesIO(b), allow_pickle=False)


def encode_arrays(arrays: dict[str, np.ndarray] | None) -> bytes | None:
    """Serialise named arrays as ``.npz`` bytes (no pickle); None or an empty dict gives None."""
    if not arrays:
        return None
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]  # numpy's stub types **kwds as its allow_pickle
    return buf.getvalue()


def decode_arrays(b: bytes | None) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays` (an empty dict for None)."""
    if b is None:
        return {}
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def array_to_text(a: np.ndarray) -> str:
    """An array as ASCII text (base64 of its ``.npy`` bytes), for arrays inside a task item's JSON value.

    A figure's masks or attention maps stored with :meth:`ResultStore.add_items` travel this way; dtype and
    shape are kept exactly (no pickle).
    """
    b = encode_array(np.asarray(a))
    assert b is not None  # only None for None
    return base64.b64encode(b).decode("ascii")


def array_from_text(s: str) -> np.ndarray:
    """Inverse of :func:`array_to_text`."""
    a = decode_array(base64.b64decode(s.encode("ascii")))
    assert a is not None  # only None for None
    return a


class StoreError(ValueError):
    """A results store that cannot be used: not a database, another layout, unwritable."""


def _damaged_as_store_error(method):
    """A store method whose SQLite or decoding errors on a damaged file become :class:`StoreError` naming the file."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as e:
            if any(w in str(e) for w in ("locked", "busy", "disk", "readonly", "read-only")):
                raise StoreError(f"cannot use results store {self.path}: {e}") from e  # in use or unwritable
            raise StoreError(f"results store {self.path} is damaged ({e}): use a new --out / --store, "
                             "or restore the file") from e
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise StoreError(f"results store {self.path} is damaged ({e}): use a new --out / --store, "
                             "or restore the file") from e
    return wrapper


class ResultStore:
    """Per-example records in an SQLite file.

    Two kinds of records: attack records (one row per attacked ``(idx, target)``
    pair, untargeted with ``target = -1``) and items (one JSON value per item
    of a non-attack run, e.g. a certificate per example and ε).

    Record fields (the keys of :meth:`add`'s rows and :meth:`records`'
    dicts) are ``_COLUMNS``; ``grad_evals`` is the attack's model gradient
    evaluations of the pair (``AttackResult.grad_evals``). A store written by
    an older version (table layout 2, whose column is named ``iterations``)
    is read and appended to as it is: the column is renamed in the queries,
    never in the file, so the older version can still open it.

    Args:
        path: database file; created with its folder when missing (unless ``readonly``).
        readonly: open an existing store for reading only (the reports, ``spatialadv evaluate``): the file is
            never created, modified or given tables, so a damaged or foreign file is left byte for byte as it was.

    Raises:
        StoreError: the path is a directory, not an SQLite database, written
            with another table layout, or not writable; with ``readonly``, a
            missing file or one without the store's tables.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = bool(readonly)
        if self.path.is_dir():
            raise StoreError(f"results store {self.path} is a directory, expected an SQLite file")
        if readonly and not self.path.is_file():
            raise StoreError(f"no results store at {self.path}")
        try:
            if readonly:
                self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
                tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"meta", "runs", "records", "items"} <= tables:
                    self.conn.close()
                    raise StoreError(f"{self.path} is not a spatialadv results store (it lacks the store's tables)")
                version = self.get_meta("schema_version")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(str(self.path), timeout=30)
                self.conn.executescript(_SCHEMA)
                self.conn.commit()
                version = self.get_meta("schema_version")
                if version is None:
                    self.set_meta("schema_version", SCHEMA_VERSION)
        except StoreError:
            self.conn.close()
            raise
        except (sqlite3.DatabaseError, UnicodeDecodeError, OSError) as e:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            raise StoreError(f"cannot use results store {self.path}: {e}") from e
        if version not in (None, *_READABLE_VERSIONS):
            self.conn.close()
            raise StoreError(f"results store {self.path} has table layout {version}, this version writes {SCHEMA_VERSION}: "
                             "write to a new --out / --store")
        try:
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(records)")}
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            self.conn.close()
            raise StoreError(f"results store {self.path} is damaged ({e}): use a new --out / --store, "
                             "or restore the file") from e
        if "clean_pred" not in cols:
            self.conn.close()
            raise StoreError(f"results store {self.path} was written by an older spatialadv: write to a new --out / --store")
        #: the SQL name of each record field in this file (the layout-2 names where the file has them)
        self._sql = {c: _RENAMED[c] if c in _RENAMED and c not in cols and _RENAMED[c] in cols else c for c in _COLUMNS}

    def close(self) -> None:
        """Close the SQLite connection; the store cannot be used afterwards."""
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # runs ----------------------------------------------------------------------------------
    @_damaged_as_store_error
    def register_run(self, run_key: str, model: str, attack: str, config: dict, *, tags: dict | None = None,
                     planned: int | None = None) -> None:
        """Record a run before its first record is written (so an interrupted folder lists it).

        Args:
            run_key: the run's key (:func:`spatialadv.eval.runner.run_key`).
            model: label of the model, as shown in reports.
            attack: label of the attack, as shown in reports.
            config: the attack's (or task's) JSON-able description.
            tags: JSON-able labels used by reports (e.g. ``{"eps": 0.1}``).
            planned: number of records planned, or None if unknown; registering
                a run again keeps the larger planned count.
        """
        with self.conn:
            self.conn.execute(
                "INSERT INTO runs (run_key, model, attack, config, created, tags, planned) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_key) DO UPDATE SET planned = MAX(COALESCE(planned, 0), COALESCE(excluded.planned, 0))",
                (run_key, model, attack, json.dumps(config, sort_keys=True), time.time(), json.dumps(tags or {}, sort_keys=True),
                 planned),
            )

    @_damaged_as_store_error
    def runs(self) -> list[dict]:
        """All registered runs in registration order (dicts: run_key, model, attack, config, created, tags, planned)."""
        cur = self.conn.execute("SELECT run_key, model, attack, config, created, tags, planned FROM runs ORDER BY created")
        return [dict(run_key=r[0], model=r[1], attack=r[2], config=self._json(r[3], f"run {r[0]}'s config"), created=r[4],
                     tags=self._json(r[5], f"run {r[0]}'s tags"), planned=r[6]) for r in cur]

    @_damaged_as_store_error
    def count(self, run_key: str) -> int:
        """Number of records (attack records and items) stored under ``run_key``."""
        a = self.conn.execute("SELECT COUNT(*) FROM records WHERE run_key = ?", (run_key,)).fetchone()[0]
        b = self.conn.execute("SELECT COUNT(*) FROM items WHERE run_key = ?", (run_key,)).fetchone()[0]
        return int(a) + int(b)

    # items ---------------------------------------------------------------------------------
    @_damaged_as_store_error
    def done_items(self, run_key: str) -> set[str]:
        """The items already stored for ``run_key``."""
        return {r[0] for r in self.conn.execute("SELECT item FROM items WHERE run_key = ?", (run_key,))}

    @_damaged_as_store_error
    def add_items(self, run_key: str, values: Mapping[str, object]) -> None:
        """Insert ``{item: JSON-able value}`` for ``run_key`` in one transaction."""
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                                  [(run_key, str(k), json.dumps(v)) for k, v in values.items()])

    @_damaged_as_store_error
    def items(self, run_key: str) -> dict[str, object]:
        """All items of ``run_key`` as ``{item: value}`` in insertion order."""
        cur = self.conn.execute("SELECT item, value FROM items WHERE run_key = ? ORDER BY rowid", (run_key,))
        return {k: self._json(v, f"item {k!r} of run {run_key}") for k, v in cur}

    # records -------------------------------------------------------------------------------
    @_damaged_as_store_error
    def done(self, run_key: str) -> set[tuple[int, int]]:
        """The ``(idx, target)`` pairs already stored for ``run_key``."""
        cur = self.conn.execute("SELECT idx, target FROM records WHERE run_key = ?", (run_key,))
        return {(int(a), int(b)) for a, b in cur}

    @_damaged_as_store_error
    def add(self, rows: list[dict]) -> None:
        """Insert rows (dicts with the record columns) in one transaction."""
        with self.conn:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO records ({', '.join(self._sql[c] for c in _COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                [tuple(r.get(c) for c in _COLUMNS) for r in rows],
            )

    @_damaged_as_store_error
    def records(self, run_key: str, *, arrays: bool = False) -> list[dict]:
        """All records of a run ordered by ``(idx, target)``.

        ``params`` is decoded to ``{name: array}`` (the threat model's
        parameters of the example); ``arrays`` also decodes ``x_adv``
        ``(C, H, W)`` and ``flow`` ``(2, H, W)`` (None for non-flow attacks).
        """
        cols = _COLUMNS if arrays else tuple(c for c in _COLUMNS if c not in ("x_adv", "flow"))
        sel = ", ".join(c if self._sql[c] == c else f"{self._sql[c]} AS {c}" for c in cols)
        cur = self.conn.execute(f"SELECT {sel} FROM records WHERE run_key = ? ORDER BY idx, target", (run_key,))
        out = []
        for r in cur:
            d = dict(zip(cols, r))
            try:
                d["params"] = decode_arrays(d["params"])
                if arrays:
                    d["x_adv"] = decode_array(d["x_adv"])
                    d["flow"] = decode_array(d["flow"])
            except Exception as e:  # numpy / zipfile raise ValueError, OSError, BadZipFile, EOFError on bad bytes
                raise StoreError(f"results store {self.path} is corrupt: the arrays of record (idx {d['idx']}, target "
                                 f"{d['target']}) of run {run_key} cannot be read ({type(e).__name__}); rebuild it with "
                                 "a new --out / --store") from None
            out.append(d)
        return out

    # metadata ------------------------------------------------------------------------------
    @_damaged_as_store_error
    def set_meta(self, key: str, value) -> None:
        """Store the JSON-able ``value`` under ``key`` in the store's metadata, replacing any previous value."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @_damaged_as_store_error
    def set_metas(self, values: dict) -> None:
        """Store several JSON-able metadata values in one transaction."""
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    @_damaged_as_store_error
    def get_meta(self, key: str, default=None):
        """The metadata value stored under ``key`` (decoded from JSON), or ``default`` if there is none."""
        r = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if r is None else self._json(r[0], f"metadata {key!r}")

    def _json(self, text, what: str):
        """``json.loads(text)``; a value that is not JSON means a corrupt store: :class:`StoreError` naming ``what``."""
        try:
            return json.loads(text)
        except (TypeError, ValueError) as e:
            raise StoreError(f"results store {self.path} is corrupt: its {what} is not valid JSON ({e}); "
                             "rebuild it with a new --out / --store") from e
