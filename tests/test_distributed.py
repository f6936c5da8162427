"""`torchrun --standalone --nproc-per-node 2 -m edgeprune compress ...` on the CPU (gloo): one output
file, the same masks on both ranks (each rank logs the digest it checked), a checkpoint that rebuilds
in a fresh process, and a run that a fault after epoch 1 restarts (--max-restarts 1) resumes from its
epoch-1 state instead of starting over."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgeprune import api
from edgeprune.model_io import load_model
from edgeprune.training import evaluate

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = [pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed"), pytest.mark.slow]


def _torchrun(tmp_path: Path, *args: str, restarts: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    paths = [str(Path(__file__).resolve().parents[1]), str(tmp_path), os.environ.get("PYTHONPATH", "")]
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1",
            "EDGEPRUNE_RANK_LOG": str(tmp_path / "ranks"), "EDGEPRUNE_WORKERS": "0", **(env or {})}
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", str(restarts),
           "-m", "edgeprune", *args]
    r = subprocess.run(cmd, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def _digests(tmp_path: Path) -> dict[int, list[tuple[str, str]]]:
    out = {}
    for f in sorted((tmp_path / "ranks").glob("rank*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        out[rows[0]["rank"]] = [(r["what"], r["digest"]) for r in rows]
    return out


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """`train` under torchrun: rank 0 writes one checkpoint, trained on both ranks' shares."""
    work = tmp_path_factory.mktemp("dense")
    r = _torchrun(work, "train", "--arch", "zoo:lenet300", "--data", "digits", "--epochs", "5", "-o", "model.pt")
    assert r.stdout.count("trained zoo:lenet300") == 1
    assert sorted(p.name for p in work.iterdir()) == ["model.pt"]
    meta = torch.load(work / "model.pt", weights_only=True)["meta"]
    assert meta["world_size"] == 2 and meta["val_accuracy"] > 70.0
    return work / "model.pt"


def test_what_cannot_run_under_torchrun_is_one_line(monkeypatch, tmp_path, capsys):
    """The gated schedule decides on each rank's own counts; deploy and the rest would write every file
    once per rank: both are refused before any work."""
    from edgeprune.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["compress", "model.pt", "--method", "activation", "--data", "digits"]) == 2
    assert main(["export", "model.pt", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("error: the accuracy-gated schedule (--schedule gated) does not run under torchrun (2 ranks); "
                      "run it as one process")
    assert err[1].startswith("error: under torchrun edgeprune runs train and compress, not export")


def test_two_ranks_prune_the_same_weights_and_write_one_file(tmp_path, digits_model):
    model = tmp_path / "model.pt"
    shutil.copy(digits_model, model)
    r = _torchrun(tmp_path, "compress", "model.pt", "--method", "magnitude", "--sparsity", "0.8",
                  "--finetune-epochs", "2", "--data", "digits")
    assert r.stdout.count("wrote model.magnitude.pt") == 1          # rank 0 alone prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.magnitude.pt", "model.pt", "ranks"]
    digests = _digests(tmp_path)
    assert sorted(digests) == [0, 1] and digests[0] == digests[1]
    masks = dict(digests[0])["masks after prune step 1"]
    ckpt = torch.load(tmp_path / "model.magnitude.pt", weights_only=True)
    from edgeprune.distributed import tensor_digest

    assert tensor_digest(ckpt["masks"]) == masks                    # the masks saved are the ones both ranks held
    assert ckpt["meta"]["world_size"] == 2 and ckpt["meta"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    # rebuilt here, a process that took no part in the run: it scores what the run recorded
    loaded = load_model(tmp_path / "model.magnitude.pt")
    _, val = api.DataOptions("digits").train_val()
    assert evaluate(loaded.model, val) == pytest.approx(ckpt["meta"]["val_accuracy"])
    # the same recipe on one process: a global batch split over 2 ranks trains as well as one process
    from edgeprune.pruning.base import PruneSpec

    one = api.compress(model, PruneSpec(method="magnitude", sparsity=0.8), tmp_path / "one.pt", finetune_epochs=2,
                       data=api.DataOptions("digits"), progress=False)
    assert one.finetuned_val_accuracy > one.pruned_val_accuracy + 3.0         # the fine-tune matters here
    assert abs(ckpt["meta"]["val_accuracy"] - one.finetuned_val_accuracy) < 3.0


# A user's data factory whose training set fails once (rank 1, first attempt) after epoch 1's state
# was saved: the fault torchrun --max-restarts is for.
FAULTY = '''
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits


class Digits(torch.utils.data.Dataset):
    def __init__(self, idx, fault=False):
        d = load_digits()
        self.x = torch.from_numpy((d.images / 16.0).astype(np.float32)[:, None][idx])
        self.y = torch.from_numpy(d.target.astype(np.int64)[idx])
        self.targets = self.y.numpy()
        self.fault = fault

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if (self.fault and os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
                and Path(os.environ["FAULT_AFTER"]).exists()):
            raise RuntimeError("injected fault after epoch 1")
        return self.x[i], self.y[i]


def datasets():
    order = np.random.default_rng(0).permutation(1797)
    return Digits(order[:1200], fault=True), Digits(order[1200:1500]), Digits(order[1500:])
'''


def test_a_restarted_run_resumes_from_its_last_epoch(tmp_path, digits_model):
    (tmp_path / "faulty_digits.py").write_text(textwrap.dedent(FAULTY))
    shutil.copy(digits_model, tmp_path / "model.pt")
    state = tmp_path / ".pruned.pt.resume" / "train-1.pt"
    r = _torchrun(tmp_path, "compress", "model.pt", "--method", "magnitude", "--granularity", "channel",
                  "--sparsity", "0.5", "--finetune-epochs", "3", "--data", "faulty_digits:datasets", "-o", "pruned.pt",
                  restarts=1, env={"FAULT_AFTER": str(state)})
    assert "injected fault after epoch 1" in r.stderr                # it did fail once
    assert "restarted: fine-tune 1 resumed after epoch 1" in r.stdout
    ckpt = torch.load(tmp_path / "pruned.pt", weights_only=True)
    assert ckpt["meta"]["resumed"] == [{"call": 1, "epoch": 1, "step": ckpt["meta"]["resumed"][0]["step"]}]
    assert ckpt["meta"]["resumed"][0]["step"] > 0
    assert not state.parent.exists()                                  # resume state goes once the output is written
    digests = _digests(tmp_path)                                      # both attempts, both ranks: one set of widths
    assert len({d for rows in digests.values() for what, d in rows if what.startswith("widths")}) == 1
    assert len(digests[0]) == len(digests[1]) == 4                    # 2 checks x 2 attempts


def test_ranks_that_hold_different_masks_stop_the_run(tmp_path):
    """The agreement check is real: ranks whose masks differ fail loudly instead of training apart."""
    (tmp_path / "disagree.py").write_text(textwrap.dedent('''
        import torch
        from edgeprune import distributed

        distributed.setup(torch.device("cpu"))
        masks = {"fc": torch.rand(4, 4) > 0.5 if distributed.rank() else torch.ones(4, 4, dtype=torch.bool)}
        distributed.agree("masks as computed", distributed.tensor_digest(masks))
    '''))
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "disagree.py"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "ranks disagree on masks as computed" in r.stderr
