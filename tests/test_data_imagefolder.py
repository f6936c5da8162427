"""Image folders: PNGs written from sklearn digits, read from disk in DataLoader workers, with a
preprocessing that the checkpoint records and export, calibration and deploy reuse."""

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from edgeprune.cli import main
from edgeprune.data import open_split
from edgeprune.data.imagefolder import default_preprocess
from edgeprune.data.preprocess import Preprocess
from edgeprune.data.stream import StreamDataset
from edgeprune.errors import InputError
from edgeprune.model_io import load_model


def write_digits(root, per_class_train=40, per_class_test=10, rgb=False):
    """sklearn digits as 8x8 PNGs in train/CLASS and test/CLASS; returns the test images as uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.round(d.images / 16.0 * 255).astype(np.uint8)
    test = {}
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        for split, part in (("train", idx[:per_class_train]), ("test", idx[per_class_train:per_class_train + per_class_test])):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                img = Image.fromarray(imgs[i], "L")
                (img.convert("RGB") if rgb else img).save(folder / f"{i:04d}.png")
                if split == "test":
                    test[(c, f"{i:04d}")] = imgs[i]
    return test


def test_folder_is_read_image_by_image_with_its_labels(tmp_path):
    test = write_digits(tmp_path)
    pre = default_preprocess(tmp_path)
    assert pre.input_shape == (1, 8, 8) and pre.mean is None   # the first image's own size and channels
    te = open_split(str(tmp_path), "test", preprocess=pre)
    assert isinstance(te, StreamDataset) and len(te) == 100 and te.num_classes == 10
    arr = te.arrays()
    want = np.stack([test[k] for k in sorted(test)]) / 255.0   # sorted by class, then file name
    assert np.allclose(arr.x[:, 0], want, atol=1e-6) and arr.y.tolist() == sorted(k[0] for k in test)
    assert open_split(str(tmp_path), "val") is None   # no val/: carved from train, test/ stays unseen


def test_resize_centre_crop_and_normalize(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 8:12] = (255, 0, 0)                      # a red bar in the middle of a 20x10 image
    x = Preprocess((3, 5, 5), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(Image.fromarray(img))
    # shorter side 10 -> 5 gives 10x5 with the bar at columns 4-5; the centre crop (columns 2-6) puts it at 2-3
    assert x.shape == (3, 5, 5)
    assert np.allclose(x[1], (0 - 0.5) / 0.25)                                  # no green anywhere
    assert x[0, :, 2:4].min() > 1.0 and np.allclose(x[0, :, 0], -2.0, atol=1e-6)  # red centre, black edge
    with pytest.raises(InputError, match="3-channel"):
        default_preprocess(tmp_path / "x", (1, 8, 8), "imagenet")


def test_no_test_split_is_said(tmp_path):
    write_digits(tmp_path, per_class_test=0)
    for c in range(10):
        (tmp_path / "test" / f"class{c}").rmdir()
    (tmp_path / "test").rmdir()
    with pytest.raises(InputError, match="no test split"):
        open_split(str(tmp_path), "test", preprocess=default_preprocess(tmp_path))


def test_train_compress_export_deploy_and_calibrate_from_an_image_folder(capsys, tmp_path, fast_target):
    folder = tmp_path / "digits"
    write_digits(folder, rgb=True)
    m, p, onnx_path, run_dir, cal = (tmp_path / n for n in ("m.pt", "p.pt", "p.onnx", "run", "cal.npz"))
    # RGB PNGs at 8x8, the model takes 3x12x12 normalised inputs: the preprocessing is chosen once ...
    assert main(["train", "--arch", "zoo:lenet300", "--data", str(folder), "--input-shape", "3,12,12",
                 "--normalize", "0.5/0.25", "--epochs", "8", "--lr", "3e-3", "-o", str(m), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["test_accuracy"] > 60    # 10 classes: chance is 10 %
    recorded = load_model(m).checkpoint.meta["preprocess"]
    assert recorded["input_shape"] == [3, 12, 12] and recorded["mean"] == [0.5]
    # ... and reused: no --input-shape or --normalize from here on (the folder's own 8x8 would not fit)
    assert main(["compress", str(m), "--sparsity", "0.5", "--finetune-epochs", "1", "-o", str(p), "--json"]) == 0
    compressed = json.loads(capsys.readouterr().out)
    assert compressed["finetuned_val_accuracy"] > 50
    assert load_model(p).checkpoint.meta["preprocess"] == recorded
    assert main(["export", str(p), "-o", str(onnx_path), "--json"]) == 0
    meta = {q.key: q.value for q in onnx.load(str(onnx_path)).metadata_props}
    assert meta["edgeprune.data"] == str(folder.resolve()) and meta["edgeprune.input_shape"] == "3,12,12"
    assert json.loads(meta["edgeprune.preprocess"].partition("; json ")[2])["std"] == [0.25]
    capsys.readouterr()
    assert main(["deploy", str(p), "--target", str(fast_target), "-o", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["accuracy_samples"] == 100
    assert abs(report["pruned"]["accuracy"] - compressed["finetuned_val_accuracy"]) < 25
    assert report["agreement"]["cosine"] > 0.9
    assert main(["calibrate", "--data", str(folder), "-n", "50", "-o", str(cal), "--json"]) == 0
    with np.load(cal) as z:
        assert z["x"].shape == (50, 3, 8, 8) and z["x"].dtype == np.uint8 and np.bincount(z["y"]).tolist() == [5] * 10
