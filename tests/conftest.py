"""Shared fixtures: small real models trained on real data (Fashion-MNIST subsets), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgeprune
from edgeprune import api

REPO = Path(__file__).resolve().parents[1]
# The data files edgeprune ships (targets, calibration), where the installed package has them.
SHIPPED = Path(edgeprune.__file__).resolve().parent / "shipped"
CALIBRATION = SHIPPED / "calibration" / "fmnist.npz"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

# Small models run faster on one thread, and the suite stays steady when the 2 cores are shared.
torch.set_num_threads(1)

requires_fmnist = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")


@pytest.fixture(scope="session")
def fmnist_small() -> api.DataOptions:
    """3000 training / 1000 test Fashion-MNIST images: real data, seconds to train on."""
    if not FMNIST.exists():
        pytest.skip("Fashion-MNIST not installed (make data)")
    return api.DataOptions("fashion-mnist", limit=3000, test_limit=1000)


@pytest.fixture(scope="session")
def lenet300_ckpt(tmp_path_factory, fmnist_small) -> Path:
    """A LeNet-300-100 trained for 3 epochs on the Fashion-MNIST subset."""
    out = tmp_path_factory.mktemp("models") / "lenet300.pt"
    api.train("zoo:lenet300", out, data=fmnist_small, epochs=2, progress=False)
    return out


@pytest.fixture(scope="session")
def lenet300_half_ckpt(tmp_path_factory, lenet300_ckpt) -> Path:
    """That LeNet-300-100 magnitude-pruned to 50 % through the CLI, not fine-tuned: a pruned
    checkpoint for tests of what happens after compress (export, deploy, targets)."""
    from edgeprune.cli import main

    out = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    assert main(["compress", str(lenet300_ckpt), "--sparsity", "0.5", "--finetune-epochs", "0", "--data",
                 "fashion-mnist", "--limit", "500", "-o", str(out), "--json"]) == 0
    return out


@pytest.fixture(scope="session")
def resnet_ckpt(tmp_path_factory, fmnist_small) -> Path:
    """A narrow ResNet-8 (16/32/64) trained briefly on a Fashion-MNIST subset."""
    out = tmp_path_factory.mktemp("models") / "resnet8.pt"
    data = api.DataOptions("fashion-mnist", limit=1000, test_limit=500)
    api.train("zoo:resnet8", out, data=data, epochs=1, arch_kwargs={"widths": [16, 32, 64]}, progress=False)
    return out


@pytest.fixture(scope="session")
def fast_target(tmp_path_factory) -> Path:
    """host-cpu with fewer timed iterations: a user adds a device by adding a file."""
    text = (SHIPPED / "targets" / "host-cpu.toml").read_text().replace("iterations = 200", "iterations = 30")
    path = tmp_path_factory.mktemp("targets") / "host-cpu-fast.toml"
    path.write_text(text.replace("warmup = 20", "warmup = 5"))
    return path


@pytest.fixture(scope="session")
def lenet5_ckpt(tmp_path_factory, fmnist_small) -> Path:
    """A LeNet-5 (convolutions, max-pooling, an MLP head) trained for 3 epochs on the Fashion-MNIST subset."""
    out = tmp_path_factory.mktemp("models") / "lenet5.pt"
    api.train("zoo:lenet5", out, data=fmnist_small, epochs=3, lr=3e-3, progress=False)
    return out
