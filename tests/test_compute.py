"""--device: auto picks what PyTorch sees, cpu trains here, cuda without a GPU is a one-line refusal;
checkpoints record where they were trained and hold CPU tensors. (No GPU on this machine: the CUDA
branch of compute.py is exercised only by the refusal; the one test that fakes a GPU says so in its
name, and fakes only where the model's weights live.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune import api
from edgeprune.cli import main
from edgeprune.compute import autocast, grad_scaler, resolve_device
from edgeprune.data.stream import PREFETCH, StreamDataset
from edgeprune.errors import InputError
from edgeprune.training import TrainConfig, train

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")


def test_auto_is_what_pytorch_sees_and_cpu_is_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown --device 'tpu'"):
        resolve_device("tpu")


def test_cpu_training_runs_in_fp32_without_loss_scaling():
    dev = torch.device("cpu")
    with autocast(dev):
        y = torch.nn.Linear(4, 2)(torch.ones(1, 4))
    assert y.dtype == torch.float32
    assert not grad_scaler(dev).is_enabled()


@no_cuda
def test_cuda_without_a_gpu_is_one_line_exit_2(capsys, tmp_path):
    code = main(["train", "--arch", "zoo:lenet300", "--data", "digits", "--epochs", "0.1", "--device", "cuda",
                 "-o", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --device cuda: PyTorch sees no CUDA device")
    assert not (tmp_path / "m.pt").exists()


def test_auto_checkpoint_records_device_and_holds_cpu_tensors(tmp_path):
    m = tmp_path / "m.pt"
    api.train("zoo:lenet300", m, data=api.DataOptions("digits"), epochs=1, device="auto", progress=False)
    r = api.compress(m, api_spec(), data=api.DataOptions("digits"), finetune_epochs=0.5, device="auto", progress=False)
    ckpt = torch.load(r.path, weights_only=True)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert ckpt["meta"]["device"] == want and ckpt["meta"]["mixed_precision"] == (want == "cuda")
    assert ckpt["meta"]["world_size"] == 1
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())


def api_spec():
    from edgeprune.pruning.base import PruneSpec

    return PruneSpec(method="magnitude", sparsity=0.5)


class _Digits(torch.utils.data.Dataset):
    def __init__(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        self.x = torch.from_numpy((d.images / 16.0).astype(np.float32)[:, None])
        self.y = torch.from_numpy(d.target.astype(np.int64))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_prefetching_workers_train_the_same_model_as_the_main_process():
    """Batches read ahead by a worker process are the batches the loop would read itself."""
    weights = []
    for workers in (0, 1):
        ds = StreamDataset(_Digits(), "digits", (1, 8, 8), 10, workers=workers)
        if workers:
            assert ds.loader(64).prefetch_factor == PREFETCH
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        train(model, ds, TrainConfig(epochs=1, batch_size=64, device="cpu"), progress=False)
        weights.append(model[1].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_evaluating_a_model_that_trains_on_a_gpu_leaves_it_there_fake_gpu():
    """train() validates every epoch with the model on its GPU; predict and evaluate must hand it back
    where it was, not on the CPU (the next step would feed GPU batches to CPU weights). The fake: a
    model that says its weights are on cuda:0 and records where it is sent."""
    from edgeprune.data import ArrayDataset
    from edgeprune.training import evaluate, predict

    class OnFakeGpu(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.sent: list[str] = []

        def parameters(self, recurse: bool = True):
            yield type("P", (), {"device": torch.device("cuda", 0)})()

        def to(self, device):
            self.sent.append(str(device))
            return self

        def forward(self, x):
            return self.fc(x)

    model = OnFakeGpu()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert predict(model, x).shape == (5, 3)
    assert model.sent == ["cpu", "cuda:0"]
    model.sent.clear()
    evaluate(model, ArrayDataset(x, np.zeros(5, np.int64), "five"))
    assert model.sent == ["cpu", "cuda:0"]
