"""Numbers with their 95 % intervals, and tables of ours beside the paper's.

Every rate and mean a report prints is an :class:`Estimate`: the value, its
95 % interval, the sample size and the interval's method. A
:class:`Comparison` is a table whose cells put an estimate beside the paper's
number (:class:`PaperValue`: value and source, paper and table/figure) and say
whether the paper's number lies inside our interval. Both render the same way
in every report's Markdown and in its ``report.json``.

Intervals (stated in every caption that uses them):

* **rates** over independent trials: Clopper–Pearson (exact binomial, from
  SciPy's beta quantiles); over pairs that share images (stAdv's 9 targets
  per image), Clopper–Pearson on the **effective number of trials** n / deff,
  with the design effect deff measured from the between-image variance of the
  per-image rates (Kish), clipped to [1, pairs per image], and taken as the
  mean pairs per image when every pair agrees (0 % or 100 %);
* **means** (D̄, flow TV and L2, distortions): percentile bootstrap over the
  examples (clusters, if given), 2 000 resamples, seeded — no normality
  assumption for the skewed distortion distributions; with fewer than two
  values the interval is undefined (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..references import PAPERS

__all__ = ["Estimate", "rate", "rate_sum", "mean", "PaperValue", "Cell", "Metric", "Comparison", "run_estimates", "interval_note",
           "CONFIDENCE", "RESAMPLES", "METHODS"]

#: Confidence level of every interval a report prints.
CONFIDENCE = 0.95
#: Bootstrap resamples (cluster bootstrap for rates, percentile bootstrap for means).
RESAMPLES = 2000

#: The interval methods and how a caption names them.
METHODS = {
    "clopper-pearson": "Clopper–Pearson (exact binomial)",
    "clopper-pearson-clustered": "Clopper–Pearson on the effective number of trials (pairs of one image are "
                                 "correlated: n divided by the measured design effect, or by the pairs per image "
                                 "when every pair agrees)",
    "cluster-bootstrap": f"cluster bootstrap over images ({RESAMPLES} resamples, percentile)",
    "bootstrap": f"percentile bootstrap ({RESAMPLES} resamples)",
    "clopper-pearson-sum": "for a sum of rates, the sum of their Clopper–Pearson intervals at level 1 − 0.05/k each "
                           "(k rates; union bound)",
    "exact": "no sampling (computed on every element)",
}


@dataclass(frozen=True)
class Estimate:
    """A measured rate or mean with its 95 % interval.

    Attributes:
        value: the point estimate (NaN when undefined, e.g. a mean over no successes).
        low, high: the interval's ends (NaN when undefined).
        n: the number of trials (rate) or values (mean) it rests on.
        method: ``"clopper-pearson"``, ``"clopper-pearson-clustered"``, ``"cluster-bootstrap"``, ``"bootstrap"``
            or ``"exact"``.
        k: successes, for a rate (None for a mean).
    """

    value: float
    low: float
    high: float
    n: int
    method: str
    k: int | None = None

    @staticmethod
    def plain(value: float | None) -> Estimate:
        """A number without an interval (a time, a count, a median).

        Rendered as the value alone, never named in a caption's interval sentence (``method="exact"``, ``n = 1``).
        """
        v = math.nan if value is None else float(value)
        return Estimate(v, math.nan, math.nan, 1, "exact")

    def contains(self, v: float) -> bool | None:
        """Whether ``v`` lies inside ``[low, high]``; None when the interval is undefined."""
        if any(isinstance(u, float) and math.isnan(u) for u in (self.low, self.high)) or v is None:
            return None
        return bool(self.low - 1e-12 <= v <= self.high + 1e-12)

    def format(self, digits: int = 2, pct: bool = False) -> str:
        """``"97.4 [96.3, 98.3]"`` (× 100 with ``pct``); ``"–"`` when the value is undefined."""
        if self.value is None or math.isnan(self.value):
            return "–"
        s = 100.0 if pct else 1.0
        if math.isnan(self.low) or math.isnan(self.high):
            return f"{s * self.value:.{digits}f}"
        return f"{s * self.value:.{digits}f} [{s * self.low:.{digits}f}, {s * self.high:.{digits}f}]"

    def order(self, other: Estimate | None) -> str:
        """How this estimate compares with ``other`` by their 95 % intervals.

        Returns ``"lower"`` (this interval lies wholly below the other's), ``"higher"`` (wholly above), ``"tie
        (intervals overlap)"``, or ``"not measured"`` (``other`` is None, either rests on no values, or an
        interval end is undefined). A claim such as "attack A leaves a lower accuracy than B" holds at the 95 %
        level only with ``"lower"``; a tie is not evidence either way.
        """
        if other is None or self.n == 0 or other.n == 0:
            return "not measured"
        ends = (self.value, self.low, self.high, other.value, other.low, other.high)
        if any(v is None or math.isnan(v) for v in ends):
            return "not measured"
        if self.high < other.low:
            return "lower"
        if self.low > other.high:
            return "higher"
        return "tie (intervals overlap)"

    def to_json(self) -> dict:
        """``{"value", "ci95": [low, high], "n", "method"}`` (``"k"`` for rates); NaN becomes None."""
        def clean(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        out = {"value": clean(self.value), "ci95": [clean(self.low), clean(self.high)], "n": int(self.n),
               "method": self.method}
        if self.k is not None:
            out["k"] = int(self.k)
        return out

    @classmethod
    def from_json(cls, j: dict) -> Estimate:
        """The estimate of its :meth:`to_json` (None becomes NaN): reports built from JSON-able results render it."""
        nan = (lambda v: math.nan if v is None else float(v))
        return cls(nan(j["value"]), nan(j["ci95"][0]), nan(j["ci95"][1]), int(j["n"]), j["method"], j.get("k"))

    def __str__(self) -> str:
        return self.format()


def _cluster_index(clusters) -> tuple[np.ndarray, int] | None:
    """``(inverse index, number of clusters)`` when some cluster holds more than one element, else None."""
    if clusters is None:
        return None
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(inv.max()) + 1 if inv.size else 0
    return (inv, n_clusters) if n_clusters < inv.size else None


def _cluster_mean_interval(values: np.ndarray, inv: np.ndarray, n_clusters: int, seed: int,
                           confidence: float) -> tuple[float, float]:
    """Percentile interval of the mean of ``values``, resampling whole clusters.

    The vectorised :func:`bootstrap` of a mean: the same draws, so the same interval.
    """
    rng = np.random.default_rng(seed)
    sums = np.bincount(inv, weights=values, minlength=n_clusters)
    sizes = np.bincount(inv, minlength=n_clusters).astype(np.float64)
    draws = rng.integers(0, n_clusters, size=(RESAMPLES, n_clusters))
    counts = np.stack([np.bincount(d, minlength=n_clusters) for d in draws])
    means = (counts @ sums) / (counts @ sizes)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def rate(successes, n: int | None = None, *, clusters=None, confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """A rate with its interval.

    Args:
        successes: the number of successes (int, with ``n``), or a 1-D array of per-trial outcomes (bool / 0-1).
        n: the number of trials when ``successes`` is a count.
        clusters: optional per-trial cluster ids (e.g. the image index of each (image, target) pair); when some
            cluster holds several trials the interval is Clopper–Pearson on the effective number of trials
            (``method="clopper-pearson-clustered"``), else Clopper–Pearson.
        confidence: the interval's level (default 0.95).
        seed: the bootstrap's seed.

    Returns:
        An :class:`Estimate`; value and interval NaN when ``n = 0``.

    Raises:
        ValueError: ``successes`` outside ``[0, n]``, ``n`` missing for a count, or ``clusters`` of another length.
    """
    if n is None:
        arr = np.asarray(successes, dtype=np.float64).reshape(-1)
        if arr.size and not np.isin(arr, (0.0, 1.0)).all():
            raise ValueError("successes must be 0/1 (or bool) per trial")
        k, n = int(arr.sum()), int(arr.size)
    else:
        if isinstance(successes, (np.ndarray, list, tuple)):
            raise ValueError("pass either a count of successes with n, or per-trial outcomes without n")
        k, n = int(successes), int(n)
        arr = None
        if not 0 <= k <= n:
            raise ValueError(f"successes must lie in [0, n], got {k} of {n}")
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "clopper-pearson", 0)
    if clusters is not None and arr is not None and len(clusters) != n:
        raise ValueError(f"clusters must have one id per trial ({n}), got {len(clusters)}")
    ci = _cluster_index(clusters) if arr is not None else None
    if ci is not None:
        inv, n_clusters = ci
        m_c = np.bincount(inv, minlength=n_clusters).astype(np.float64)
        p = k / n
        if 0 < k < n and n_clusters > 1:
            p_c = np.bincount(inv, weights=arr, minlength=n_clusters) / m_c
            var_cluster = np.sum((m_c / m_c.mean()) ** 2 * (p_c - p) ** 2) / (n_clusters * (n_clusters - 1))
            deff = float(np.clip(var_cluster / (p * (1 - p) / n), 1.0, m_c.max()))
        else:  # no variation to estimate the correlation from: as if every pair of an image agreed
            deff = float(m_c.mean())
        lo, hi = _clopper_pearson(p * n / deff, n / deff, confidence)
        return Estimate(p, lo, hi, n, "clopper-pearson-clustered", k)
    lo, hi = _clopper_pearson(k, n, confidence)
    return Estimate(k / n, lo, hi, n, "clopper-pearson", k)


def rate_sum(estimates: Sequence[Estimate], confidence: float = CONFIDENCE) -> Estimate:
    """The sum of rates (e.g. a table's "Sum" column of accuracies), with a simultaneous interval.

    Each rate's Clopper–Pearson interval is recomputed at level ``1 − (1 − confidence) / k`` (k rates) from its ``k``
    and ``n``; the ends are added (union bound: coverage ≥ ``confidence`` whatever the dependence between the rates).

    Raises:
        ValueError: an estimate without a count (not a rate).
    """
    if any(e.k is None for e in estimates):
        raise ValueError("rate_sum needs rates (estimates with a count k)")
    if not estimates or any(e.n == 0 for e in estimates):
        return Estimate(math.nan, math.nan, math.nan, 0, "clopper-pearson-sum")
    level = 1 - (1 - confidence) / len(estimates)
    ends = [_clopper_pearson(e.k, e.n, level) for e in estimates if e.k is not None]  # every k is set (checked above)
    return Estimate(sum(e.value for e in estimates), sum(lo for lo, _ in ends), sum(hi for _, hi in ends),
                    sum(e.n for e in estimates), "clopper-pearson-sum")


def _clopper_pearson(k: float, n: float, confidence: float) -> tuple[float, float]:
    """The exact binomial interval from beta quantiles (``k``, ``n`` may be effective, non-integer counts)."""
    a = (1 - confidence) / 2
    lo = 0.0 if k <= 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k >= n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def mean(values, *, clusters=None, confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """A mean with its percentile-bootstrap interval.

    Args:
        values: 1-D array of finite values (e.g. the L2 distortion of each successful example).
        clusters: optional cluster ids (resampled as wholes when some cluster holds several values).
        confidence: the interval's level.
        seed: the bootstrap's seed.

    Returns:
        An :class:`Estimate` (``method="bootstrap"`` or ``"cluster-bootstrap"``); NaN value with no values, NaN
        interval with fewer than two values or all of them in one cluster (all equal: the interval is the value
        itself).

    Raises:
        ValueError: non-finite values, or ``clusters`` of another length.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    if v.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "bootstrap")
    m = float(v.mean())
    if v.size < 2:
        return Estimate(m, math.nan, math.nan, 1, "bootstrap")
    if clusters is not None and len(clusters) != v.size:
        raise ValueError(f"clusters must have one id per value ({v.size}), got {len(clusters)}")
    ci = _cluster_index(clusters)
    if ci is not None and ci[1] < 2:  # one image: resampling it always draws the same values
        return Estimate(m, math.nan, math.nan, int(v.size), "cluster-bootstrap")
    if ci is not None:
        lo, hi = _cluster_mean_interval(v, ci[0], ci[1], seed, confidence)
        return Estimate(m, lo, hi, int(v.size), "cluster-bootstrap")
    if np.ptp(v) == 0:
        return Estimate(m, m, m, int(v.size), "bootstrap")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(RESAMPLES, v.size))].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return Estimate(m, float(lo), float(hi), int(v.size), "bootstrap")


