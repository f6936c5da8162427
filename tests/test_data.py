import gzip

import numpy as np
import pytest

from edgeprune.data import calibration_sample, load_dataset, load_npz, open_split, train_val_split
from edgeprune.errors import InputError, UnknownNameError

from .conftest import CALIBRATION, requires_fmnist


@requires_fmnist
def test_fashion_mnist_from_idx_files():
    tr = load_dataset("fashion-mnist", "train")
    te = load_dataset("fashion-mnist", "test")
    assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (10000, 1, 28, 28)
    assert tr.x.dtype == np.float32 and 0.0 <= tr.x.min() and tr.x.max() <= 1.0
    assert np.bincount(te.y).tolist() == [1000] * 10   # the published test split is balanced


@requires_fmnist
def test_validation_split_is_carved_from_training_data_and_disjoint():
    tr = load_dataset("fashion-mnist", "train", limit=2000)
    a, b = train_val_split(tr, 0.1)
    assert len(a) == 1800 and len(b) == 200
    rows = {r.tobytes() for r in a.x.reshape(len(a), -1)}
    assert not any(r.tobytes() in rows for r in b.x.reshape(len(b), -1))


def test_digits_split_is_deterministic_and_disjoint():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and tr.input_shape == (1, 8, 8)
    assert np.array_equal(te.x, load_dataset("digits", "test").x)


def test_npz_uint8_and_float_inputs(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.integers(0, 256, (10, 12, 12), dtype=np.uint8), y=np.arange(10) % 3)
    ds = load_npz(p)
    assert ds.x.shape == (10, 1, 12, 12) and ds.x.max() <= 1.0 and ds.num_classes == 3


def test_single_split_npz_holds_out_a_named_test_part_it_never_trains_on(tmp_path):
    p = tmp_path / "one.npz"
    np.savez(p, x=np.arange(50, dtype=np.uint8).reshape(50, 1, 1) * np.ones((1, 2, 2), np.uint8), y=np.arange(50) % 5)
    tr, te = load_dataset(str(p), "train"), load_dataset(str(p), "test")
    assert (len(tr), len(te)) == (40, 10) and "held-out 20 %" in te.name and "no test split" in te.name
    seen = {int(v) for v in np.round(tr.x[:, 0, 0, 0] * 255)}
    assert not seen & {int(v) for v in np.round(te.x[:, 0, 0, 0] * 255)}
    assert open_split(str(p), "val") is None   # validation is carved from the 80 %, never from the held-out part


def test_npz_with_its_own_splits_is_read_split_by_split(tmp_path):
    p = tmp_path / "splits.npz"
    np.savez(p, x_train=np.zeros((30, 4, 4), np.uint8), y_train=np.arange(30) % 3,
             x_test=np.full((7, 4, 4), 255, np.uint8), y_test=np.arange(7) % 3,
             x_val=np.full((5, 4, 4), 128, np.uint8), y_val=np.arange(5) % 3)
    assert len(load_dataset(str(p), "train")) == 30
    te = load_dataset(str(p), "test")
    assert len(te) == 7 and te.x.min() == 1.0
    val = open_split(str(p), "val")
    assert len(val) == 5 and np.allclose(val.x, 128 / 255)


def test_idx_reader_reads_what_it_is_given(tmp_path):
    imgs = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (4).to_bytes(4, "big") + (4).to_bytes(4, "big")
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([3, 7]))
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.y.tolist() == [3, 7] and np.allclose(ds.x[1, 0] * 255, imgs[1])


def test_bad_data_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(InputError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(InputError, match="not found"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 3, 3)))
    with pytest.raises(InputError, match="'x' and 'y', or x_train"):
        load_dataset(str(bad))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_dataset(str(tmp_path / "junk.npz"))


@requires_fmnist
def test_calibration_set_is_balanced_and_from_training_images():
    tr = load_dataset("fashion-mnist", "train", limit=5000)
    x, y = calibration_sample(tr, 100)
    assert x.dtype == np.uint8 and x.shape == (100, 1, 28, 28)
    assert np.bincount(y).tolist() == [10] * 10


@requires_fmnist
def test_shipped_calibration_set_is_reproducible():
    committed = np.load(CALIBRATION)
    x, y = calibration_sample(load_dataset("fashion-mnist", "train"), 512, seed=0)
    assert np.array_equal(committed["x"], x) and np.array_equal(committed["y"], y)
