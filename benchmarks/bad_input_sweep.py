"""A bad-input sweep: every case, through the API or the command line, classified clear / silent / other.

Each case feeds the library one kind of bad input a user can give (wrong shapes, dtypes, ranges, NaN,
options outside their domain, corrupt files, a model that is not what a certificate describes) and
classifies what happens:

* ``clear``  — an error a user can act on: the API raises ``TypeError``/``ValueError``/``FileNotFoundError``
  from the library's own code (not from inside torch or numpy), or the command line exits with status 2
  and one ``error:`` line, no traceback, and (for option cases) without creating ``--out``; or, for the
  cases whose safe answer is a result, that safe result (e.g. abstaining instead of certifying NaN).
* ``silent`` — accepted: the bad input runs (or starts work: still running after the case's time limit).
* ``other``  — anything else: a traceback, an error raised inside a dependency, the wrong exit status.

Usage::

    python benchmarks/bad_input_sweep.py [--only SUBSTRING] [--json FILE]

Prints one line per case and the counts (tried / clear / silent / other). Runs in a few minutes on 2 cores
with its own empty cache (``SPATIALADV_CACHE`` under a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

TMP = Path(tempfile.mkdtemp(prefix="spatialadv-sweep-"))
os.environ["SPATIALADV_CACHE"] = str(TMP / "cache")
torch.set_num_threads(1)

CASES: list[tuple[str, object]] = []


def case(name: str):
    def deco(fn):
        CASES.append((name, fn))
        return fn
    return deco


# ------------------------------------------------------------------------------------------------ helpers
def api(fn, *, safe=None) -> tuple[str, str]:
    """Run ``fn``; classify its exception (or ``safe(result)`` when it returns)."""
    try:
        out = fn()
    except (TypeError, ValueError, FileNotFoundError) as e:
        tb = traceback.extract_tb(e.__traceback__)
        last = tb[-1].filename if tb else ""
        own = "spatialadv" in last or "_validation" in last
        return ("clear" if own else "other"), f"{type(e).__name__} in {Path(last).name}: {str(e)[:110]}"
    except Exception as e:  # noqa: BLE001 — the sweep records it
        return "other", f"{type(e).__name__}: {str(e)[:110]}"
    if safe is not None and safe(out):
        return "clear", "safe result"
    return "silent", "accepted"


#: phrases of numpy/torch/zipfile messages that mean an internal error reached the user unexplained
LEAKED = ("allow_pickle", "pickled (object) data", "zero-size array", "has no identity", "mat1 and mat2")


def cli(args: list[str], *, out: Path | None = None, timeout: float = 40.0, env: dict | None = None) -> tuple[str, str]:
    """Run ``spatialadv ARGS``; clear = exit 2, one ``error:`` line, no traceback, ``out`` not created."""
    e = {**os.environ, **(env or {})}
    try:
        p = subprocess.run([sys.executable, "-m", "spatialadv", *args], capture_output=True, text=True,
                           timeout=timeout, env=e, cwd=TMP)
    except subprocess.TimeoutExpired:
        return "silent", f"still running after {timeout:.0f} s (work started)"
    err = p.stderr.strip()
    if "Traceback" in err:
        return "other", "traceback: " + err.splitlines()[-1][:110]
    if p.returncode == 2 and err.startswith("error:") or (p.returncode == 2 and "error:" in err):
        if out is not None and out.exists():
            return "other", f"exit 2 but {out.name} was created: {err.splitlines()[-1][:90]}"
        if any(leak in err for leak in LEAKED):
            return "other", "a dependency's message: " + err.splitlines()[-1][:100]
        return "clear", err.splitlines()[-1][:120]
    if p.returncode == 0:
        return "silent", "exit 0"
    return "other", f"exit {p.returncode}: {err.splitlines()[-1][:110] if err else ''}"


def linear(k=3, d=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, k)).eval()


def images(n=2, c=1, s=4):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ certificates
@case("certify: convolutional model")
def _():
    from spatialadv.certify import certify
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    return api(lambda: certify(m, images(), torch.tensor([0, 1]), 0.1, method="spectral"))


@case("certify: forward rescales its input before the same layers")
def _():
    from spatialadv.certify import certify
    base = linear()

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x):
            return self.net(2 * x)
    return api(lambda: certify(Scaled().eval(), images(), torch.tensor([0, 1]), 0.1, method="spectral"))


@case("certify: model returns probabilities")
def _():
    from spatialadv.certify import certify
    m = nn.Sequential(linear(), nn.Softmax(dim=1)).eval()
    return api(lambda: certify(m, images(), torch.tensor([0, 1]), 0.1, method="spectral"))


@case("certify: model returns NaN")
def _():
    from spatialadv.certify import certify
    m = linear()
    with torch.no_grad():
        m[1].bias.fill_(float("nan"))
    return api(lambda: certify(m, images(), torch.tensor([0, 1]), 0.1, method="spectral"))


@case("certify: float64 x")
def _():
    from spatialadv.certify import certify
    return api(lambda: certify(linear(), images().double(), torch.tensor([0, 1]), 0.1, method="spectral"))


@case("certify: x of the wrong image size")
def _():
    from spatialadv.certify import certify
    return api(lambda: certify(linear(), images(s=5), torch.tensor([0, 1]), 0.1, method="spectral"))


@case("certify: model returns a tuple")
def _():
    from spatialadv.certify import certify
    base = linear()

    class Tup(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x):
            return self.net(x), x
    return api(lambda: certify(Tup().eval(), images(), torch.tensor([0, 1]), 0.1, method="spectral"))


@case("pair_bounds: dual_steps=-5")
def _():
    from spatialadv.certify import pair_bounds
    return api(lambda: pair_bounds(linear(), (1, 4, 4), method="sdp", dual_steps=-5))


@case("SmoothedClassifier: NaN logits never certified")
def _():
    from spatialadv.certify import SmoothedClassifier

    class NaNNet(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))
    sc = SmoothedClassifier(NaNNet().eval(), sigma=0.25, num_classes=3)
    return api(lambda: sc.certify(images(1), n0=20, n=100), safe=lambda c: int(c.prediction[0]) < 0)


@case("SmoothedClassifier: int images")
def _():
    from spatialadv.certify import SmoothedClassifier
    sc = SmoothedClassifier(linear(), sigma=0.25, num_classes=3)
    return api(lambda: sc.certify((images(1) * 255).to(torch.uint8), n0=20, n=100))


@case("SmoothedClassifier: wrong channels")
def _():
    from spatialadv.certify import SmoothedClassifier
    sc = SmoothedClassifier(linear(), sigma=0.25, num_classes=3)
    return api(lambda: sc.certify(images(1, c=3), n0=20, n=100))


@case("SmoothedClassifier: num_classes differs from the model's")
def _():
    from spatialadv.certify import SmoothedClassifier
    sc = SmoothedClassifier(linear(), sigma=0.25, num_classes=5)
    return api(lambda: sc.certify(images(1), n0=20, n=100))


@case("certify_rotation: a plain model")
def _():
    from spatialadv.certify import certify_rotation
    return api(lambda: certify_rotation(linear(), images(1), n0=8, n=20))


@case("certify_rotation: refine=1")
def _():
    from spatialadv.certify import SmoothedClassifier, certify_rotation
    sc = SmoothedClassifier(linear(), sigma=0.25, num_classes=3)
    return api(lambda: certify_rotation(sc, images(1), n0=8, n=20, refine=1))


@case("certify_rotation: max_angle=400")
def _():
    from spatialadv.certify import SmoothedClassifier, certify_rotation
    sc = SmoothedClassifier(linear(), sigma=0.25, num_classes=3)
    return api(lambda: certify_rotation(sc, images(1), n0=8, n=20, max_angle=400))


@case("certify_rotation: alpha=2")
def _():
    from spatialadv.certify import SmoothedClassifier, certify_rotation
    sc = SmoothedClassifier(linear(), sigma=0.25, num_classes=3)
    return api(lambda: certify_rotation(sc, images(1), n0=8, n=20, alpha=2.0))


# ------------------------------------------------------------------------------------------------ ops and attacks
@case("GuidedSmoothing: negative index")
def _():
    from spatialadv.ops.smoothing import GuidedSmoothing
    g = GuidedSmoothing(images(2))
    return api(lambda: g(torch.randn(1, 1, 4, 4), index=torch.tensor([-1])))


@case("smooth: guide ×255")
def _():
    from spatialadv.ops.smoothing import smooth
    return api(lambda: smooth(torch.randn(1, 1, 4, 4), images(1) * 255))


@case("smooth: NaN z")
def _():
    from spatialadv.ops.smoothing import smooth
    z = torch.randn(1, 1, 4, 4)
    z[0, 0, 0, 0] = float("nan")
    return api(lambda: smooth(z, images(1)))


@case("affine_warp: int x names x")
def _():
    from spatialadv.ops import affine_warp, identity_theta
    r = api(lambda: affine_warp((images(1) * 255).to(torch.uint8), identity_theta(1)))
    if r[0] == "clear" and "theta" in r[1] and " x " not in r[1] and not r[1].split(": ", 1)[1].startswith("x"):
        return "other", "blames theta: " + r[1]
    return r


@case("SdpAdv: float64 input")
def _():
    from spatialadv.attacks import SdpAdv
    from spatialadv.attacks.generative import GeneratorNets
    m = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 3)).eval()
    try:
        atk = SdpAdv(nets=GeneratorNets((1, 28, 28)))
    except Exception as e:  # noqa: BLE001
        return "other", f"could not build generator nets: {e}"[:120]
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    return api(lambda: atk(m.double(), x, torch.tensor([0, 1])),
               safe=lambda r: r.x_adv.dtype == torch.float64)


@case("load_or_train_lan: key escapes the cache")
def _():
    from types import SimpleNamespace

    from spatialadv.defenses.lan import load_or_train_lan
    train = SimpleNamespace(x=torch.rand(8, 1, 28, 28), y=torch.arange(8) % 2, num_classes=2)
    return api(lambda: load_or_train_lan(linear(d=28 * 28), "../../x/lan", train))


# ------------------------------------------------------------------------------------------------ CLI options
def _opt(exp: str, *opts: str):
    out = TMP / ("out-" + exp + "-" + "-".join(o.strip("-") for o in opts).replace("/", "_"))[:120]
    return cli(["reproduce", exp, *opts, "--out", str(out)], out=out)


for exp, opts in [("certify-smoothing", ["--alpha", "2"]), ("certify-smoothing", ["--refine", "1"]),
                  ("certify-smoothing", ["--max-angle", "1e9"]), ("smooth-mnist", ["--max-train", "100000000"]),
                  ("stadv-mnist", ["--seed", "99999999999999999999"]), ("stadv-mnist", ["--epochs", "0"]),
                  ("stadv-mnist", ["--n", "0"]), ("stadv-mnist", ["--n", "nan"]), ("certify-bounds", ["--n", "-3"]),
                  ("smooth-mnist", ["--threads", "0"]), ("certify-smoothing", ["--sigma", "inf"]),
                  ("certify-smoothing", ["--sigma", "-1"]), ("sdpadv-mnist", ["--gen-epochs", "-1"]), ("sdpadv-mnist", ["--val-fraction", "1.5"])]:
    case(f"reproduce {exp} {' '.join(opts)}")(lambda exp=exp, opts=opts: _opt(exp, *opts))


@case("reproduce: --out under a regular file")
def _():
    f = TMP / "a-file"
    f.write_text("x")
    return cli(["reproduce", "stadv-mnist", "--out", str(f / "sub")])


@case("reproduce: SPATIALADV_CACHE under a regular file")
def _():
    f = TMP / "cache-file"
    f.write_text("x")
    return cli(["reproduce", "smooth-mnist", "--n", "1", "--out", str(TMP / "o-cache")],
               env={"SPATIALADV_CACHE": str(f / "sub")}, timeout=60)


# ------------------------------------------------------------------------------------------------ stores
def _store_with_runs() -> Path:
    from spatialadv.eval import ResultStore
    p = TMP / "stores" / f"s{len(list((TMP / 'stores').glob('*'))) if (TMP / 'stores').exists() else 0}"
    p.mkdir(parents=True)
    with ResultStore(p / "results.sqlite"):
        pass
    return p / "results.sqlite"


@case("evaluate: a run's config is not valid JSON")
def _():
    import sqlite3

    from spatialadv.eval import ResultStore
    s = _store_with_runs()
    with ResultStore(s) as st:
        st.register_run("k1", "model", "fgsm", {"eps": 0.3})
    con = sqlite3.connect(s)
    con.execute("UPDATE runs SET config = '{not json'")
    con.commit()
    con.close()
    return cli(["evaluate", "--store", str(s)])


@case("evaluate: not a SQLite file")
def _():
    s = TMP / "garbage.sqlite"
    s.write_bytes(os.urandom(3000))
    return cli(["evaluate", "--store", str(s)])


@case("report: folder with a garbage store")
def _():
    d = TMP / "garbage-report"
    d.mkdir()
    (d / "results.sqlite").write_bytes(os.urandom(3000))
    return cli(["report", str(d)])


# ------------------------------------------------------------------------------------------------ audit
def _audit_model() -> Path:
    d = TMP / "audit-model"
    if not d.exists():
        d.mkdir()
        (d / "net.py").write_text(
            "from torch import nn\n"
            "def make():\n"
            "    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))\n"
            "class Boom(nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.lin = nn.Linear(28 * 28, 10)\n"
            "        self.calls = 0\n"
            "    def forward(self, x):\n"
            "        self.calls += 1\n"
            "        if self.calls > 3:\n"
            "            raise RuntimeError('user model exploded')\n"
            "        return self.lin(x.flatten(1))\n"
            "def boom():\n"
            "    return Boom()\n")
        from safetensors.torch import save_file
        torch.manual_seed(0)
        save_file(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).state_dict(), str(d / "w.safetensors"))
        torch.manual_seed(0)
        save_file({"lin." + k: v for k, v in nn.Linear(28 * 28, 10).state_dict().items()}, str(d / "b.safetensors"))
    return d


def _audit(data: str, *extra: str, model="make", weights="w.safetensors", out_name=None) -> tuple[str, str]:
    d = _audit_model()
    out = TMP / (out_name or f"audit-{len(list(TMP.glob('audit-*')))}")
    return cli(["audit", "--model", f"{d / 'net.py'}:{model}", "--weights", str(d / weights), "--data", data,
                "--n", "4", "--threats", "linf", "--out", str(out), *extra], out=out if out_name is None else None,
               timeout=120)


@case("audit: truncated .npz")
def _():
    p = TMP / "trunc.npz"
    buf = TMP / "full.npz"
    np.savez(buf, x=np.random.rand(4, 1, 28, 28).astype("float32"), y=np.arange(4))
    p.write_bytes(buf.read_bytes()[:200])
    return _audit(str(p))


@case("audit: garbage .npz")
def _():
    p = TMP / "garbage.npz"
    p.write_bytes(os.urandom(500))
    return _audit(str(p))


@case("audit: empty .npz")
def _():
    p = TMP / "empty.npz"
    np.savez(p, x=np.zeros((0, 1, 28, 28), "float32"), y=np.zeros(0, "int64"))
    return _audit(str(p))


@case("audit: --linf-eps inf")
def _():
    return _audit("mnist", "--linf-eps", "inf")


@case("audit: the user's model raises during an attack")
def _():
    return _audit("mnist", model="boom", weights="b.safetensors")


@case("audit: a second model into a finished audit folder")
def _():
    first = _audit("mnist", out_name="audit-twice")
    if first[0] != "silent":
        return "other", f"first audit did not finish: {first[1]}"
    d = _audit_model()
    torch.manual_seed(1)
    from safetensors.torch import save_file
    save_file(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).state_dict(), str(d / "w2.safetensors"))
    return _audit("mnist", weights="w2.safetensors", out_name="audit-twice")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    ap.add_argument("--json", default=None, help="also write the per-case results here")
    a = ap.parse_args()
    rows = []
    for name, fn in CASES:
        if a.only not in name:
            continue
        try:
            verdict, detail = fn()
        except Exception as e:  # noqa: BLE001 — a case that cannot even be set up is recorded, not fatal
            verdict, detail = "other", f"case setup failed: {type(e).__name__}: {e}"[:140]
        rows.append({"case": name, "verdict": verdict, "detail": detail})
        print(f"{verdict:6s}  {name:62s}  {detail}", flush=True)
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("clear", "silent", "other")}
    print(f"\ntried {len(rows)} / clear {counts['clear']} / silent {counts['silent']} / other {counts['other']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "counts": counts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