def bootstrap(columns: Sequence, stat, clusters, *, seed: int = 0) -> Estimate:
    """Any statistic of paired columns with its percentile-bootstrap interval, resampling whole clusters (images).

    For statistics that are not means (a standard deviation, a ratio of means, e.g. stAdv Table 6): :data:`RESAMPLES`
    resamples, seeded, as :func:`mean` does; the clusters are resampled as wholes.

    Args:
        columns: 1-D arrays of equal length (one value per example).
        stat: ``stat(*columns) -> float``.
        clusters: one cluster id per example (e.g. the image index); distinct ids give the plain bootstrap.
        seed: the bootstrap's seed.

    Returns:
        An :class:`Estimate` (``method`` ``"cluster-bootstrap"`` when some cluster holds several values, else
        ``"bootstrap"``); NaN with no values, NaN interval with fewer than two values or clusters.
    """
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    n = int(cols[0].size) if cols else 0
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "bootstrap")
    value = float(stat(*cols))
    if n < 2:
        return Estimate(value, math.nan, math.nan, n, "bootstrap")
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(inv.max()) + 1
    if n_clusters < 2:  # one image: resampling it always draws the same values
        return Estimate(value, math.nan, math.nan, n, "cluster-bootstrap" if n > 1 else "bootstrap")
    members = [np.flatnonzero(inv == c) for c in range(n_clusters)]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_clusters, size=(RESAMPLES, n_clusters))
    vals = []
    for d in draws:
        sel = np.concatenate([members[c] for c in d])
        vals.append(stat(*(c[sel] for c in cols)))
    a = (1 - CONFIDENCE) / 2
    lo, hi = np.nanquantile(np.asarray(vals, dtype=np.float64), [a, 1 - a])
    return Estimate(value, float(lo), float(hi), n, "cluster-bootstrap" if n_clusters < n else "bootstrap")


