"""Command-line interface: ``spatialadv {train, attack, evaluate, report, reproduce, audit}``.

Shared options are defined once (:func:`_shared`) and taken by the commands that compute:

============  ========  =======  =========  =======================================
option        train     attack   audit      reproduce NAME
============  ========  =======  =========  =======================================
``--quiet``   yes       yes      yes        yes
``--threads`` yes       yes      yes        yes (the experiment's own default if its Config has one)
``--device``  yes       yes      yes        no: experiments run on the CPU
``--out``     no        no       yes        yes (``attack`` writes to ``--store``, a file)
============  ========  =======  =========  =======================================

Key=value hyper-parameters have one spelling, ``--param KEY=VALUE`` (a JSON value): the attack's on ``attack``,
the training objective's on ``train``; ``--param objective.KEY=VALUE`` names the objective's on both.
``--objective-param KEY=VALUE`` is a deprecated alias of ``--param objective.KEY=VALUE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

__all__ = ["main", "UsageError"]

# The commands import the library inside their functions, so each command pays only for what it runs.
# `spatialadv --version` answers before the parser is built; building the parser (every --help, every command)
# imports the experiment and attack registries, and with them torch.


class UsageError(ValueError):
    """Bad user input on the command line: printed as one line, exit status 2."""


def _user(fn, *args, **kwargs):
    """Call ``fn``; a ValueError/TypeError it raises about user-given values becomes a :class:`UsageError`."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e


