"""--data pkg.mod:fn and --metric pkg.mod:fn: the user's own data and metric, named on the command
line (consent), recorded in the checkpoint and run again later only with consent."""

import json
import textwrap

import pytest

from edgeprune.cli import main

MODULE = textwrap.dedent('''
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    class Digits(torch.utils.data.Dataset):
        def __init__(self, idx):
            d = load_digits()
            self.x = torch.tensor(d.images[idx] / 16.0, dtype=torch.float32)[:, None]
            self.targets = d.target[idx]
        def __len__(self):
            return len(self.targets)
        def __getitem__(self, i):
            return self.x[i], int(self.targets[i])

    def datasets():
        order = np.random.default_rng(1).permutation(1797)
        return Digits(order[:1200]), None, Digits(order[1400:])

    def error_rate(outputs, targets):   # the complement of top-1: a result that shows whose metric ran
        return 100.0 * float((outputs.argmax(1) != targets).float().mean())
''')


@pytest.fixture()
def usermod(tmp_path, monkeypatch):
    (tmp_path / "userdata_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userdata_mod"


def test_data_factory_and_metric_named_on_the_command_line_run_and_are_recorded(capsys, tmp_path, usermod):
    m, m2, p = tmp_path / "m.pt", tmp_path / "m2.pt", tmp_path / "p.pt"
    base = ["train", "--arch", "zoo:lenet300", "--data", f"{usermod}:datasets", "--epochs", "3", "--json"]
    assert main([*base, "-o", str(m)]) == 0
    top1 = json.loads(capsys.readouterr().out)
    assert top1["test_accuracy"] > 70 and top1["data"] == f"{usermod}:datasets"
    assert main([*base, "--metric", f"{usermod}:error_rate", "-o", str(m2)]) == 0
    err = json.loads(capsys.readouterr().out)
    # same seed, same model: the metric is the complement of top-1, so it was the user's that ran
    assert err["test_accuracy"] == pytest.approx(100 - top1["test_accuracy"], abs=1e-4)
    # a checkpoint that records a factory does not run it again on its own say-so
    code = main(["compress", str(m), "--sparsity", "0.5", "--finetune-epochs", "0", "-o", str(p), "--json"])
    assert code == 2
    said = capsys.readouterr().err
    assert f"names the data function '{usermod}:datasets'" in said and "--trust-code" in said
    assert not p.exists()
    assert main(["compress", str(m), "--sparsity", "0.5", "--finetune-epochs", "0", "--trust-code", "-o", str(p),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dense_val_accuracy"] > 70
    # the recorded metric needs the same consent as the recorded data factory
    code = main(["compress", str(m2), "--data", f"{usermod}:datasets", "--sparsity", "0.5", "--finetune-epochs", "0",
                 "-o", str(tmp_path / "p2.pt"), "--json"])
    assert code == 2 and f"names the metric function '{usermod}:error_rate'" in capsys.readouterr().err
    assert main(["compress", str(m2), "--data", f"{usermod}:datasets", "--metric", f"{usermod}:error_rate",
                 "--sparsity", "0.5", "--finetune-epochs", "0", "-o", str(tmp_path / "p2.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dense_val_accuracy"] < 30


def test_a_factory_that_returns_the_wrong_thing_is_one_line(capsys, tmp_path, usermod):
    (tmp_path / "badmod.py").write_text("def datasets():\n    return [1, 2]\n")
    code = main(["train", "--arch", "zoo:lenet300", "--data", "badmod:datasets", "-o", str(tmp_path / "m.pt")])
    assert code == 2 and "must return (train, val, test)" in capsys.readouterr().err


def test_deploy_scores_with_the_recorded_metric_through_onnx_runtime(capsys, tmp_path, usermod, fast_target):
    """A checkpoint trained and pruned with --metric is scored by it on the built engines too, under the
    same consent; the report names the metric instead of calling it top-1."""
    m, p = tmp_path / "m.pt", tmp_path / "p.pt"
    data, metric = ["--data", f"{usermod}:datasets"], ["--metric", f"{usermod}:error_rate"]
    assert main(["train", "--arch", "zoo:lenet300", *data, *metric, "--epochs", "3", "-o", str(m), "--json"]) == 0
    assert main(["compress", str(m), *data, *metric, "--sparsity", "0.5", "--finetune-epochs", "0", "-o", str(p),
                 "--json"]) == 0
    capsys.readouterr()
    run = ["deploy", str(p), "--target", str(fast_target), *data]
    assert main([*run, "-o", str(tmp_path / "refused")]) == 2       # the recorded metric needs consent
    assert f"names the metric function '{usermod}:error_rate'" in capsys.readouterr().err
    assert main([*run, *metric, "-o", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["accuracy_metric"] == f"{usermod}:error_rate"
    top1 = report["agreement"]["top1"]                              # dense and pruned pick the same class this often
    assert report["dense"]["accuracy"] < 30 and report["pruned"]["accuracy"] < 100 * (1 - top1) + 30
    assert f"{usermod}:error_rate (--metric)" in (tmp_path / "run" / "report.md").read_text()
    # without --data, the options given apply to the data the checkpoint records (here with --trust-code)
    assert main(["deploy", str(p), "--target", str(fast_target), "--trust-code", "--test-limit", "200",
                 "-o", str(tmp_path / "run2"), "--json"]) == 0
    again = json.loads((tmp_path / "run2" / "report.json").read_text())
    assert again["accuracy_metric"] == f"{usermod}:error_rate" and again["agreement"]["samples"] == 200