def run_estimates(records: list[dict], *, seed: int = 0) -> dict[str, Estimate]:
    """The report metrics of one run's records (see :func:`spatialadv.eval.runner.summarize`) with intervals.

    Rates and means over (image, target) pairs are clustered by image (``idx``), so a targeted run's 9 pairs per
    image count as one draw of an image.

    Returns:
        ``{"P_suc", "robust_accuracy", "clean_accuracy", "D_bar", "linf_mean", "size_mean"}`` and, for flow
        attacks, ``"flow_tv_mean"`` and ``"flow_l2_mean"`` (pixels), each an :class:`Estimate`.
    """
    clean_ok = [r for r in records if r["clean_pred"] == r["label"]]
    succ = [r for r in clean_ok if r["success"]]
    out = {
        "P_suc": rate([bool(r["success"]) for r in clean_ok], clusters=[r["idx"] for r in clean_ok], seed=seed),
        "robust_accuracy": rate([r["pred"] == r["label"] and r["clean_pred"] == r["label"] for r in records],
                                clusters=[r["idx"] for r in records], seed=seed),
        "clean_accuracy": rate([r["clean_pred"] == r["label"] for r in records], clusters=[r["idx"] for r in records],
                               seed=seed),
    }
    ids = [r["idx"] for r in succ]
    for name, field_ in (("D_bar", "l2"), ("linf_mean", "linf"), ("size_mean", "size")):
        out[name] = mean([r[field_] for r in succ], clusters=ids, seed=seed)
    if any(r.get("flow_tv") is not None for r in records):
        out["flow_tv_mean"] = mean([r["flow_tv"] for r in succ], clusters=ids, seed=seed)
        out["flow_l2_mean"] = mean([r["flow_l2"] for r in succ], clusters=ids, seed=seed)
    return out


