"""torchrun: exact sharding of attacks over 2 gloo processes, resume after a killed rank, DDP (PGD adversarial) training."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spatialadv import distributed
from spatialadv.eval import ResultStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the ranks")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
MODEL = ["--model", "fc-500", "--data", "digits", "--epochs", "2", "--quiet"]


def _env(cache: Path) -> dict:
    env = dict(os.environ, SPATIALADV_CACHE=str(cache), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _cli(args: list[str], cache: Path, torchrun: bool = False, **kw) -> subprocess.CompletedProcess:
    cmd = (TORCHRUN + ["-m", "spatialadv", "--"] if torchrun else [sys.executable, "-m", "spatialadv"]) + args
    return subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=300, **kw)


def _records(store: Path) -> list[dict]:
    with ResultStore(store) as s:
        (run,) = s.runs()
        recs = s.records(run["run_key"], arrays=True)
    for r in recs:
        r.pop("time_s")
    return recs


def _evaluate(store: Path, cache: Path) -> list[dict]:
    out = _cli(["evaluate", "--store", str(store), "--json"], cache)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    for r in rows:
        r.pop("time_s"), r.pop("ms_per_example")
    return rows


def _same(a: list[dict], b: list[dict]) -> None:
    assert [(r["idx"], r["target"]) for r in a] == [(r["idx"], r["target"]) for r in b]
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if k in ("x_adv", "flow") and v is not None:
                assert (v == rb[k]).all(), k
            elif k == "params":
                assert v.keys() == rb[k].keys()
            else:
                assert v == rb[k], (k, ra["idx"], ra["target"])


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_is_a_partition_of_whole_batches(world):
    items = list(range(23))
    shares = [distributed.shard(items, 4, rank_=r, world=world) for r in range(world)]
    assert sorted(sum(shares, [])) == items  # nothing lost, nothing twice, the remainder included
    for share in shares:
        assert share == sorted(share)
        batches = {i // 4 for i in share}
        assert all({i // 4 for i in share if i // 4 == b} and all(j in share for j in items[4 * b : 4 * b + 4])
                   for b in batches)  # whole single-process batches
    with pytest.raises(ValueError, match="batch_size"):
        distributed.shard(items, 0, rank_=0, world=2)
    with pytest.raises(ValueError, match="rank"):
        distributed.shard(items, 4, rank_=2, world=2)


def test_outside_torchrun_everything_is_rank_zero():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    distributed.barrier()
    with distributed.rank_zero_first() as first:
        assert first


def _ranks(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of the workers below a torchrun process (read from /proc)."""
    out = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
        if ranks and (ppid == parent or _parent(ppid) == parent):
            out[ranks[0]] = pid
    return out


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def _count(store: Path) -> int:
    try:
        with sqlite3.connect(str(store), timeout=30) as c:
            return int(c.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_torchrun_attack_equals_single_process_and_resumes_after_a_killed_rank(tmp_path):
    cache = tmp_path / "cache"
    attack = ["attack", *MODEL, "--attack", "pgd", "--n", "40", "--mode", "all", "--batch-size", "8"]
    # 1. two gloo processes (the model is trained data-parallel and cached by rank 0)
    out = _cli(attack + ["--store", str(tmp_path / "dist.sqlite")], cache, torchrun=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "360 new of 360 pairs by 2 processes" in out.stdout
    # 2. one process, same cached model: the same records and the same evaluation
    out = _cli(attack + ["--store", str(tmp_path / "single.sqlite")], cache)
    assert out.returncode == 0, out.stderr[-3000:]
    single = _records(tmp_path / "single.sqlite")
    assert len(single) == 360
    _same(_records(tmp_path / "dist.sqlite"), single)
    assert _evaluate(tmp_path / "dist.sqlite", cache) == _evaluate(tmp_path / "single.sqlite", cache)

    # 3. kill rank 1 mid-run: torchrun stops; the rerun completes with nothing lost or duplicated
    store = tmp_path / "killed.sqlite"
    slow = attack[:-2] + ["--batch-size", "2", "--param", "steps=400", "--store", str(store)]
    proc = subprocess.Popen(TORCHRUN + ["-m", "spatialadv", "--"] + slow, env=_env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while _count(store) < 4 and time.time() - t0 < 120 and proc.poll() is None:
            time.sleep(0.05)
        ranks = _ranks(proc.pid)
        assert 1 in ranks, f"no rank 1 below torchrun {proc.pid}: {ranks}"
        os.kill(ranks[1], signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    partial = _count(store)
    assert 0 < partial < 360, partial
    out = _cli(slow, cache, torchrun=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{360 - partial} new of 360 pairs" in out.stdout
    with ResultStore(store) as s:
        (run,) = s.runs()
        assert s.count(run["run_key"]) == 360 and len(s.done(run["run_key"])) == 360


@pytest.mark.slow
def test_ddp_pgd_training_gives_a_loadable_checkpoint_with_single_process_accuracy(tmp_path):
    from spatialadv.data import DataSpec
    from spatialadv.training import ModelSpec, Objective, TrainConfig, load_or_train, model_key

    pgd = {"eps": 0.1, "steps": 3, "step_size": 0.05}
    args = ["train", *MODEL, "--objective", "pgd-at", *sum((["--param", f"{k}={v}"] for k, v in pgd.items()), [])]
    dist_out = _cli(args, tmp_path / "ddp", torchrun=True)
    assert dist_out.returncode == 0, dist_out.stderr[-3000:]
    single_out = _cli(args, tmp_path / "single")
    assert single_out.returncode == 0, single_out.stderr[-3000:]

    spec = ModelSpec("fc-500", DataSpec("digits"), TrainConfig(epochs=2), Objective("pgd-at", **pgd))
    name = f"{model_key(spec)}.safetensors"
    assert (tmp_path / "ddp" / "models" / name).is_file()  # same format and cache key as one process
    _, ddp = load_or_train(spec, directory=tmp_path / "ddp" / "models", progress=False)
    _, one = load_or_train(spec, directory=tmp_path / "single" / "models", progress=False)
    assert ddp["cached"] and one["cached"]
    assert ddp["test_accuracy"] > 0.75
    assert abs(ddp["test_accuracy"] - one["test_accuracy"]) <= 0.03


@pytest.mark.slow
def test_torchrun_reproduce_builds_one_report_with_the_single_process_results(tmp_path):
    args = ["reproduce", "stadv-mnist", "--models", "fc-200", "--n", "3", "--n-baselines", "1", "--n-ablation", "1",
            "--epochs", "1", "--quiet"]
    cache = tmp_path / "cache"
    out = _cli(args + ["--out", str(tmp_path / "dist")], cache, torchrun=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("report: ") == 1  # rank 0 alone prints (and writes) the report
    out = _cli(args + ["--out", str(tmp_path / "single")], cache)
    assert out.returncode == 0, out.stderr[-3000:]
    dist, single = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("dist", "single"))
    assert dist["environment"]["processes"] == 2 and single["environment"]["processes"] == 1
    assert dist["complete"] and single["complete"]
    assert _no_time(dist["results"]) == _no_time(single["results"])
    assert len(dist["results"]) == len(single["results"]) > 3


def _no_time(o):
    if isinstance(o, dict):
        return {k: _no_time(v) for k, v in o.items() if "time" not in k and not k.startswith("ms_")}
    if isinstance(o, list):
        return [_no_time(v) for v in o]
    return o
