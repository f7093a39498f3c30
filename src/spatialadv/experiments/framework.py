"""The experiment framework shared by every ``spatialadv reproduce`` job.

An experiment module declares

* a frozen ``Config`` dataclass whose fields are declared with :func:`option`:
  the single source of the experiment's defaults. The CLI options are
  generated from it (:func:`add_config_arguments`), it is stored verbatim in
  the run's store, and the report is built from the stored value;
* a ``plan(config, ctx)`` generator yielding the runs it needs
  (:class:`AttackRun`: a model × an attack × example pairs, or
  :class:`TaskRun`: per-item records such as a certificate per example and ε);
  the shared runner (:func:`run_experiment`) executes each run as it is
  yielded: store, resume, progress bars, environment record, timing;
  models come frozen from :meth:`Context.model`;
* a ``report(config, results)`` function returning a :class:`Report` built
  from the stored records (:class:`Results`) and the stored config only,
  rendered by one renderer (:func:`render`) to ``report.md`` and
  ``report.json``;
* its reference numbers, each with its citation (:mod:`spatialadv.references`);

and lists its CLI commands in ``EXPERIMENTS``: one :class:`Experiment` per
command, a dataset variant being another default ``Config`` of the same module.

Run keys hash every value that changes a record (the model specification, the
attack's hyper-parameters, the data and the targeting mode); values that only
choose how many examples are attacked do not enter them, so extending ``--n``
reuses the records already stored.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import pkgutil
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from .._config import (
    MAX_THREADS,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    config_to_dict,
    option,
    validate_config,
)
from .._paths import check_folder
from ..attacks.base import Attack
from ..data import load_dataset
from ..eval.compare import METHODS, Cell, Comparison, Estimate, Metric, PaperValue, interval_note, run_estimates
from ..eval.runner import attack_config, first_correct, run_attack, run_key, summarize
from ..eval.store import ResultStore
from ..references import cite
from ..training import load_or_train

log = logging.getLogger(__name__)

__all__ = ["option", "MAX_THREADS", "add_config_arguments", "config_from_args", "config_to_dict", "config_from_dict", "Experiment",
           "AttackRun", "TaskRun", "transfer_task", "Context", "Results", "RunView", "Report", "Table", "Shown", "Comparison", "Cell", "Metric", "PaperValue", "Estimate", "run_experiment", "execute_run", "rebuild",
           "render", "fmt", "settings_line", "STORE_NAME", "stored_experiment", "validate_config", "experiments"]

#: File name of an experiment folder's results store.
STORE_NAME = "results.sqlite"

# configs: option, add_config_arguments, config_from_args, validate_config, config_to_dict, config_from_dict live in
# spatialadv._config (shared with the audit's AuditConfig) and are re-exported here for the experiment modules

# ------------------------------------------------------------------------------------------------
# experiments and runs
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Experiment:
    """One ``spatialadv reproduce NAME`` command.

    Attributes:
        name: the command name, e.g. ``"smooth-fashion"``.
        help: one line for ``--help``, citing the paper.
        config: the command's default Config (a frozen dataclass with :func:`option` fields).
        plan: ``plan(config, ctx)`` yielding :class:`AttackRun` / :class:`TaskRun`.
        report: ``report(config, results) -> Report``.
        papers: keys of :data:`spatialadv.references.PAPERS` cited by the report.
    """

    name: str
    help: str
    config: Any
    plan: Callable[[Any, "Context"], Iterable]
    report: Callable[[Any, "Results"], "Report"]
    papers: tuple[str, ...] = ()


@dataclass
class AttackRun:
    """An attack on one model over ``(image index, target)`` pairs of a dataset.

    Attributes:
        model: the model's label in the report (e.g. ``"mnist-a"``, ``"c4/advtrain"``).
        label: the attack's label in the report (e.g. ``"stAdv"``).
        net: the classifier (from :meth:`Context.model`: eval mode, frozen).
        attack: the attack.
        model_key: the model's cache key (part of the run key).
        x, y: the dataset the pairs index into, ``(N, C, H, W)`` in [0, 1] and ``(N,)``.
        data_key: identifies ``x, y`` (part of the run key).
        pairs: ``(idx, target)``; target −1 for untargeted.
        mode: ``"all"``, ``"random"`` or ``"untargeted"`` (part of the run key).
        tags: JSON-able labels for the report (e.g. ``{"eps": 0.1}``).
        batch_size: pairs per attack call.
    """

    model: str
    label: str
    net: nn.Module
    attack: Attack
    model_key: str
    x: torch.Tensor
    y: torch.Tensor
    data_key: str
    pairs: list[tuple[int, int]]
    mode: str
    tags: dict = field(default_factory=dict)
    batch_size: int = 256

    def key(self) -> str:
        """The run key: a hash of the model key, the attack's configuration, the data key and the mode."""
        return run_key(self.model_key, self.attack, self.data_key, self.mode)


