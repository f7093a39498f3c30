"""The audit: per-threat attack cascades, the worst case per example, sanity checks and the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._config import option, validate_config
from .._paths import check_folder
from .._validation import check_logits
from ..attacks import FGSM, PGD, RandomSearch, RotationTranslation, SmoothPGDL2, StAdv
from ..attacks.base import Attack, model_input_error
from ..data import DataError, Dataset
from ..eval.runner import attack_config, run_attack, run_key
from ..eval.store import ResultStore, StoreError
from ..references import cite
from ..threats import L2Ball, LinfBall, PixelFlow, RotationTranslationBox, Threat
from ..viz.panels import prediction_panel

__all__ = ["THREATS", "AuditConfig", "Stage", "stages", "select_examples", "check_model_on_data", "sanity_checks",
           "run_audit", "audit_report", "STORE_NAME", "PAPERS"]

#: Threat models an audit can run, in report order.
THREATS = ("stadv", "stm", "linf", "l2", "smooth")
#: File name of an audit folder's results store.
STORE_NAME = "results.sqlite"
#: Papers cited by the audit report (keys of :data:`spatialadv.references.PAPERS`).
PAPERS = ("autoattack", "robustbench", "stadv", "engstrom", "pgd", "fgsm", "smooth")
_TOL = 1e-5  # relative tolerance of the budget check (float32 rounding of stored perturbations)


@dataclass(frozen=True)
class AuditConfig:
    """What an audit runs: threats, budgets, examples and the attacks' effort.

    Attributes:
        threats: subset of :data:`THREATS`.
        n: number of examples audited: the first ``n`` of the data taken round-robin over classes
            (:func:`select_examples`); clean errors count as non-robust (RobustBench's convention).
        flow_budget: stAdv's flow budget, total variation (stAdv App. C Eq. 5) in pixels; an stAdv example
            counts as broken only within it (``inf``: no budget).
        max_rotation, max_translation: STM box (degrees, pixels; Engstrom et al. ICML 2019: ±30°, ±3 px).
        linf_eps, l2_eps: L∞ / L2 budgets in [0, 1] pixel units (MNIST-scale standards 0.3 and 2.0).
        smooth_eps: L2 budget of the smooth perturbations (sPGD2), [0, 1] pixel units.
        pgd_steps: PGD iterations (step size 2.5·eps/steps, Madry et al.).
        smooth_steps: sPGD2 iterations (step 0.6·eps).
        random_tries: points per example of the gradient-free random search (the gradient-masking check).
        stm_rotations, stm_translations: STM grid sizes (default 31 × 5 × 5 = 775 transforms).
        stadv_steps: L-BFGS steps per image of stAdv (``StAdv.steps``); None keeps ``StAdv()``'s default (the paper's settings).
        seed: seed of the random starts and random search; also of the built-in sets' split.
        batch_size: examples per attack call.

    Raises:
        ValueError: unknown threat, no threat, non-positive budgets or counts.
    """

    threats: tuple[str, ...] = option(THREATS, f"threat models, comma-separated subset of {','.join(THREATS)}", sep=",",
                                      metavar="T,T,...")
    n: int = option(100, "examples audited", minimum=1)
    flow_budget: float = option(1.0, "stAdv flow budget: total variation (stAdv Eq. 5) in pixels (inf: no budget)",
                                above=0.0, finite=False)
    max_rotation: float = option(30.0, "STM rotation bound, degrees", minimum=0.0, maximum=180.0)
    max_translation: float = option(3.0, "STM translation bound, pixels", minimum=0.0, maximum=1e4)
    linf_eps: float = option(0.3, "L∞ budget, [0, 1] pixel units", above=0.0, maximum=1.0)
    l2_eps: float = option(2.0, "L2 budget, [0, 1] pixel units", above=0.0, maximum=1e6)
    smooth_eps: float = option(2.0, "L2 budget of smooth perturbations (sPGD2)", above=0.0, maximum=1e6)
    pgd_steps: int = option(100, "PGD iterations", minimum=1, maximum=10**6)
    smooth_steps: int = option(20, "sPGD2 iterations", minimum=1, maximum=10**6)
    random_tries: int = option(20, "random-search points per example (gradient-masking check)", minimum=1, maximum=10**6)
    stm_rotations: int = option(31, "STM grid: rotations", minimum=1, maximum=10**4)
    stm_translations: int = option(5, "STM grid: translations per axis", minimum=1, maximum=10**3)
    stadv_steps: int | None = option(None, "stAdv L-BFGS steps per image (none: StAdv()'s)", minimum=1, maximum=10**6)
    seed: int = option(0, "seed of random starts and of built-in splits", minimum=0)
    batch_size: int = option(100, "examples per attack call", minimum=1, maximum=10**6)

    def __post_init__(self) -> None:
        if not self.threats:
            raise ValueError("--threats needs at least one threat model")
        bad = [t for t in self.threats if t not in THREATS]
        if bad:
            raise ValueError(f"unknown threat(s) {bad}; choose from {', '.join(THREATS)}")
        if len(set(self.threats)) != len(self.threats):
            raise ValueError(f"--threats lists a threat twice: {list(self.threats)}")
        validate_config(self)  # every number field's domain, declared with its option above

    def budgets(self) -> dict:
        """The budgets of the selected threats, in their units (JSON-able)."""
        b = {"stadv": {"flow_tv_px": self.flow_budget}, "stm": {"rotation_deg": self.max_rotation,
                                                              "translation_px": self.max_translation},
             "linf": {"eps": self.linf_eps}, "l2": {"eps": self.l2_eps}, "smooth": {"l2_eps": self.smooth_eps}}
        return {t: b[t] for t in self.threats}


#: AuditConfig fields renamed since audits were first stored (old name → new name).
_RENAMED_CONFIG = {"stadv_max_iter": "stadv_steps"}


@dataclass(frozen=True)
class Stage:
    """One attack of a threat's cascade.

    Attributes:
        label: the attack's name in the report. attack: the attack. budget: the threat (with its budget)
            whose ``measure`` decides whether a success counts (within budget). gradient_free: True for the
            black-box stages (their successes after the gradient stages flag gradient masking).
    """

    label: str
    attack: Attack
    budget: Threat
    gradient_free: bool = False


def stages(threat: str, cfg: AuditConfig) -> list[Stage]:
    """The cascade of ``threat``: attacks in order, each run on the examples the earlier ones left robust.

    * ``stadv``: ``StAdv()`` (its defaults: the paper's τ), counted within ``PixelFlow(budget=flow_budget)``.
    * ``stm``: the rotation–translation grid (Engstrom et al.), within its box; with ``early_stop``
      (an example stops at the first chunk of candidates holding a misclassifying transform: the verdict
      is the exhaustive grid's, at a fraction of its forward passes on non-robust models).
    * ``linf``: FGSM, PGD (``pgd_steps``, step 2.5·eps/steps, random start), then a gradient-free random
      search on the box's corners.
    * ``l2``: PGD-L2, then a random search on the sphere.
    * ``smooth``: sPGD2 (Zhang et al. 2020) within the L2 ball of ``smooth_eps``.
    """
    if threat == "stadv":
        attack = StAdv() if cfg.stadv_steps is None else StAdv(steps=cfg.stadv_steps)
        return [Stage("stAdv", attack, PixelFlow(budget=cfg.flow_budget))]
    if threat == "stm":
        return [Stage("STM grid", RotationTranslation(max_rotation=cfg.max_rotation, max_translation=cfg.max_translation,
                                                      num_rotations=cfg.stm_rotations, num_translations=cfg.stm_translations,
                                                      early_stop=True),
                      RotationTranslationBox(max_rotation=cfg.max_rotation, max_translation=cfg.max_translation),
                      gradient_free=True)]
    if threat == "linf":
        e = cfg.linf_eps
        ball: Threat = LinfBall(eps=e)
        return [Stage("FGSM", FGSM(eps=e), ball),
                Stage("PGD", PGD(eps=e, step_size=2.5 * e / cfg.pgd_steps, steps=cfg.pgd_steps, seed=cfg.seed), ball),
                Stage("random search", RandomSearch(norm="linf", eps=e, tries=cfg.random_tries, seed=cfg.seed), ball,
                      gradient_free=True)]
    if threat == "l2":
        e = cfg.l2_eps
        ball = L2Ball(eps=e)
        return [Stage("PGD-L2", PGD(norm="l2", eps=e, step_size=2.5 * e / cfg.pgd_steps, steps=cfg.pgd_steps,
                                    seed=cfg.seed), ball),
                Stage("random search", RandomSearch(norm="l2", eps=e, tries=cfg.random_tries, seed=cfg.seed), ball,
                      gradient_free=True)]
    if threat == "smooth":
        e = cfg.smooth_eps
        return [Stage("sPGD2", SmoothPGDL2(eps=e, step_size=0.6 * e, steps=cfg.smooth_steps), L2Ball(eps=e))]
    raise ValueError(f"unknown threat {threat!r}; choose from {', '.join(THREATS)}")


def select_examples(y: Tensor, n: int) -> list[int]:
    """The first ``n`` dataset indices taken round-robin over classes (each class in dataset order).

    Every prefix covers the classes evenly, also for data stored class by class (an image folder).

    Example:
        >>> select_examples(torch.tensor([0, 0, 0, 1, 1, 2]), 4)
        [0, 3, 5, 1]
    """
    per = [np.flatnonzero(y.numpy() == c).tolist() for c in sorted(set(y.tolist()))]
    out: list[int] = []
    r = 0
    while len(out) < n and any(r < len(p) for p in per):
        out += [p[r] for p in per if r < len(p)]
        r += 1
    return out[:n]


def check_model_on_data(model: nn.Module, data: Dataset) -> int:
    """Run ``model`` on two images of ``data`` and check its logits and the labels; returns K.

    Raises:
        ValueError: the model fails on the images (wrong channels or size; torch's message kept), returns
            no ``(N, K)`` logits, or a label is ≥ K (the message names both).
        TypeError: a dtype mismatch between the images and the model.
    """
    x = data.x[:2]
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        raise model_input_error(model, x, e) from e
    k = check_logits(out, x.shape[0]).shape[1]
    hi = int(data.y.max())
    if hi >= k:
        raise DataError(f"labels out of range: the data has label {hi} ({len(data.classes)} classes) but the model "
                        f"returns {k} logits per image")
    return k


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch: int = 500) -> Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def sanity_checks(model: nn.Module, x: Tensor, y: Tensor, num_classes: int) -> list[dict]:
    """The checks made before trusting an audit's numbers (AutoAttack's, Croce & Hein ICML 2020, extended).

    * ``probabilities``: every output row in [0, 1] summing to 1 (a softmax output: margins and
      gradients saturate);
    * ``randomised``: two calls on the same images disagree (randomised defences need
      expectation-over-transformation attacks; a single-draw figure overstates robustness);
    * ``zero_gradients``: the input gradient of the cross-entropy is zero or not finite for some examples
      (masked or shattered gradients);
    * ``implausible_clean_accuracy``: clean accuracy at most 1.5 / K (near chance: a wrong normalisation,
      channel order or label order).

    The gradient-free check (random search or grid breaking what gradient attacks left) runs with the
    attacks; see :func:`run_audit`.

    Args:
        model: the classifier (eval mode).
        x: images ``(N, C, H, W)`` in [0, 1] (the first 100 are probed; all for the clean accuracy).
        y: labels ``(N,)``.
        num_classes: K.

    Returns:
        One dict per failed check: ``{"check", "message"}`` (empty when every check passes).
    """
    out = []
    xb, yb = x[:100], y[:100]
    with torch.no_grad():
        a = model(xb)
        b = model(xb)
    if bool((a >= 0).all() and (a <= 1).all() and ((a.sum(1) - 1).abs() <= 1e-4).all()):
        out.append({"check": "probabilities", "message": "the model's outputs look like probabilities (rows in [0, 1] "
                    "summing to 1), not logits: remove its final softmax, or margins and gradients saturate and the "
                    "gradient attacks under-report"})
    diff = float((a - b).abs().max())
    if diff > 1e-5 * (1.0 + float(a.abs().max())):
        flips = int((a.argmax(1) != b.argmax(1)).sum())
        out.append({"check": "randomised", "message": f"two calls on the same {len(xb)} images disagree (largest logit "
                    f"difference {diff:.3g}, {flips} predictions differ): the model is randomised; these attacks see one "
                    "draw per step and the robust accuracy is an over-estimate (use expectation over transformation)"})
    xg = xb.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), yb, reduction="sum"), xg)
    gn = g.flatten(1).norm(dim=1)
    bad = int((~torch.isfinite(gn) | (gn == 0)).sum())
    if bad:
        out.append({"check": "zero_gradients", "message": f"the input gradient is zero or not finite on {bad} of {len(xb)} "
                    "images: gradients are masked (saturated softmax, non-differentiable layers); gradient attacks "
                    "can fail where the model is not robust"})
    acc = float((_predict(model, x) == y).float().mean())
    if acc <= 1.5 / num_classes:
        out.append({"check": "implausible_clean_accuracy", "message": f"clean accuracy {100 * acc:.1f}% is near chance "
                    f"(1/{num_classes}): check the input normalisation (--mean/--std), the channel order, the image "
                    "scale and that the labels' order matches the model's classes"})
    return out


def _data_key(data: Dataset) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([data.name, data.split, list(data.x.shape), list(data.classes)]).encode())
    h.update(data.x.contiguous().numpy().tobytes())
    h.update(data.y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _verdict_key(model_key: str, data_key: str, threat: str, cfg_stages: list[Stage]) -> str:
    blob = json.dumps({"model": model_key, "data": data_key, "threat": threat,
                       "stages": [[s.label, attack_config(s.attack), dataclasses.asdict(s.budget)] for s in cfg_stages]},  # type: ignore[call-overload]  # every Threat is a dataclass
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _measure(threat: Threat, x: Tensor, rec: dict) -> float:
    """The budget threat's own measure of a stored record's perturbation of ``x`` ``(C, H, W)``."""
    res = SimpleNamespace(
        x_adv=torch.from_numpy(rec["x_adv"]).to(x.dtype)[None],
        flow=None if rec["flow"] is None else torch.from_numpy(rec["flow"]).to(torch.float64)[None],
        params={k: torch.from_numpy(np.asarray(v))[None] for k, v in rec["params"].items()})
    return float(threat.measure(x[None], res)[0])


def _within(threat: Threat, size: float) -> bool:
    b = getattr(threat, "eps", getattr(threat, "budget", None))
    if b is None:  # a box threat: size is the fraction of the box
        b = 1.0
    return size <= float(b) * (1 + _TOL) + 1e-7


def _check_same_audit(out: Path, model_info: dict, data_key: str) -> None:
    """Refuse a folder whose store holds another audit (another model or data) or a reproduce job's results."""
    path = out / STORE_NAME
    if not path.is_file():
        return
    with ResultStore(path, readonly=True) as store:
        meta = store.get_meta("audit")
        other_job = store.get_meta("config") is not None
    if meta is None and not other_job:
        return  # an empty store (a run killed before its first write): nothing to replace
    if isinstance(meta, dict) and isinstance(meta.get("model"), dict):
        if meta["model"].get("key") == model_info.get("key") and meta.get("data_key") == data_key:
            return  # the same audit: resume, another shard or more examples
        what = f"the audit of another model ({meta['model'].get('spec', meta['model'].get('key'))})" \
            if meta["model"].get("key") != model_info.get("key") else "an audit of other data"
    else:
        what = "the results of `spatialadv reproduce`" if other_job else "an unreadable audit"
    raise ValueError(f"--out {out} holds {what}: audit into a new --out, or give --replace to replace its report "
                     "(its stored records are kept)")


def run_audit(model: nn.Module, model_info: dict, data: Dataset, cfg: AuditConfig, out: str | Path, *,
              data_info: dict | None = None, shard: tuple[int, int] = (0, 1), progress: bool = True,
              replace: bool = False) -> dict:
    """Audit ``model`` on ``data`` into the folder ``out`` (resumable, shardable); returns the report's JSON entry.

    For each threat the stages of :func:`stages` run as a cascade: each attack only on the examples
    every earlier stage of that threat left robust (AutoAttack's scheme, Croce & Hein ICML 2020). An
    example is *broken* under a threat when some stage's result is misclassified **and** within the
    threat's budget, measured by the budget threat's own ``measure``; it is *robust overall* only when
    it is correctly classified and robust under every threat, so the worst-case robust accuracy is at most
    every per-threat figure (same examples). Every threat runs on every correctly classified example,
    so the per-threat figures and the worst case come from one pass; an overall cascade would give the
    same worst case (each result depends only on the example's identity) but no per-threat figures.

    Records go to ``out/results.sqlite`` batch by batch: a killed audit resumes where it stopped.
    ``shard=(i, k)`` audits only the examples at positions ``i, i + k, …`` of the selection; shards may
    run at once into the same folder, and a last run without a shard (nothing left to attack) writes the
    complete report.

    Args:
        model: the classifier (eval mode, frozen; :func:`spatialadv.audit.load_user_model`).
        model_info: its ``info`` (``key`` keys the records).
        data: the examples (``x`` ``(N, C, H, W)`` in [0, 1]); checked with :func:`check_model_on_data` first.
        cfg: the audit's configuration.
        out: output folder (created only after every check passed).
        data_info: JSON-able description of the data for the report (default: its name).
        shard: ``(i, k)`` with ``0 ≤ i < k``.
        progress: progress bars.
        replace: audit into a folder that holds the audit of another model or other data (its report is
            replaced; its records stay in the store, keyed by model and data). Without it such a folder is
            refused before any work.

    Returns:
        The JSON entry written to ``out/report.json`` (see :func:`audit_report`).

    Raises:
        ValueError: a bad shard, a model that fails on the data, labels out of range
            (:func:`check_model_on_data`); :class:`~spatialadv.eval.store.StoreError`: unusable store.
    """
    i_shard, k_shard = shard
    if not (isinstance(k_shard, int) and isinstance(i_shard, int) and k_shard >= 1 and 0 <= i_shard < k_shard):
        raise ValueError(f"--shard must be I/K with 0 <= I < K, got {i_shard}/{k_shard}")
    num_classes = check_model_on_data(model, data)
    out = Path(out)
    check_folder(out, f"--out {out}")
    examples = select_examples(data.y, cfg.n)
    mine = examples[i_shard::k_shard]
    sanity = sanity_checks(model, data.x[examples], data.y[examples], num_classes)
    data_key = _data_key(data)
    if not replace:
        _check_same_audit(out, model_info, data_key)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with ResultStore(out / STORE_NAME) as store:
        store.set_metas({"audit": {"config": dataclasses.asdict(cfg), "model": model_info,
                                   "data": data_info or {"name": data.name}, "data_key": data_key,
                                   "classes": list(data.classes), "num_classes": num_classes, "examples": examples,
                                   "labels": [int(data.y[i]) for i in examples]},
                         "sanity": sanity})
        try:
            clean_key = hashlib.sha256(f"clean|{model_info['key']}|{data_key}".encode()).hexdigest()[:16]
            done = store.done_items(clean_key)
            todo = [i for i in mine if str(i) not in done]
            if todo:
                pred = _predict(model, data.x[todo])
                store.add_items(clean_key, {str(i): int(p) for i, p in zip(todo, pred.tolist())})
            clean = {int(k): v for k, v in store.items(clean_key).items()}
            for threat in cfg.threats:
                st = stages(threat, cfg)
                vkey = _verdict_key(model_info["key"], data_key, threat, st)
                verdicts = store.items(vkey)
                robust = [i for i in mine if clean[i] == int(data.y[i]) and str(i) not in verdicts]
                new: dict[str, dict] = {str(i): {"robust": False, "stage": None, "pred": clean[i], "size": None}
                                        for i in mine if clean[i] != int(data.y[i]) and str(i) not in verdicts}
                for s in st:
                    if not robust:
                        break
                    key = run_key(model_info["key"], s.attack, data_key, "untargeted")
                    store.register_run(key, "audit", f"{threat}/{s.label}", attack_config(s.attack),
                                       tags={"threat": threat, "stage": s.label})
                    pairs = [(i, -1) for i in robust]
                    run_attack(store, key, model, s.attack, data.x, data.y, pairs, batch_size=cfg.batch_size,
                               progress=progress, desc=f"{threat}: {s.label}")
                    wanted = set(robust)
                    still = []
                    for r in store.records(key, arrays=True):
                        i = r["idx"]
                        if i not in wanted:
                            continue
                        size = _measure(s.budget, data.x[i], r) if r["success"] else None
                        if size is not None and _within(s.budget, size):  # size is set for successes only
                            new[str(i)] = {"robust": False, "stage": s.label, "pred": r["pred"], "size": size}
                        else:
                            still.append(i)
                    robust = sorted(still)
                for i in robust:
                    new[str(i)] = {"robust": True, "stage": None, "pred": int(data.y[i]), "size": None}
                store.add_items(vkey, new)
        finally:
            store.set_meta("elapsed_s", store.get_meta("elapsed_s", 0.0) + (time.perf_counter() - t0))
    return audit_report(out, data=data)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


#: Fields of a stored audit's metadata and their JSON types (checked before a report is built from it).
_AUDIT_META = {"config": dict, "model": dict, "data": dict, "data_key": str, "classes": list, "examples": list, "labels": list}


def _check_audit_meta(meta: dict, path: Path) -> None:
    """Refuse a truncated or hand-edited audit metadata with one :class:`StoreError` naming what is wrong."""
    bad = [k for k, t in _AUDIT_META.items() if not isinstance(meta.get(k), t)]
    if not bad and not isinstance(meta["model"].get("key"), str):
        bad = ["model.key"]
    if not bad and (len(meta["labels"]) != len(meta["examples"])
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in meta["examples"])):
        bad = ["examples/labels"]
    if bad:
        raise StoreError(f"{path}: the stored audit metadata is incomplete or corrupt ({', '.join(bad)} missing or "
                         "malformed); audit again into a new --out")


def audit_report(out: str | Path, *, data: Dataset | None = None) -> dict:
    """Build ``report.md`` and ``report.json`` of an audit folder from its store (figures when ``data`` is given).

    The JSON entry follows RobustBench's leaderboard fields (Croce et al., NeurIPS 2021 Datasets and
    Benchmarks): accuracies as strings with two decimals in percent — ``clean_acc``, one ``<threat>_acc``
    per threat (e.g. ``stadv_acc``, ``linf_acc``) and ``worst_case_acc`` — plus ``budgets`` (each threat's
    budget in its units), ``number_forward_passes`` (forward passes the model needs per prediction: 1),
    ``n_examples``, ``per_class``, ``attacks`` (per threat and stage: examples attacked, broken, seconds,
    gradient and forward evaluations, ``over_budget``: misclassified but outside the budget, not counted),
    ``warnings`` (failed sanity checks: ``{"check", "message"}``),
    ``unreliable`` (any warning), ``complete`` and the model, data and configuration. Numbers count only examples with a verdict under
    every threat (an incomplete or sharded run reports the examples finished so far).

    Args:
        out: the audit folder.
        data: the audited data (for the figures of broken examples; None: no figures).

    Returns:
        The JSON entry (also written to ``out/report.json``).

    Raises:
        FileNotFoundError: no audit store in ``out``.
    """
    out = Path(out)
    path = out / STORE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no audit store at {path}: run `spatialadv audit ... --out {out}` first")
    with ResultStore(path, readonly=True) as store:
        meta = store.get_meta("audit")
        if not isinstance(meta, dict):
            raise ValueError(f"{path} holds no audit (not written by `spatialadv audit`)")
        sanity = list(store.get_meta("sanity", []))
        elapsed = store.get_meta("elapsed_s")
        _check_audit_meta(meta, path)
        stored: dict[str, Any] = {_RENAMED_CONFIG.get(k, k): v for k, v in meta["config"].items()}  # audits stored before the renames
        try:
            kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
            cfg = AuditConfig(**kwargs)
        except (TypeError, ValueError) as e:
            raise StoreError(f"{path}: the stored audit configuration is not usable ({e}); audit again into a new "
                             "--out") from e
        model_key, data_key = meta["model"]["key"], meta["data_key"]
        clean_key = hashlib.sha256(f"clean|{model_key}|{data_key}".encode()).hexdigest()[:16]
        clean = {int(k): v for k, v in store.items(clean_key).items()}
        selected = set(meta["examples"])
        verdicts: dict[str, dict[int, Any]] = {}
        runs: dict[str, list[dict]] = {}
        for threat in cfg.threats:
            st = stages(threat, cfg)
            verdicts[threat] = {int(k): v for k, v in store.items(_verdict_key(model_key, data_key, threat, st)).items()
                                if int(k) in selected}
            runs[threat] = []
            for s in st:
                key = run_key(model_key, s.attack, data_key, "untargeted")
                recs = store.records(key)
                recs = [r for r in recs if r["idx"] in selected]  # this audit's examples (the store may hold more)
                broken = sum(1 for v in verdicts[threat].values() if v["stage"] == s.label)
                successes = sum(1 for r in recs if r["success"] and r["clean_pred"] == r["label"])
                runs[threat].append({"stage": s.label, "attack": attack_config(s.attack), "attacked": len(recs),
                                     "broken": broken, "over_budget": successes - broken, "time_s": float(sum(r["time_s"] for r in recs)),
                                     "gradient_evals": int(sum(r["grad_evals"] for r in recs)),
                                     "forward_evals": int(sum(r["forward_evals"] or 0 for r in recs)),
                                     "gradient_free": s.gradient_free})
                if s.gradient_free and broken and threat in ("linf", "l2"):
                    sanity.append({"check": "gradient_masking", "message": f"{threat}: the gradient-free {s.label} broke "
                                   f"{broken} example(s) that the gradient attacks left robust: gradients are masked or "
                                   "obfuscated; the gradient attacks' figure alone would over-state robustness"})
    examples = [i for i in meta["examples"] if i in clean and all(i in verdicts[t] for t in cfg.threats)]
    n = len(examples)
    classes = meta["classes"]
    ys = dict(zip(meta["examples"], meta["labels"]))
    correct = {i: clean[i] == ys[i] for i in examples}
    robust = {t: {i: bool(verdicts[t][i]["robust"]) for i in examples} for t in cfg.threats}
    worst = {i: correct[i] and all(robust[t][i] for t in cfg.threats) for i in examples}

    def acc(flags: dict, idx: Any) -> float:
        idx = list(idx)
        return sum(flags[i] for i in idx) / len(idx) if idx else math.nan

    per_class = {}
    for c, name in enumerate(classes):
        idx = [i for i in examples if ys[i] == c]
        per_class[name] = {"n": len(idx), "clean_acc": _pct(acc(correct, idx)),
                           **{f"{t}_acc": _pct(acc(robust[t], idx)) for t in cfg.threats},
                           "worst_case_acc": _pct(acc(worst, idx))}
    complete = n == len(meta["examples"])
    entry = {
        "name": meta["model"].get("spec"), "model": meta["model"], "dataset": meta["data"], "n_examples": n,
        "clean_acc": _pct(acc(correct, examples)),
        **{f"{t}_acc": _pct(acc(robust[t], examples)) for t in cfg.threats},
        "worst_case_acc": _pct(acc(worst, examples)),
        "budgets": cfg.budgets(), "number_forward_passes": 1, "threat_models": list(cfg.threats),
        "per_class": per_class, "attacks": runs, "warnings": sanity, "unreliable": bool(sanity),
        "n_selected": len(meta["examples"]), "complete": complete,
        "config": dataclasses.asdict(cfg), "elapsed_s": elapsed, "references": [cite(p) for p in PAPERS],
    }
    figures = _figures(out, cfg, verdicts, examples, data) if data is not None else _existing_figures(out, cfg)
    entry["figures"] = figures
    entry = json.loads(json.dumps(_strict(entry)))  # exactly what report.json holds (tuples become lists)
    (out / "report.json").write_text(json.dumps(entry, indent=2, allow_nan=False))
    (out / "report.md").write_text(_markdown(entry, cfg))
    return entry


def _strict(v: Any) -> Any:
    """``v`` with non-finite floats written as strings (``"inf"``), so that report.json is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _strict(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(u) for u in v]
    return v


def _existing_figures(out: Path, cfg: AuditConfig) -> list[str]:
    return [f"broken_{t}.png" for t in cfg.threats if (out / f"broken_{t}.png").is_file()]


def _figures(out: Path, cfg: AuditConfig, verdicts: dict, examples: list[int], data: Dataset) -> list[str]:
    figs = []
    with ResultStore(out / STORE_NAME, readonly=True) as store:
        model_key, data_key = store.get_meta("audit")["model"]["key"], store.get_meta("audit")["data_key"]
        for t in cfg.threats:
            broken = [i for i in examples if verdicts[t][i]["stage"] is not None][:8]
            if not broken:
                continue
            imgs, titles = [], []
            advs, adv_titles = [], []
            for s in stages(t, cfg):
                key = run_key(model_key, s.attack, data_key, "untargeted")
                mine = [i for i in broken if verdicts[t][i]["stage"] == s.label]
                if not mine:
                    continue
                recs = {r["idx"]: r for r in store.records(key, arrays=True) if r["idx"] in mine}
                for i in mine:
                    imgs.append(data.x[i].numpy())
                    titles.append(f"#{i} y={data.classes[int(data.y[i])]}")
                    advs.append(recs[i]["x_adv"])
                    adv_titles.append(f"{s.label}: {data.classes[recs[i]['pred']] if recs[i]['pred'] < len(data.classes) else recs[i]['pred']}")
            name = f"broken_{t}.png"
            prediction_panel(imgs + advs, titles + adv_titles, out / name, columns=len(imgs),
                             title=f"{t}: originals (top) and broken examples (bottom, attack: prediction)")
            figs.append(name)
    return figs


_NAMES = {"stadv": "stAdv (flow)", "stm": "STM (rotation + translation)", "linf": "L∞", "l2": "L2",
          "smooth": "smooth (sPGD2)"}


def _budget_text(t: str, cfg: AuditConfig) -> str:
    return {"stadv": f"StAdv() defaults, flow TV ≤ {cfg.flow_budget:g} px",
            "stm": f"±{cfg.max_rotation:g}°, ±{cfg.max_translation:g} px ({cfg.stm_rotations}×{cfg.stm_translations}×"
                   f"{cfg.stm_translations} grid)",
            "linf": f"ε = {cfg.linf_eps:g}", "l2": f"ε = {cfg.l2_eps:g}", "smooth": f"L2 ε = {cfg.smooth_eps:g}"}[t]


def _markdown(e: dict, cfg: AuditConfig) -> str:
    lines = [f"# Robustness audit of `{e['name']}`", ""]
    if not e["complete"]:
        lines += [f"**Incomplete**: {e['n_examples']} of {e['n_selected']} examples have a "
                  "verdict under every threat (an interrupted or sharded run); run the same command again to finish.", ""]
    if e["warnings"]:
        lines += ["## Warnings: do not trust these numbers before reading these", ""]
        lines += [f"- **{w['check']}**: {w['message']}" for w in e["warnings"]] + [""]
    lines += ["## Robust accuracy (%)", "",
              "| threat model | budget | robust accuracy |", "|---|---|---|",
              f"| none (clean) | – | {e['clean_acc']} |"]
    for t in cfg.threats:
        lines.append(f"| {_NAMES[t]} | {_budget_text(t, cfg)} | {e[f'{t}_acc']} |")
    lines += [f"| **worst case over all** | every threat above | **{e['worst_case_acc']}** |", "",
              f"Over the first {e['n_examples']} examples of `{e['dataset'].get('name')}` (round-robin over classes). "
              "An example is robust under a threat when it is classified correctly and no attack of that threat's "
              "cascade broke it within the budget (measured by the threat's own measure); it is robust in the worst "
              "case when it is robust under every threat. Clean errors count as non-robust (RobustBench's convention).",
              "", "## Per class (%)", ""]
    cols = ["class", "n", "clean"] + [t for t in cfg.threats] + ["worst"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c, v in e["per_class"].items():
        lines.append("| " + " | ".join([c, str(v["n"]), v["clean_acc"]] + [v[f"{t}_acc"] for t in cfg.threats]
                                        + [v["worst_case_acc"]]) + " |")
    lines += ["", "## Attack cascades", "",
              "| threat | attack | attacked | broken | misclassified over budget | seconds | gradient evaluations | "
              "forward evaluations |", "|---|---|---|---|---|---|---|---|"]
    for t in cfg.threats:
        for r in e["attacks"][t]:
            lines.append(f"| {t} | {r['stage']} | {r['attacked']} | {r['broken']} | {r['over_budget']} | {r['time_s']:.1f} | "
                         f"{r['gradient_evals']} | {r['forward_evals']} |")
    lines += ["", "Each attack runs only on the examples the earlier attacks of its threat left robust (AutoAttack's "
              "cascade). Settings: " + "; ".join(f"{r['stage']}: {json.dumps(r['attack'])}" for t in cfg.threats
                                                 for r in e["attacks"][t]), ""]
    el = e["elapsed_s"]
    lines += ["## Run", "", f"Model `{e['name']}` (records keyed by `{e['model']['key']}`), "
              f"{e['model']['parameters']} parameters; wall time of all runs into this folder: "
              f"{'–' if el is None else f'{el:.0f} s'}. JSON entry (RobustBench fields): `report.json`.", ""]
    if e["figures"]:
        lines += ["## Broken examples", ""] + [f"![{f}]({f})" for f in e["figures"]] + [""]
    lines += ["## References", ""] + [f"- {r}" for r in e["references"]] + [""]
    return "\n".join(lines)
