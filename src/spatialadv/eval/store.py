"""SQLite results store: one row per attacked (image, target) pair, written as it goes.

Each batch is committed in one transaction, so a run killed at any point keeps
every finished batch and loses nothing else; re-running the same command skips
the pairs already stored (see :func:`spatialadv.eval.runner.run_attack`).
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import numpy as np

__all__ = ["ResultStore", "encode_array", "decode_array"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY, model TEXT NOT NULL, attack TEXT NOT NULL,
    config TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    run_key TEXT NOT NULL, idx INTEGER NOT NULL, target INTEGER NOT NULL,
    label INTEGER NOT NULL, success INTEGER NOT NULL, pred INTEGER NOT NULL,
    l2 REAL, linf REAL, size REAL, flow_tv REAL, flow_l2 REAL,
    iterations INTEGER, time_s REAL, x_adv BLOB, flow BLOB,
    PRIMARY KEY (run_key, idx, target)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = ("run_key", "idx", "target", "label", "success", "pred", "l2", "linf", "size", "flow_tv", "flow_l2",
            "iterations", "time_s", "x_adv", "flow")


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


class ResultStore:
    """Per-example attack records in an SQLite file.

    Args:
        path: database file; created with its folder when missing.

    Untargeted records are stored with ``target = -1``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=30)
        self.conn.executescript(_SCHEMA)
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # runs ----------------------------------------------------------------------------------
    def register_run(self, run_key: str, model: str, attack: str, config: dict) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?)",
                (run_key, model, attack, json.dumps(config, sort_keys=True), time.time()),
            )

    def runs(self) -> list[dict]:
        cur = self.conn.execute("SELECT run_key, model, attack, config, created FROM runs ORDER BY created")
        return [dict(run_key=r[0], model=r[1], attack=r[2], config=json.loads(r[3]), created=r[4]) for r in cur]

    # records -------------------------------------------------------------------------------
    def done(self, run_key: str) -> set[tuple[int, int]]:
        """The ``(idx, target)`` pairs already stored for ``run_key``."""
        cur = self.conn.execute("SELECT idx, target FROM records WHERE run_key = ?", (run_key,))
        return {(int(a), int(b)) for a, b in cur}

    def add(self, rows: list[dict]) -> None:
        """Insert rows (dicts with the record columns) in one transaction."""
        with self.conn:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                [tuple(r.get(c) for c in _COLUMNS) for r in rows],
            )

    def records(self, run_key: str, *, arrays: bool = False) -> list[dict]:
        """All records of a run ordered by ``(idx, target)``; ``arrays`` also decodes
        ``x_adv`` ``(C, H, W)`` and ``flow`` ``(2, H, W)``."""
        cols = _COLUMNS if arrays else _COLUMNS[:-2]
        cur = self.conn.execute(f"SELECT {', '.join(cols)} FROM records WHERE run_key = ? ORDER BY idx, target", (run_key,))
        out = []
        for r in cur:
            d = dict(zip(cols, r))
            if arrays:
                d["x_adv"] = decode_array(d["x_adv"])
                d["flow"] = decode_array(d["flow"])
            out.append(d)
        return out

    # metadata ------------------------------------------------------------------------------
    def set_meta(self, key: str, value) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        r = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if r is None else json.loads(r[0])