@dataclass
class TaskRun:
    """A non-attack computation stored as one JSON value per item (resumable item by item).

    Attributes:
        model: the model's label. label: the task's label (e.g. ``"certify sdp"``).
        config: JSON-able description of everything that changes a value (hashed into the run key with ``model_key``).
        model_key: the model's cache key.
        items: item names in order (e.g. ``"eps=0.05/idx=17"``).
        compute: ``compute(items) -> {item: JSON-able value}`` for a batch of missing items.
        tags: JSON-able labels for the report. batch_size: items per ``compute`` call.
    """

    model: str
    label: str
    config: dict
    model_key: str
    items: list[str]
    compute: Callable[[list[str]], dict]
    tags: dict = field(default_factory=dict)
    batch_size: int = 1000

    def key(self) -> str:
        """The run key: a hash of the model key, the task's label and its configuration."""
        blob = json.dumps({"model": self.model_key, "task": self.label, "config": self.config}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Context:
    """What a plan sees while it runs: the store, the output folder, models, data and progress bars."""

    def __init__(self, out: Path, store: ResultStore, progress: bool):
        self.out = out
        self.store = store
        self.progress = progress
        self._data: dict = {}
        self._meta: dict = {}  # what this process stored: read back without waiting for rank 0's writes

    def data(self, name: str, split: str, seed: int = 0):
        """A dataset split (loaded once per job); see :func:`spatialadv.data.load_dataset`."""
        k = (name, split, seed)
        if k not in self._data:
            self._data[k] = load_dataset(name, split, seed=seed)
        return self._data[k]

    def model(self, label: str, spec) -> tuple[nn.Module, dict]:
        """Load (or train and cache) the model of ``spec``, frozen in eval mode, and record its info under ``label``.

        Returns:
            ``(model, info)`` as :func:`spatialadv.training.load_or_train`.
        """
        model, info = load_or_train(spec, progress=self.progress)  # eval mode, frozen (collective under torchrun)
        models = self.get_meta("models", {})
        models[label] = {k: v for k, v in info.items() if k != "path"}
        self.meta("models", models)
        return model, info

    def meta(self, key: str, value) -> None:
        """Store a JSON-able value for the report (e.g. generator training histories); rank 0 writes it under torchrun."""
        self._meta[key] = value
        if distributed.rank() == 0:
            self.store.set_meta(key, value)

    def get_meta(self, key: str, default=None):
        """A value stored with :meth:`meta`."""
        if key in self._meta:
            return self._meta[key]
        return self.store.get_meta(key, default)

    @staticmethod
    def first_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
        """Indices of the first ``n`` images ``model`` classifies correctly."""
        return first_correct(model, x, y, n)


def random_targets(y: torch.Tensor, seed: int, num_classes: int) -> torch.Tensor:
    """One target class ≠ y per image, ``(N,)`` int64, drawn from ``torch.Generator().manual_seed(seed)``.

    The draw for image ``i`` depends on its position in ``y``: pass the whole split's labels.
    """
    gen = torch.Generator().manual_seed(seed)
    return (y + torch.randint(1, num_classes, (len(y),), generator=gen)) % num_classes


def _environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "processes": distributed.world_size(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


def _register(run, store: ResultStore | None) -> dict:
    """Register ``run`` in the store (rank 0) and return its plan entry (before any record is computed)."""
    key = run.key()
    if distributed.rank() > 0:
        store = None
    if isinstance(run, AttackRun):
        if store is not None:
            store.register_run(key, run.model, run.label, attack_config(run.attack), tags=run.tags, planned=len(run.pairs))
        return {"kind": "attack", "run_key": key, "model": run.model, "attack": run.label, "tags": run.tags,
                "pairs": [list(p) for p in run.pairs]}
    if isinstance(run, TaskRun):
        if store is not None:
            store.register_run(key, run.model, run.label, run.config, tags=run.tags, planned=len(run.items))
        return {"kind": "task", "run_key": key, "model": run.model, "attack": run.label, "tags": run.tags,
                "items": list(run.items)}
    raise TypeError(f"a plan must yield AttackRun or TaskRun, got {type(run).__name__}")


def execute_run(run: AttackRun | TaskRun, store: ResultStore, *, progress: bool = True) -> dict:
    """Register one run in ``store`` (rank 0) and compute its missing records (resumable); returns its plan entry.

    What :func:`run_experiment` does for each run a plan yields, for a caller with a single run and its own
    store (``spatialadv attack``).
    """
    entry = _register(run, store)
    _execute(run, entry["run_key"], store, progress)
    return entry


def _execute(run, key: str, store: ResultStore, progress: bool, tick=lambda: None) -> None:
    """Compute and store the run's missing records; ``tick()`` after every stored batch of a task (the wall-time clock)."""
    if isinstance(run, AttackRun):
        run_attack(store, key, run.net, run.attack, run.x, run.y, run.pairs, batch_size=run.batch_size, progress=progress,
                   desc=f"{run.model} {run.label}")
        return
    try:
        done = store.done_items(key)
        todo = [i for i in distributed.shard(run.items, run.batch_size) if i not in done]
        bar = tqdm(total=len(todo), desc=f"{run.model} {run.label}", disable=not progress or not todo or distributed.rank() > 0,
                   unit="item")
        for s in range(0, len(todo), run.batch_size):
            chunk = todo[s : s + run.batch_size]
            values = run.compute(chunk)
            missing = set(chunk) - set(values)
            if missing:
                raise RuntimeError(f"task {run.label!r} returned no value for {sorted(missing)[:3]}")
            store.add_items(key, {i: values[i] for i in chunk})
            tick()
            bar.update(len(chunk))
        bar.close()
    finally:
        distributed.barrier()  # every item is stored before the plan goes on (later runs may read them)


def run_experiment(exp: Experiment, cfg: Any, out: str | Path, *, progress: bool = True) -> dict:
    """Run ``exp`` with ``cfg`` into ``out`` (resumable) and build its report.

    The store is opened (and checked) before any work; the config, the runs
    (registered as they start), the environment and the accumulated wall time
    are stored with the records. A Config with a ``threads`` field sets torch's
    intra-op thread count for the job (restored afterwards).

    Returns:
        The report's JSON dict (also written as ``report.json``).

    Raises:
        ValueError: invalid config; :class:`~spatialadv.eval.store.StoreError`: unusable store.
    """
    validate_config(cfg)
    out = Path(out)
    check_folder(out, f"--out {out}")  # a file, or a folder under a file: refused before anything is written
    lead = distributed.rank() == 0  # under torchrun, rank 0 writes the metadata and the report
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    threads = getattr(cfg, "threads", None)
    t_start = time.perf_counter()
    with distributed.rank_zero_first():  # rank 0 creates the store before the others open it
        store = ResultStore(out / STORE_NAME)
        if lead:
            stored = {"experiment": exp.name, "values": config_to_dict(cfg)}
            prev = store.get_meta("config")
            if prev is not None and prev != stored:
                log.warning("%s holds a run with another configuration; records are keyed by what changes them, so "
                            "nothing is mixed, and the report describes the new configuration", out)
            # one transaction: a kill never leaves a new config beside an old plan
            store.set_metas({"config": stored, "plan": [], "complete": False, "models": {}})
    with store:
        # the wall time accumulates over invocations; it is stored with every record so that a killed invocation
        # (SIGTERM, SIGKILL: no `finally`) still counts up to its last stored record
        base = float(store.get_meta("elapsed_s", 0.0) or 0.0)
        if lead:
            store.set_meta("invocations", int(store.get_meta("invocations", 0) or 0) + 1)

        def tick() -> None:
            if lead:
                store.set_meta("elapsed_s", base + (time.perf_counter() - t_start))

        ctx = Context(out, store, progress)
        plan: list[dict] = []
        try:
            if threads:
                torch.set_num_threads(int(threads))
            ctx.meta("environment", _environment())
            for run in exp.plan(cfg, ctx):
                entry = _register(run, store)
                plan.append(entry)
                ctx.meta("plan", plan)  # registered when it starts: an interrupted folder lists it
                _execute(run, entry["run_key"], store, progress, tick)
                tick()
            ctx.meta("environment", _environment())
            ctx.meta("complete", True)
        finally:
            torch.set_num_threads(threads_before)
            tick()
    if not lead:
        return {}
    return rebuild(out, exp)


# ------------------------------------------------------------------------------------------------
# results and reports
# ------------------------------------------------------------------------------------------------
class RunView:
    """One stored run as a report sees it: its plan entry, records and summary."""

    def __init__(self, store: ResultStore, entry: dict):
        self.entry = entry
        self.key = entry["run_key"]
        self.model = entry["model"]
        self.attack = entry["attack"]
        self.tags = entry.get("tags", {})
        self._store = store
        self._records: dict[bool, list[dict]] = {}

    def records(self, arrays: bool = False) -> list[dict]:
        """The run's attack records restricted to its planned pairs, ordered by ``(idx, target)``."""
        if arrays not in self._records:
            wanted = {tuple(p) for p in self.entry.get("pairs", [])}
            self._records[arrays] = [r for r in self._store.records(self.key, arrays=arrays) if (r["idx"], r["target"]) in wanted]
        return self._records[arrays]

    def items(self) -> dict[str, object]:
        """The run's task items restricted to its planned items."""
        values = self._store.items(self.key)
        return {i: values[i] for i in self.entry.get("items", []) if i in values}

    def summary(self) -> dict:
        """:func:`~spatialadv.eval.runner.summarize` of the records."""
        return summarize(self.records())

    def estimates(self) -> dict[str, Estimate]:
        """:func:`~spatialadv.eval.compare.run_estimates` of the records: the metrics with their 95 % intervals."""
        return run_estimates(self.records())

    @property
    def complete(self) -> bool:
        """Whether every planned pair (or item) of the run has its record."""
        n = len(self.entry.get("pairs", self.entry.get("items", [])))
        return len(self.records()) == n if self.entry["kind"] == "attack" else len(self.items()) == n

    @property
    def config(self) -> dict:
        """The attack's (or task's) stored configuration."""
        for r in self._store.runs():
            if r["run_key"] == self.key:
                return r["config"]
        return {}


class Results:
    """Everything stored by one experiment folder, for its report."""

    def __init__(self, out: Path, store: ResultStore):
        self.out = out
        self.store = store
        self.environment = store.get_meta("environment", {})
        self.elapsed_s = store.get_meta("elapsed_s")
        self.invocations = store.get_meta("invocations")
        self.models = store.get_meta("models", {})
        self.complete = bool(store.get_meta("complete", False))
        self.runs = [RunView(store, e) for e in store.get_meta("plan", [])]
        self._data: dict = {}

    def meta(self, key: str, default=None):
        """A value the plan stored with :meth:`Context.meta`."""
        return self.store.get_meta(key, default)

    def find(self, model: str | None = None, attack: str | None = None, **tags) -> list[RunView]:
        """The runs matching the model label, attack label and tags given."""
        out = []
        for r in self.runs:
            if model is not None and r.model != model or attack is not None and r.attack != attack:
                continue
            if any(r.tags.get(k) != v for k, v in tags.items()):
                continue
            out.append(r)
        return out

    def get(self, model: str | None = None, attack: str | None = None, **tags) -> RunView | None:
        """The first run matching, or None."""
        found = self.find(model, attack, **tags)
        return found[0] if found else None

    def data(self, name: str, split: str, seed: int = 0):
        """A dataset split (loaded once)."""
        k = (name, split, seed)
        if k not in self._data:
            self._data[k] = load_dataset(name, split, seed=seed)
        return self._data[k]


@dataclass(frozen=True)
class Shown:
    """A :class:`~spatialadv.eval.compare.Estimate` in a :class:`Table` cell with its own digits (× 100 with ``pct``).

    Rendered as :meth:`Estimate.format <spatialadv.eval.compare.Estimate.format>`; its interval method is named in
    the table's caption like a bare estimate's.
    """

    estimate: Estimate
    digits: int = 2
    pct: bool = False

    def __str__(self) -> str:
        return self.estimate.format(self.digits, self.pct)


@dataclass
class Table:
    """A Markdown table with a caption that states what its numbers mean (no paper column: see :class:`Comparison`).

    Attributes:
        columns: header cells. rows: cells: strings, numbers, :class:`~spatialadv.eval.compare.Estimate`
            (rendered with its 95 % interval, in its column's format) or :class:`Shown` (one estimate with its own
            digits or percent).
        caption: printed under the table; the interval methods of its estimates are appended.
        formats: optional ``(digits, pct)`` per column for its bare :class:`Estimate` cells (default: 2 digits, no
            percent); a :class:`Shown` cell keeps its own.
    """

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    formats: list[tuple[int, bool]] | None = None

    def _cell(self, j: int, c) -> str:
        if isinstance(c, Estimate) and self.formats is not None:
            return c.format(*self.formats[j])
        return str(c)

    def markdown(self) -> str:
        """The table as Markdown, caption below."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(self._cell(j, c) for j, c in enumerate(r)) + " |" for r in self.rows]
        ests = [c.estimate if isinstance(c, Shown) else c for r in self.rows for c in r]
        used = {c.method for c in ests if isinstance(c, Estimate) and c.n > 1}
        cap = " ".join(s for s in (self.caption, interval_note([m for m in METHODS if m in used])) if s)
        if cap:
            lines += ["", cap]
        return "\n".join(lines)


@dataclass
class Report:
    """What an experiment's ``report`` function returns; :func:`render` writes it.

    Attributes:
        title: the report's heading.
        blocks: in order: Markdown strings (a string starting with ``#`` is a heading) and :class:`Table`.
        data: the report's numbers (JSON-able) for ``report.json``.
        figures: figure file names written into the folder, shown at the end.
    """

    title: str
    blocks: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


def fmt(v, digits: int = 2, pct: bool = False) -> str:
    """``v`` with ``digits`` decimals (× 100 with ``pct``); "–" for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.{digits}f}" if pct else f"{v:.{digits}f}"


def transfer_task(source, targets: dict, attacks: dict, x: torch.Tensor, y: torch.Tensor, items: list[str]) -> dict:
    """A :class:`TaskRun` computation: craft each attack on ``source`` for the images ``items``; test it on ``targets``.

    Returns ``{item: {attack label: {"source": success on source, "l2": ‖x_adv − x‖₂, target name: whether the
    target misclassifies x_adv}}}``; an attack that fails returns its input, which a target may still misclassify.
    """
    idx = torch.tensor([int(i) for i in items])
    xs, ys = x[idx], y[idx]
    out: dict = {i: {} for i in items}
    for label, atk in attacks.items():
        res = atk(source, xs, ys)
        l2 = (res.x_adv - xs).flatten(1).norm(dim=1)
        with torch.no_grad():
            wrong = {name: torch.cat([net(res.x_adv[k : k + 500]).argmax(1) != ys[k : k + 500]
                                      for k in range(0, len(xs), 500)]) for name, net in targets.items()}
        for j, i in enumerate(items):
            out[i][label] = {"source": bool(res.success[j]), "l2": float(l2[j]), **{n: bool(w[j]) for n, w in wrong.items()}}
    return out


def settings_line(results) -> str:
    """The attacks' settings as stored with their runs (not as the current code would build them); tasks are skipped."""
    seen = {}
    for r in results.runs:
        if r.entry.get("kind", "attack") == "attack" and r.attack not in seen:
            c = dict(r.config)
            cls = c.pop("attack", r.attack)
            seen[r.attack] = f"{r.attack}: {cls}(" + ", ".join(f"{k}={v!r}" for k, v in c.items()) + ")"
    return "; ".join(seen.values())


def render(exp: Experiment, cfg: Any, results: Results, rep: Report) -> dict:
    """Write ``report.md`` and ``report.json`` into the folder; return the JSON dict."""
    out = results.out
    env = results.environment or {}
    lines = [f"# {rep.title}", ""]
    status = [] if results.complete else [
        "**Incomplete run**: the job was interrupted; the tables hold the records stored so far "
        f"({sum(r.complete for r in results.runs)} of {len(results.runs)} runs started are complete). "
        f"Run `spatialadv reproduce {exp.name} --out {out}` again to finish it.", ""]
    lines += status
    for b in rep.blocks:
        lines += [b.markdown() if isinstance(b, (Table, Comparison)) else str(b), ""]
    lines += ["## Run", ""]
    el, k = results.elapsed_s, results.invocations
    how = "training included" if not k or k == 1 else (f"training included; {k} invocations, each counted up to its last "
                                                       "stored record")
    lines.append(f"Command: `spatialadv reproduce {exp.name}` with configuration `{json.dumps(config_to_dict(cfg))}`. "
                 f"torch {env.get('torch')}, Python {env.get('python')}, {env.get('threads')} CPU threads; wall time of all "
                 f"runs into this folder ({how}): {'–' if el is None else f'{el:.0f} s'}.")
    lines.append("")
    if rep.figures:
        lines += ["## Figures", ""]
        for f in rep.figures:
            lines += [f"![{f}]({f})", ""]
    if exp.papers:
        lines += ["## References", ""] + [f"- {cite(p)}" for p in exp.papers] + [""]
    (out / "report.md").write_text("\n".join(lines))
    doc = {"experiment": exp.name, "config": config_to_dict(cfg), "environment": env, "elapsed_s": el,
           "complete": results.complete, "models": results.models, **rep.data,
           "comparisons": [b.to_json() for b in rep.blocks if isinstance(b, Comparison)], "figures": list(rep.figures),
           "references": [cite(p) for p in exp.papers]}
    (out / "report.json").write_text(json.dumps(doc, indent=2, default=float))
    return doc


#: Modules listed first keep their commands first in ``--help``; any other module defining ``EXPERIMENTS`` follows.
_ORDER = ("stadv", "smooth", "sdpadv", "certify_bounds", "certify_stadv")


def _modules() -> list[str]:
    package = sys.modules[__package__]  # loaded: this module is inside it (its __path__ may be extended)
    found = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_") and m.name != "framework"]
    return [f"{__package__}.{m}" for m in sorted(found, key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))]


def experiments() -> dict[str, Experiment]:
    """All registered experiments by command name (imports their modules, found by name in this package).

    Raises:
        RuntimeError: two modules register the same name.
    """
    found: dict[str, Experiment] = {}
    for mod in _modules():
        # found by name at run time: the experiment modules import this one, never the other way round
        for e in getattr(importlib.import_module(mod), "EXPERIMENTS", ()):
            if e.name in found:
                raise RuntimeError(f"experiment {e.name!r} registered twice")
            found[e.name] = e
    return found


def stored_experiment(out: str | Path) -> tuple[Experiment, Any]:
    """The experiment and Config stored in ``out``'s store.

    Raises:
        FileNotFoundError: no store in ``out``. ValueError: unknown experiment or unreadable config.
    """
    path = Path(out) / STORE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}: run `spatialadv reproduce NAME --out {out}` first")
    with ResultStore(path, readonly=True) as store:
        stored = store.get_meta("config")
    if not isinstance(stored, dict) or "experiment" not in stored:
        raise ValueError(f"{path} holds no experiment configuration (not written by `spatialadv reproduce`)")
    exps = experiments()
    if stored["experiment"] not in exps:
        raise ValueError(f"{path} was written by unknown experiment {stored['experiment']!r}")
    exp = exps[stored["experiment"]]
    return exp, config_from_dict(type(exp.config), stored["values"])


def rebuild(out: str | Path, exp: Experiment | None = None) -> dict:
    """Rebuild ``report.md``, ``report.json`` and the figures of a folder from its store alone.

    Args:
        out: the experiment folder.
        exp: the experiment (default: the registered one named in the store).

    A folder whose store holds no run yet gets a short "no runs stored yet" report without calling the
    experiment's ``report`` (no data set is loaded).

    Raises:
        FileNotFoundError: no store. ValueError: not a reproduce folder.
    """
    out = Path(out)
    if exp is None:
        exp, cfg = stored_experiment(out)
    else:
        with ResultStore(out / STORE_NAME, readonly=True) as store:
            cfg = config_from_dict(type(exp.config), store.get_meta("config")["values"])
    with ResultStore(out / STORE_NAME, readonly=True) as store:
        results = Results(out, store)
        # no run stored yet (killed during training, say): a short report without the experiment's, which may
        # load its data set (a fresh machine may not have it) to draw figures of records that do not exist
        rep = exp.report(cfg, results) if results.runs else Report(exp.help, ["No runs stored yet."])
        return render(exp, cfg, results, rep)