def _param(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k.strip().replace("-", "_"), json.loads(v)
    except json.JSONDecodeError:
        return k.strip().replace("-", "_"), v


def _objective_param(s: str) -> tuple[str, object]:
    k, v = _param(s)
    print(f"warning: --objective-param is deprecated; use --param objective.{k}=...", file=sys.stderr)
    return "objective." + k, v


def _params(args, default: str) -> dict[str, dict]:
    """``{"attack": {...}, "objective": {...}}`` from ``--param [objective.]KEY=VALUE`` (unprefixed keys go to ``default``)."""
    out: dict[str, dict] = {"attack": {}, "objective": {}}
    for k, v in getattr(args, "param", None) or []:
        target, _, name = k.rpartition(".")
        target = target or default
        if target not in out or (target == "attack" and default != "attack"):
            raise UsageError(f"--param {k}: the prefix must be "
                             + ("'objective.'" if default != "attack" else "'objective.' or none (the attack's)"))
        out[target][name] = v
    return out


def _in_range(option: str, value: int, lo: int, hi: int) -> None:
    """Refuse an integer option outside ``[lo, hi]`` (one line naming the option)."""
    if not lo <= value <= hi:
        top = "2**63-1" if hi == 2**63 - 1 else str(hi)
        raise UsageError(f"{option} must be an integer in [{lo}, {top}], got {value}")


def _check_cache() -> None:
    """Refuse a model cache (``SPATIALADV_CACHE``) that cannot be a folder, before any training."""
    from ._paths import PathError, check_folder
    from .models import cache_dir

    try:
        check_folder(cache_dir(), "the model cache (SPATIALADV_CACHE)")
    except PathError as e:
        raise UsageError(str(e)) from e


def _check_out(out) -> None:
    """Refuse an ``--out`` folder that is a file or lies under one, before anything is created."""
    from ._paths import PathError, check_folder

    try:
        check_folder(out, f"--out {out}")
    except PathError as e:
        raise UsageError(str(e)) from e


def _spec(args):
    from ._config import INT_MAX
    from .data import DataSpec
    from .training import ModelSpec, Objective, TrainConfig

    _in_range("--seed", args.seed, 0, INT_MAX)
    _in_range("--epochs", args.epochs, 1, 10**6)
    _in_range("--holdout", args.holdout, 0, 10**9)
    _in_range("--patience", args.patience, 0, 10**6)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite float > 0, got {args.lr}")
    _check_cache()
    objective = _user(Objective, args.objective, **_params(args, "attack" if args.command == "attack" else "objective")["objective"])
    train = _user(TrainConfig, epochs=args.epochs, seed=args.seed, lr=args.lr, holdout=args.holdout, patience=args.patience)
    return _user(ModelSpec, args.model, DataSpec(args.data, seed=args.seed), train, objective)


def _load_model(args, device=None):
    from .training import load_or_train

    return load_or_train(_spec(args), progress=not args.quiet, device=device)


def cmd_train(args) -> int:
    from . import distributed
    from .training import TrainingCollapsed

    _spec(args)
    try:
        _, info = _load_model(args, _device(args))
    except TrainingCollapsed as e:  # a training outcome, not bad input: exit status 1, nothing cached
        print(f"error: {e}", file=sys.stderr)
        return 1
    if distributed.rank() > 0:
        return 0
    notes = info.get("notes") or {}
    curve = ""
    if notes.get("curve"):
        best = next(p for p in notes["curve"] if p["epoch"] == notes["best_epoch"])
        adv = "" if best["adversarial"] is None else f", under its attack {100 * best['adversarial']:.1f}%"
        curve = (f"; held-out curve: best epoch {notes['best_epoch']} of {notes['epochs_run']} "
                 f"({'plateau' if notes['stopped'] == 'plateau' else 'epoch limit'}), clean {100 * best['clean']:.1f}%{adv}")
    print(f"{args.model} on {args.data}: test accuracy {100 * info['test_accuracy']:.2f}%{curve} "
          f"({'loaded from' if info['cached'] else 'saved to'} {info['path']})")
    return 0


def _print_summary(rows: list[tuple[str, str, dict]]) -> None:
    head = f"{'model':<10} {'attack':<12} {'attacks':>7} {'success%':>9} {'robust%':>9} {'D_L2':>7} {'flowTV':>8} {'ms/atk':>8}"
    print(head)
    for m, a, s in rows:
        tv = s.get("flow_tv_mean")
        print(f"{m:<10} {a:<12} {s['pairs']:>7} {100 * s['P_suc']:>9.2f} {100 * s['robust_accuracy']:>9.2f} "
              f"{s['D_bar']:>7.3f} {'' if tv is None else f'{tv:.4f}':>8} {s['ms_per_example']:>8.1f}")


def _device(args):
    """The ``--device`` as a torch.device, with the process group joined under torchrun."""
    import torch

    from . import distributed

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise UsageError(f"--device: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to this process")
    distributed.init(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def cmd_attack(args) -> int:
    from . import distributed
    from ._config import INT_MAX
    from .attacks import make_attack
    from .data import load_dataset
    from .eval import ResultStore, first_correct, make_pairs, summarize
    from .experiments.framework import AttackRun, execute_run

    _in_range("--n", args.n, 1, INT_MAX)
    _in_range("--batch-size", args.batch_size, 1, 10**6)
    attack = _user(make_attack, args.attack, **_params(args, "attack")["attack"])
    _spec(args)  # validate the model options before any work
    device = _device(args)
    test = load_dataset(args.data, "test", seed=args.seed)
    with distributed.rank_zero_first():  # rank 0 creates the store's tables before the others open it
        store = ResultStore(args.store)  # opened (and checked) before any training
    with store:
        model, info = _load_model(args, device)
        x, y = test.x.to(device), test.y.to(device)
        idx = first_correct(model, x, y, args.n).cpu()
        pairs = make_pairs(idx, test.y, test.num_classes, args.mode, seed=args.seed)
        run = AttackRun(args.model, args.attack, model, attack, info["key"], x, y, f"{args.data}-test-seed{args.seed}",
                        pairs, args.mode, batch_size=args.batch_size)
        wanted = set(pairs)
        before = len(wanted & store.done(run.key()))
        distributed.barrier()  # every process counted before any writes
        execute_run(run, store, progress=not args.quiet)
        if distributed.rank() > 0:
            return 0  # rank 0 reports for every process
        recs = [r for r in store.records(run.key()) if (r["idx"], r["target"]) in wanted]
    procs = f" by {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    print(f"clean accuracy {100 * info['test_accuracy']:.2f}%; attacked {len(recs) - before} new of {len(pairs)} pairs{procs}; store {args.store}")
    _print_summary([(args.model, args.attack, summarize(recs))])
    return 0


def cmd_evaluate(args) -> int:
    from .eval import ResultStore, summarize

    if not Path(args.store).is_file():
        print(f"error: no results store at {args.store}", file=sys.stderr)
        return 2
    with ResultStore(args.store, readonly=True) as store:
        rows = [(r["model"], r["attack"], summarize(store.records(r["run_key"]))) for r in store.runs()]
    rows = [r for r in rows if r[2]["pairs"]]
    if not rows:
        print(f"error: no attack records in {args.store}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"model": m, "attack": a, **s} for m, a, s in rows], indent=2))
    else:
        _print_summary(rows)
    return 0


def cmd_report(args) -> int:
    from .audit import STORE_NAME, audit_report
    from .eval import ResultStore
    from .experiments.framework import rebuild, stored_experiment

    store = Path(args.out) / STORE_NAME
    if store.is_file():
        with ResultStore(store, readonly=True) as s:
            is_audit = s.get_meta("audit") is not None
        if is_audit:  # an audit folder: numbers from the store, figures kept as they are
            audit_report(args.out)
            print(f"wrote {Path(args.out) / 'report.md'}")
            return 0
    _user(stored_experiment, args.out)
    rebuild(args.out)
    print(f"wrote {Path(args.out) / 'report.md'}")
    return 0


def cmd_reproduce(args) -> int:
    from . import distributed
    from .experiments import experiments, run_experiment
    from .experiments.framework import config_from_args, validate_config

    exp = experiments()[args.experiment]
    cfg = _user(config_from_args, exp.config, args)
    _user(validate_config, cfg)  # every option's declared domain, before the folder is created or anything trains
    _check_out(args.out)
    _check_cache()
    distributed.init()
    rep = run_experiment(exp, cfg, args.out, progress=not args.quiet)
    if distributed.rank() > 0:
        return 0  # rank 0 wrote and prints the report
    print((Path(args.out) / "report.md").read_text())
    print(f"report: {Path(args.out) / 'report.md'} (JSON: report.json; figures: {', '.join(rep['figures'])})")
    return 0


def _shard(s: str) -> tuple[int, int]:
    try:
        i, k = (int(v) for v in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K (e.g. 0/4), got {s!r}") from None
    if not (k >= 1 and 0 <= i < k):
        raise argparse.ArgumentTypeError(f"expected I/K with 0 <= I < K, got {s!r}")
    return i, k


def _on_device(model, device):
    """``model`` moved to ``device`` behind a wrapper taking and returning CPU tensors (eval mode; gradients flow).

    The audit keeps its data and the attacks' own arithmetic on the CPU; the model's forward and backward passes
    run on ``device``.
    """
    from torch import nn

    class OnDevice(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.to(device)).to(x.device)

    return OnDevice(model.to(device)).eval()


def cmd_audit(args) -> int:
    import os

    from .audit import AuditConfig, AuditInputError, GuardedModel, check_model_on_data, load_user_data, load_user_model, run_audit

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise UsageError("audit does not run under torchrun yet: start one process per shard with --shard I/K "
                         "(all into the same --out), then once without --shard to write the report")

    from ._config import config_from_args, validate_config

    cfg = _user(config_from_args, AuditConfig(), args)
    _user(validate_config, cfg)
    out = Path(args.out)
    _check_out(out)
    # every check before the output folder is created: nothing is half-written on bad input
    try:
        model, info = load_user_model(args.model, weights=args.weights, mean=args.mean, std=args.std, output=args.output)
    except AuditInputError as err:
        raise UsageError(str(err)) from err
    data = load_user_data(args.data, labels=args.labels, seed=cfg.seed)
    device = _device(args)
    if device.type != "cpu":
        model = _on_device(model, device)
    _user(check_model_on_data, model, data)  # errors on the clean images explained (image size, channels, dtype)
    model = GuardedModel(model, args.model)  # then, during the audit: the model's errors and non-finite logits in one line
    data_info = {"name": args.data, "labels": args.labels, "classes": len(data.classes), "images": len(data),
                 "shape": list(data.x.shape[1:])}
    e = _user(run_audit, model, info, data, cfg, out, data_info=data_info, shard=args.shard, progress=not args.quiet,
              replace=args.replace)
    for w in e["warnings"]:
        print(f"WARNING {w['check']}: {w['message']}")
    print(f"audit of {args.model} on {args.data}: {e['n_examples']} of {e['n_selected']} examples"
          + ("" if e["complete"] else " (incomplete: run again to finish)"))
    print(f"{'threat':<8} {'robust%':>8} {'seconds':>8}  broken by")
    print(f"{'clean':<8} {e['clean_acc']:>8} {'':>8}")
    for t in cfg.threats:
        runs = e["attacks"][t]
        print(f"{t:<8} {e[t + '_acc']:>8} {sum(r['time_s'] for r in runs):>8.1f}  "
              + ", ".join(f"{r['stage']} {r['broken']}" for r in runs))
    print(f"{'worst':<8} {e['worst_case_acc']:>8} {e['elapsed_s']:>8.1f}  (wall time of all runs into {out})")
    print(f"report: {out / 'report.md'} (JSON entry: report.json)")
    return 0


def _shared(*, device: bool = True, out: str | None = None, threads: int | None = None) -> argparse.ArgumentParser:
    """A parent parser with the shared options (built anew per command: argparse shares parents' actions).

    ``--quiet`` and ``--threads`` always; ``--device`` when ``device``; ``--out`` (default ``out``) when ``out``.
    ``--threads`` stores nothing unless given, so a reproduce Config's own ``threads`` field (default ``threads``)
    keeps its default.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("shared options")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    shown = threads if threads else "torch's"
    g.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N", help=f"torch intra-op threads (default: {shown})")
    if device:
        g.add_argument("--device", default="cpu", help="where the model computes: cpu, cuda or cuda:K (default: cpu; "
                       "under torchrun with cuda each process uses cuda:LOCAL_RANK and NCCL)")
    if out is not None:
        g.add_argument("--out", default=out, help=f"output folder: results.sqlite, report.md, report.json, figures "
                       f"(default: {out})")
    return p


def _add_version(p: argparse.ArgumentParser) -> None:
    from . import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                   help="print the installed version and exit")


def _version_parser() -> argparse.ArgumentParser:
    """Answers ``--version`` alone, before the full parser (whose commands' imports load torch) is built."""
    p = argparse.ArgumentParser(prog="spatialadv", add_help=False, allow_abbrev=False)
    _add_version(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    from ._config import add_config_arguments
    from .attacks import cli_attacks
    from .audit import AuditConfig
    from .data import DATASETS
    from .experiments import experiments
    from .models import MODELS
    from .training import OBJECTIVES

    p = argparse.ArgumentParser(prog="spatialadv", description="Adversarial examples beyond L_p norms: attacks, evaluation, reports.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    _add_version(p)
    sub = p.add_subparsers(dest="command", required=True)

    def model_options(sp, param_help):
        sp.add_argument("--model", default="mnist-a", choices=sorted(MODELS))
        sp.add_argument("--data", default="mnist", choices=sorted(DATASETS))
        sp.add_argument("--seed", type=int, default=0, help="seed of the data split and of training")
        sp.add_argument("--epochs", type=int, default=12, help="training epochs when the model is not cached (with "
                        "--patience: the maximum)")
        sp.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (Madry et al.'s PGD training: 1e-4)")
        sp.add_argument("--holdout", type=int, default=0, help="hold this many training images out and record a "
                        "learning curve on them after every epoch (clean and under the objective's attack)")
        sp.add_argument("--patience", type=int, default=0, help="with --holdout: stop when the held-out accuracy has not "
                        "improved for this many epochs, keeping the best epoch (0: train all --epochs)")
        sp.add_argument("--objective", default="standard", choices=sorted(OBJECTIVES),
                        help="training objective (e.g. fgsm-at, pgd-at: adversarial training)")
        sp.add_argument("--param", action="append", type=_param, metavar="KEY=VALUE", help=param_help)
        sp.add_argument("--objective-param", dest="param", action="append", type=_objective_param, metavar="KEY=VALUE",
                        help="deprecated: same as --param objective.KEY=VALUE")

    sp = sub.add_parser("train", parents=[_shared()],
                        help="train a registry model (or load it from the cache) and print its test accuracy")
    model_options(sp, "training objective option (JSON value), e.g. --param eps=0.3 --param steps=7 "
                      "(objective.KEY works too)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("attack", parents=[_shared()],
                        help="attack the first N correctly classified test images; records go to a SQLite store")
    model_options(sp, "attack hyper-parameter (JSON value), e.g. --param tau=0.005 --param 'tau_search=[0.005,0.0005]'; "
                      "objective.KEY=VALUE: an option of the model's training objective, e.g. --param objective.eps=0.3")
    sp.add_argument("--attack", default="stadv", choices=cli_attacks())
    sp.add_argument("-n", "--n", type=int, default=10, help="number of correctly classified test images (-n under torchrun, "
                    "whose own parser takes --n for an abbreviation of its options; or put -- before the command)")
    sp.add_argument("--mode", default="all", choices=["all", "random", "untargeted"], help="targets: all 9, one random, or none")
    sp.add_argument("--store", default="runs/attacks.sqlite", help="results store (resumable)")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.set_defaults(func=cmd_attack)

    sp = sub.add_parser("evaluate", help="print the metrics of every run in a results store")
    sp.add_argument("--store", default="runs/attacks.sqlite")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("report", help="rebuild report.md / report.json (and a reproduce folder's figures) from a folder's store")
    sp.add_argument("out", help="folder written by `spatialadv reproduce` or `spatialadv audit`")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("reproduce", help="reproduce a paper's experiment end to end")
    exp_sub = sp.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, exp in experiments().items():
        h = exp.help.replace("%", "%%")
        shared = _shared(device=False, out=f"runs/{name}", threads=getattr(exp.config, "threads", None))
        esp = exp_sub.add_parser(name, help=h, description=h, parents=[shared])
        add_config_arguments(esp, exp.config)
        esp.set_defaults(func=cmd_reproduce)

    sp = sub.add_parser("audit", parents=[_shared(out="runs/audit")],
                        help="audit your own model: robust accuracy per threat model and worst case per example",
                        description="Attack a user's model under stAdv, STM, L∞, L2 and smooth threats (a cascade per "
                        "threat), check it (AutoAttack's sanity checks) and write report.md / report.json (RobustBench "
                        "fields) into --out. Resumable; shardable with --shard.")
    sp.add_argument("--model", required=True, metavar="FILE.py:FACTORY | module:FACTORY | TORCHSCRIPT",
                    help="a factory returning an nn.Module (in a Python file or an importable module), or a TorchScript file")
    sp.add_argument("--weights", metavar="FILE.safetensors", help="state dict to load into the factory's model (safetensors only)")
    sp.add_argument("--data", required=True, metavar="NAME|FILE|FOLDER",
                    help="built-in dataset (test split), .npz (x, y), IDX images (with --labels) or a folder with one "
                         "sub-folder of images per class")
    sp.add_argument("--labels", metavar="IDX", help="labels file of IDX images")
    sp.add_argument("--mean", type=float, nargs="+", help="input normalisation mean per channel ([0, 1] units)")
    sp.add_argument("--std", type=float, nargs="+", help="input normalisation std per channel")
    sp.add_argument("--output", metavar="KEY", help="the logits' key (dict outputs, default 'logits') or position (tuples, default 0)")
    sp.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/K", help="audit only examples I, I+K, ... (default 0/1)")
    sp.add_argument("--replace", action="store_true",
                    help="audit into an --out that holds the audit of another model or other data, replacing its report "
                         "(its stored records are kept); without it such a folder is refused")
    add_config_arguments(sp.add_argument_group("audit configuration"), AuditConfig())
    sp.set_defaults(func=cmd_audit)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 success, 2 bad user input: one line on stderr).

    User errors are bad options (each checked against its declared domain before any work), missing or corrupt
    data files, an unusable or corrupt results store, an ``--out`` / cache / checkpoint path that is a file where a
    folder is needed (or the reverse), and a user model that fails while audited; any other exception is an
    internal error and keeps its traceback.
    """
    if "--version" in (sys.argv[1:] if argv is None else argv)[:1]:
        _version_parser().parse_known_args(argv)  # prints the version and exits
    from ._config import MAX_THREADS
    from ._paths import PathError
    from .data import DataError
    from .eval.store import StoreError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threads = getattr(args, "threads", None)
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        print(f"error: --threads must be an integer in [1, {MAX_THREADS}], got {threads}", file=sys.stderr)
        return 2
    restore = None
    if threads is not None:
        import torch

        restore = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return args.func(args)
    except (UsageError, StoreError, DataError, PathError, FileNotFoundError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (NotADirectoryError, IsADirectoryError) as e:  # a path the checks above did not foresee
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    finally:
        if restore is not None:
            torch.set_num_threads(restore)


if __name__ == "__main__":
    sys.exit(main())
