"""`spatialadv audit`: a user's model defined outside the package, trained here, audited from the CLI."""

import json
import pickle
import sqlite3
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from spatialadv.audit import AuditConfig, audit_report, load_user_data, load_user_model, run_audit, sanity_checks, select_examples
from spatialadv.cli import main
from spatialadv.data import load_dataset

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(16 * 7 * 7, 10))

        def forward(self, x):
            return self.body(x)


    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = Net()

        def forward(self, x):
            return {"features": x.flatten(1), "logits": self.net(x)}


    def make():
        return Net()


    def make_dict():
        return DictNet()


    def not_a_module():
        return 3
''')

# cheap attack settings for tests: every threat, little effort
CHEAP = ["--stadv-steps", "15", "--pgd-steps", "5", "--smooth-steps", "3", "--stm-rotations", "5",
         "--stm-translations", "3", "--random-tries", "5", "--quiet"]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: ``mynet.py`` (outside the package) and weights trained here, as safetensors."""
    d = tmp_path_factory.mktemp("user")
    (d / "mynet.py").write_text(MODEL_FILE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("mynet_for_training", d / "mynet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    train = load_dataset("mnist", "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = mod.make()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net(train.x[b]), train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    net.eval()
    save_file(net.state_dict(), str(d / "w.safetensors"))
    dnet = mod.make_dict()
    dnet.net.load_state_dict(net.state_dict())
    save_file(dnet.state_dict(), str(d / "wd.safetensors"))
    return d, net


def _audit(user_dir, out, *extra, data="mnist", n=10):
    return main(["audit", "--model", f"{user_dir / 'mynet.py'}:make", "--weights", str(user_dir / "w.safetensors"),
                 "--data", str(data), "--n", str(n), "--out", str(out), *CHEAP, *extra])


def _accs(e):
    return {t: float(e[f"{t}_acc"]) for t in e["threat_models"]}


def _records(path):
    with sqlite3.connect(str(path)) as c:
        return c.execute("SELECT COUNT(*) FROM records").fetchone()[0]


def test_audit_mnist_cli_worst_case_json_resume(user, tmp_path, capsys, one_thread):
    d, _ = user
    out = tmp_path / "audit"
    assert _audit(d, out, n=12) == 0
    printed = capsys.readouterr().out
    assert "worst" in printed and "stadv" in printed
    e = json.loads((out / "report.json").read_text())
    assert e["n_examples"] == 12 and e["complete"] and e["threat_models"] == ["stadv", "stm", "linf", "l2", "smooth"]
    accs, worst, clean = _accs(e), float(e["worst_case_acc"]), float(e["clean_acc"])
    assert clean >= 80.0  # a trained MNIST CNN
    for t, a in accs.items():
        assert worst <= a <= clean, (t, a, worst, clean)
    assert worst < clean  # an undefended CNN is broken at L∞ 0.3
    assert e["number_forward_passes"] == 1 and e["budgets"]["linf"] == {"eps": 0.3}
    assert e["budgets"]["stadv"] == {"flow_tv_px": 1.0} and e["budgets"]["stm"]["rotation_deg"] == 30.0
    assert set(e["per_class"]) == {str(k) for k in range(10)}
    assert sum(v["n"] for v in e["per_class"].values()) == 12
    # per-example worst case: the stored verdicts agree with the figures
    for f in e["figures"]:
        assert (out / f).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "worst case over all" in md and "Croce" in md and "## Per class" in md
    # the JSON round-trips: rebuilt from the store alone it is the same entry
    assert audit_report(out) == e
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").read_text() == md
    # resume: nothing attacked again, the same numbers
    n_rec = _records(out / "results.sqlite")
    assert _audit(d, out, n=12) == 0
    e2 = json.loads((out / "report.json").read_text())
    assert _records(out / "results.sqlite") == n_rec
    assert {k: e2[k] for k in ("clean_acc", "worst_case_acc", "per_class")} == \
        {k: e[k] for k in ("clean_acc", "worst_case_acc", "per_class")} and _accs(e2) == accs
    # a smaller --n in the same folder reuses the records and reports only its examples
    assert _audit(d, out, n=6) == 0
    e3 = json.loads((out / "report.json").read_text())
    assert _records(out / "results.sqlite") == n_rec and e3["n_examples"] == 6 and e3["complete"]
    assert all(r["attacked"] <= 6 for runs in e3["attacks"].values() for r in runs)


def test_audit_shards_equal_one_run(user, tmp_path, one_thread):
    d, _ = user
    full, sharded = tmp_path / "full", tmp_path / "sharded"
    args = ("--threats", "linf,stm")
    assert _audit(d, full, *args, n=8) == 0
    assert _audit(d, sharded, *args, "--shard", "0/2", n=8) == 0
    part = json.loads((sharded / "report.json").read_text())
    assert not part["complete"] and part["n_examples"] == 4
    assert _audit(d, sharded, *args, "--shard", "1/2", n=8) == 0
    n_rec = _records(sharded / "results.sqlite")
    assert _audit(d, sharded, *args, n=8) == 0  # nothing left: writes the complete report
    assert _records(sharded / "results.sqlite") == n_rec
    a, b = (json.loads((p / "report.json").read_text()) for p in (full, sharded))
    assert b["complete"] and {k: a[k] for k in ("clean_acc", "linf_acc", "stm_acc", "worst_case_acc", "per_class")} == \
        {k: b[k] for k in ("clean_acc", "linf_acc", "stm_acc", "worst_case_acc", "per_class")}


def _image_folder(root, *, size=28, mode="L", per_class=2):
    from PIL import Image

    test = load_dataset("mnist", "test")
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        idx = (test.y == c).nonzero().squeeze(1)[:per_class]
        for k, i in enumerate(idx.tolist()):
            img = Image.fromarray((test.x[i, 0].numpy() * 255).round().astype(np.uint8), mode="L")
            if size != 28:
                img = img.resize((size, size))
            img.convert(mode).save(root / str(c) / f"{k}.png")
    return root


def test_audit_image_folder(user, tmp_path, one_thread):
    d, net = user
    folder = _image_folder(tmp_path / "imgs")
    data = load_user_data(str(folder))
    assert data.x.shape == (20, 1, 28, 28) and data.classes == tuple(str(c) for c in range(10))
    test = load_dataset("mnist", "test")
    assert torch.allclose(data.x[0, 0], test.x[(test.y == 0).nonzero()[0, 0], 0], atol=1 / 255)  # PNG round trip
    out = tmp_path / "audit"
    assert _audit(d, out, "--threats", "stadv,stm,l2", data=folder, n=20) == 0
    e = json.loads((out / "report.json").read_text())
    assert e["n_examples"] == 20 and all(v["n"] == 2 for v in e["per_class"].values())
    for a in _accs(e).values():
        assert float(e["worst_case_acc"]) <= a
    assert audit_report(out) == e


def _fails(capsys, argv, out):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, (rc, err)
    assert not out.exists()  # nothing half-written
    return err


def test_audit_bad_input_clear_errors_nothing_written(user, tmp_path, capsys):
    d, _ = user
    out = tmp_path / "never"
    base = ["--data", "mnist", "--n", "2", "--out", str(out), "--quiet"]
    model, w = f"{d / 'mynet.py'}:make", str(d / "w.safetensors")
    assert "no function 'nope'" in _fails(capsys, ["audit", "--model", f"{d / 'mynet.py'}:nope", "--weights", w] + base, out)
    assert "no such file" in _fails(capsys, ["audit", "--model", f"{d / 'missing.py'}:make"] + base, out)
    assert "nn.Module" in _fails(capsys, ["audit", "--model", f"{d / 'mynet.py'}:not_a_module"] + base, out)
    # weights of another model
    other = tmp_path / "other.safetensors"
    save_file(nn.Linear(3, 2).state_dict(), str(other))
    assert "do not fit" in _fails(capsys, ["audit", "--model", model, "--weights", str(other)] + base, out)
    # a pickle (torch.save) or a raw pickle offered as weights
    pt = tmp_path / "w.pt"
    torch.save({"x": 1}, pt)
    assert "pickle" in _fails(capsys, ["audit", "--model", model, "--weights", str(pt)] + base, out)
    raw = tmp_path / "w.safetensors.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    assert "pickle" in _fails(capsys, ["audit", "--model", model, "--weights", str(raw)] + base, out)
    # images of the wrong size and channel count
    small = _image_folder(tmp_path / "small", size=20, per_class=1)
    err = _fails(capsys, ["audit", "--model", model, "--weights", w, "--data", str(small), "--out", str(out)], out)
    assert "image size" in err
    rgb = _image_folder(tmp_path / "rgb", mode="RGB", per_class=1)
    assert "channels" in _fails(capsys, ["audit", "--model", model, "--weights", w, "--data", str(rgb), "--out", str(out)], out)
    # labels out of range
    npz = tmp_path / "bad.npz"
    np.savez(npz, x=np.zeros((4, 28, 28), np.uint8), y=np.array([0, 1, 2, 12]))
    assert "labels out of range" in _fails(capsys, ["audit", "--model", model, "--weights", w, "--data", str(npz),
                                                    "--out", str(out)], out)
    # unsupported data, IDX without labels, unknown threat
    txt = tmp_path / "data.txt"
    txt.write_text("hello")
    assert "unsupported format" in _fails(capsys, ["audit", "--model", model, "--data", str(txt), "--out", str(out)], out)
    idx = tmp_path / "images-idx3-ubyte"
    idx.write_bytes(b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(784))
    assert "--labels" in _fails(capsys, ["audit", "--model", model, "--data", str(idx), "--out", str(out)], out)
    assert "unknown threat" in _fails(capsys, ["audit", "--model", model, "--threats", "linf,fog"] + base, out)


def test_idx_data_and_selection(tmp_path):
    test = load_dataset("mnist", "test")
    imgs, labs = tmp_path / "imgs-idx3-ubyte", tmp_path / "labs-idx1-ubyte"
    x = (test.x[:30, 0].numpy() * 255).round().astype(np.uint8)
    imgs.write_bytes(b"\x00\x00\x08\x03" + b"".join(v.to_bytes(4, "big") for v in (30, 28, 28)) + x.tobytes())
    labs.write_bytes(b"\x00\x00\x08\x01" + (30).to_bytes(4, "big") + test.y[:30].numpy().astype(np.uint8).tobytes())
    data = load_user_data(str(imgs), labels=str(labs))
    assert data.x.shape == (30, 1, 28, 28) and torch.equal(data.y, test.y[:30])
    # round-robin over classes: a class-sorted set gives every class in each prefix
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    assert select_examples(y, 4) == [0, 3, 5, 1]


def test_model_wrappers_dict_output_normalisation_torchscript(user, tmp_path):
    d, net = user
    x = load_dataset("mnist", "test").x[:5]
    m, info = load_user_model(f"{d / 'mynet.py'}:make_dict", weights=str(d / "wd.safetensors"))
    assert torch.allclose(m(x), net(x), atol=1e-6)
    m2, info2 = load_user_model(f"{d / 'mynet.py'}:make_dict", weights=str(d / "wd.safetensors"), mean=(0.5,), std=(0.25,))
    assert torch.allclose(m2(x), net((x - 0.5) / 0.25), atol=1e-5) and info2["key"] != info["key"]
    assert not any(p.requires_grad for p in m2.parameters()) and not m2.training
    ts = tmp_path / "net.ts"
    torch.jit.trace(net, x).save(str(ts))
    m3, _ = load_user_model(str(ts))
    assert torch.allclose(m3(x), net(x), atol=1e-6)
    with pytest.raises(ValueError, match="dict with keys"):
        load_user_model(f"{d / 'mynet.py'}:make_dict", weights=str(d / "wd.safetensors"), output="nope")[0](x)


class _Probs(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class _Noisy(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.1 * torch.randn_like(x))


class _OnePixel(nn.Module):
    """Class 1 when pixel (0, 0) is ≥ 0.25 after quantisation: zero gradients, broken by a random corner."""

    def forward(self, x):
        q = torch.round(x[:, 0, 0, 0] * 4) / 4
        return torch.stack([0.2 - q, q - 0.2], 1) * 10


def test_sanity_checks(user, tmp_path):
    _, net = user
    test = load_dataset("mnist", "test")
    x, y = test.x[:50], test.y[:50]
    assert sanity_checks(net, x, y, 10) == []
    assert [c["check"] for c in sanity_checks(_Probs(net), x, y, 10)] == ["probabilities"]
    assert "randomised" in [c["check"] for c in sanity_checks(_Noisy(net).eval(), x, y, 10)]
    torch.manual_seed(0)
    untrained = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    assert "implausible_clean_accuracy" in [c["check"] for c in sanity_checks(untrained, x, (y + 1) % 10, 10)]
    # masked gradients: the gradient attacks fail, the gradient-free random search breaks examples
    npz = tmp_path / "zeros.npz"
    np.savez(npz, x=np.zeros((12, 8, 8), np.uint8), y=np.zeros(12, np.int64))
    data = load_user_data(str(npz))
    cfg = AuditConfig(threats=("linf",), n=12, pgd_steps=3, random_tries=20)
    e = run_audit(_OnePixel().eval(), {"key": "onepixel", "spec": "onepixel", "parameters": 0}, data, cfg, tmp_path / "a",
                  progress=False)
    checks = [w["check"] for w in e["warnings"]]
    assert "zero_gradients" in checks and "gradient_masking" in checks and e["unreliable"]
    runs = {r["stage"]: r for r in e["attacks"]["linf"]}
    assert runs["FGSM"]["broken"] == 0 and runs["random search"]["broken"] > 0
    assert e["linf_acc"] == "0.00"


def test_readme_quick_start_audit(user, tmp_path, monkeypatch, one_thread):
    """The README's three-line audit, run as written (plus a small --n and cheap settings)."""
    import re
    import shlex
    from pathlib import Path

    _, net = user
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("Run the tests:", 1)[0]
    py = re.search(r"```python\n(.*?)```", section, re.S).group(1).strip().splitlines()
    sh = re.search(r"```bash\n(.*?)```", section.split("Audit your own model", 1)[1], re.S).group(1).strip()
    assert len(py) == 2 and sh.count("\n") == 0
    monkeypatch.chdir(tmp_path)
    exec("from safetensors.torch import save_file\n" + py[0].split("#")[0], {"model": net})  # 1. save the weights
    Path("mynet.py").write_text(MODEL_FILE + "\n" + py[1].split("#")[0] + "\n")          # 2. the factory
    argv = shlex.split(sh.split("#")[0])                                                     # 3. the audit
    assert argv[:2] == ["spatialadv", "audit"]
    assert main(argv[1:] + ["--n", "4", "--threats", "linf,stm", "--out", "quick", *CHEAP]) == 0
    e = json.loads((tmp_path / "quick" / "report.json").read_text())
    assert e["n_examples"] == 4 and float(e["worst_case_acc"]) <= min(_accs(e).values())


def test_stadv_counts_only_within_the_flow_budget(user, tmp_path, one_thread):
    """stAdv penalises its flow instead of bounding it: a success over the flow budget does not break the example."""
    d, _ = user
    model, info = load_user_model(f"{d / 'mynet.py'}:make", weights=str(d / "w.safetensors"))
    data = load_user_data("mnist")
    loose = run_audit(model, info, data, AuditConfig(threats=("stadv",), n=8, stadv_steps=15, flow_budget=float("inf")),
                      tmp_path / "a", progress=False)
    tight = run_audit(model, info, data, AuditConfig(threats=("stadv",), n=8, stadv_steps=15, flow_budget=1e-6),
                      tmp_path / "b", progress=False)
    assert loose["budgets"]["stadv"] == {"flow_tv_px": "inf"}  # strict JSON
    json.loads((tmp_path / "a" / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    (lr,), (tr,) = loose["attacks"]["stadv"], tight["attacks"]["stadv"]
    assert lr["broken"] > 0 and lr["over_budget"] == 0
    assert tr["broken"] == 0 and tr["over_budget"] == lr["broken"]  # the same records, measured against the budget
    assert tight["stadv_acc"] == tight["clean_acc"] and float(loose["stadv_acc"]) < float(loose["clean_acc"])