@dataclass(frozen=True)
class PaperValue:
    """A number a paper reports, with where it reports it.

    Attributes:
        value: the paper's number, in the unit of the cell it sits in (a rate as a fraction in [0, 1]).
        paper: a key of :data:`spatialadv.references.PAPERS`.
        where: the place in the paper, e.g. ``"Table 1"`` or ``"Fig. 5"``.
        note: how the number was read, when not verbatim (e.g. ``"read off the plot"``, ``"converted to px"``).

    Raises:
        KeyError: unknown ``paper``.
    """

    value: float
    paper: str
    where: str
    note: str = ""

    def __post_init__(self):
        if self.paper not in PAPERS:
            raise KeyError(f"unknown paper {self.paper!r}; known: {sorted(PAPERS)}")

    @property
    def source(self) -> str:
        """``"Xiao et al. 2018, Table 1"``."""
        return f"{PAPERS[self.paper].short}, {self.where}" + (f" ({self.note})" if self.note else "")

    def to_json(self) -> dict:
        """``{"value", "source"}``."""
        return {"value": self.value, "source": self.source}


@dataclass(frozen=True)
class Metric:
    """A measured quantity of a :class:`Comparison` (one group of columns).

    Attributes:
        name: the column's name, e.g. ``"stAdv success (%)"``.
        pct: render rates × 100. digits: decimals.
    """

    name: str
    pct: bool = False
    digits: int = 2


@dataclass(frozen=True)
class Cell:
    """Our estimate beside the paper's number (either may be missing)."""

    ours: Estimate | None = None
    paper: PaperValue | None = None

    @property
    def inside(self) -> bool | None:
        """Whether the paper's number lies in our interval (None when either is missing or undefined)."""
        if self.ours is None or self.paper is None:
            return None
        return self.ours.contains(self.paper.value)


def _number(v: float, digits: int, pct: bool) -> str:
    """``v`` with ``digits`` decimals, or more when fewer would change it (a paper's 99.95 % stays 99.95)."""
    x = round((100.0 if pct else 1.0) * v, 8)
    s = f"{x:.{digits}f}"
    if float(s) != x:
        s = f"{x:.8f}".rstrip("0")
    return s


def _yes_no(b: bool | None) -> str:
    return "–" if b is None else ("yes" if b else "**no**")


@dataclass
class Comparison:
    """A table of our estimates beside the paper's numbers: the one way every report compares with a paper.

    Each row has its key cells (e.g. model, attack) and one :class:`Cell` per :class:`Metric`. For a metric
    with any paper value, three columns are rendered: ours with its 95 % interval, the paper's value, and
    whether the paper's value lies in our interval. When all of a metric's paper values share one source, the
    source goes into the column header, else beside each value. The caption ends with the interval methods used.

    Attributes:
        keys: the key columns' headers. metrics: the measured quantities.
        caption: what the numbers mean (denominators, units); the interval sentence is appended.
        rows: ``(key cells, metric cells)``; add them with :meth:`add`.
    """

    keys: Sequence[str]
    metrics: Sequence[Metric]
    caption: str = ""
    rows: list[tuple[list[str], list[Cell]]] = field(default_factory=list)

    def add(self, keys: Sequence, *cells: Cell | Estimate | None) -> None:
        """Append a row: its key cells and one cell per metric (an :class:`Estimate` alone has no paper value).

        Raises:
            ValueError: wrong number of keys or cells.
        """
        if len(keys) != len(self.keys) or len(cells) != len(self.metrics):
            raise ValueError(f"a row needs {len(self.keys)} keys and {len(self.metrics)} cells, "
                             f"got {len(keys)} and {len(cells)}")
        self.rows.append(([str(k) for k in keys], [c if isinstance(c, Cell) else Cell(c) for c in cells]))

    def _sources(self, j: int) -> set[str]:
        return {p.source for _, c in self.rows if (p := c[j].paper) is not None}

    def _shared_source(self) -> str | None:
        """The one source of every paper value of the table (named once, in the caption), or None."""
        src = set().union(*(self._sources(j) for j in range(len(self.metrics))))
        return next(iter(src)) if len(src) == 1 else None

    def columns(self) -> list[str]:
        """The rendered header cells."""
        cols, shared = list(self.keys), self._shared_source()
        for j, m in enumerate(self.metrics):
            cols.append(f"{m.name}: ours [95 % CI]")
            src = self._sources(j)
            if src:
                one = len(src) == 1 and shared is None
                cols += [f"paper ({next(iter(src))})" if one else "paper", "paper in CI"]
        return cols

    def methods(self) -> list[str]:
        """The interval methods used by the table's estimates, in a fixed order."""
        used = {c.ours.method for _, cs in self.rows for c in cs if c.ours is not None and c.ours.n > 1}
        return [m for m in METHODS if m in used]

    def markdown(self) -> str:
        """The table as Markdown, caption (with the interval methods) below."""
        cols = self.columns()
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for keys, cells in self.rows:
            out = list(keys)
            for j, (m, c) in enumerate(zip(self.metrics, cells)):
                out.append("–" if c.ours is None else c.ours.format(m.digits, m.pct))
                src = self._sources(j)
                if src:
                    if c.paper is None:
                        out.append("–")
                    else:
                        v = _number(c.paper.value, m.digits, m.pct)
                        out.append(v if len(src) == 1 else f"{v} ({c.paper.source})")
                    out.append(_yes_no(c.inside))
            lines.append("| " + " | ".join(out) + " |")
        shared = self._shared_source()
        note = interval_note(self.methods())
        cap = " ".join(s for s in (self.caption, f"Paper: {shared}." if shared else "", note) if s)
        if cap:
            lines += ["", cap]
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The table as JSON: ``{"keys", "metrics", "rows", "caption", "intervals"}``.

        Each row maps a key column to its cell and a metric to ``{"ours": Estimate JSON, "paper": {"value",
        "source"}, "paper_in_ci"}``.
        """
        rows = []
        for keys, cells in self.rows:
            row: dict = dict(zip(self.keys, keys))
            for m, c in zip(self.metrics, cells):
                row[m.name] = {"ours": None if c.ours is None else c.ours.to_json(),
                               "paper": None if c.paper is None else c.paper.to_json(), "paper_in_ci": c.inside}
            rows.append(row)
        return {"keys": list(self.keys), "metrics": [m.name for m in self.metrics], "rows": rows, "caption": self.caption,
                "intervals": interval_note(self.methods())}


def interval_note(methods: Sequence[str]) -> str:
    """The caption sentence naming the interval methods (empty when none)."""
    if not methods:
        return ""
    return "Brackets: 95 % interval — " + "; ".join(METHODS[m] for m in methods) + "."
