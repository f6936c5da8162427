"""The CLI end to end: one test per command, one per bad input a user can give (exit 2, one line)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeprune.cli import main
from edgeprune.model_io import load_model

DATA = ["--data", "fashion-mnist", "--limit", "2000"]
REPORT_KEYS = {"schema", "target", "method", "sparsity", "dense", "pruned", "ratios", "accuracy_drop_pt"}
SIDE_KEYS = {"latency_ms", "peak_rss_mb", "accuracy", "size_bytes", "params", "macs"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, lenet300_ckpt):
    out = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    assert main(["compress", str(lenet300_ckpt), "--sparsity", "0.8", "--finetune-epochs", "0.5", *DATA,
                 "-o", str(out), "--json"]) == 0
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_help_of_every_command_has_an_example(capsys):
    for cmd in ("train", "compress", "export", "deploy", "profile", "targets"):
        code, out, _ = run(capsys, cmd, "--help")
        assert code == 0 and "Example: edgeprune " + cmd in " ".join(out.split())


def test_train(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--arch", "zoo:lenet300", *DATA, "--epochs", "2", "--lr", "3e-3", "-o",
                       tmp_path / "m.pt", "--json")
    r = json.loads(out)
    assert code == 0 and r["val_accuracy"] > 65 and r["arch"] == "zoo:lenet300"
    assert load_model(tmp_path / "m.pt").checkpoint.meta["data"] == "fashion-mnist"


def test_train_with_sgd_records_the_recipe_and_rejects_an_unknown_optimizer(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--arch", "zoo:lenet300", *DATA, "--epochs", "3", "--optimizer", "sgd",
                       "--lr", "0.05", "--lr-schedule", "constant", "-o", tmp_path / "m.pt", "--json")
    assert code == 0 and json.loads(out)["val_accuracy"] > 50
    meta = load_model(tmp_path / "m.pt").checkpoint.meta
    assert (meta["optimizer"], meta["lr_schedule"], meta["lr"]) == ("sgd", "constant", 0.05)
    code, out, err = run(capsys, "train", "--arch", "zoo:lenet300", *DATA, "--optimizer", "rmsprop",
                         "-o", tmp_path / "n.pt")
    assert code == 2 and "unknown optimizer 'rmsprop'" in err and "Traceback" not in err + out
    assert not (tmp_path / "n.pt").exists()


def test_compress_reports_sparsity_accuracy_and_reloads(capsys, pruned, lenet300_ckpt):
    loaded = load_model(pruned)
    w = [p for n, p in loaded.model.named_parameters() if n.endswith("weight")]
    assert abs(1 - sum(int((p != 0).sum()) for p in w) / sum(p.numel() for p in w) - 0.8) < 1e-3
    meta = loaded.checkpoint.meta
    assert meta["method"] == "magnitude" and meta["source_sha256"] == digest(lenet300_ckpt)
    assert meta["val_accuracy"] > meta["dense_val_accuracy"] - 5


def test_compress_table_output(capsys, tmp_path, lenet300_ckpt):
    code, out, _ = run(capsys, "compress", lenet300_ckpt, "--sparsity", "0.5", "--finetune-epochs", "0", *DATA,
                       "-o", tmp_path / "p.pt")
    assert code == 0 and "what it cost" in out and "val accuracy" in out and "MACs" in out


def test_channel_compress_shrinks_the_cnn_and_reloads_in_a_fresh_process(capsys, tmp_path, resnet_ckpt):
    out = tmp_path / "ch.pt"
    code, text, err = run(capsys, "compress", resnet_ckpt, "--granularity", "channel", "--budget", "macs",
                          "--sparsity", "0.5", "--finetune-epochs", "0.2", "--data", "fashion-mnist", "--limit", "500",
                          "-o", out, "--json")
    assert code == 0, err
    r = json.loads(text)
    assert 0.4 <= 1 - r["macs_after"] / r["macs_before"] <= 0.6
    x = torch.rand(2, 1, 28, 28)
    expected = load_model(out).model(x)
    torch.save(x, tmp_path / "x.pt")
    code = (f"import torch; from edgeprune.model_io import load_model; "
            f"torch.save(load_model(r'{out}').model(torch.load(r'{tmp_path / 'x.pt'}')), r'{tmp_path / 'y.pt'}')")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-5)


def test_iterative_layerwise_and_random_control(capsys, tmp_path, lenet300_ckpt):
    results = {}
    for method in ("magnitude", "random"):
        code, out, err = run(capsys, "compress", lenet300_ckpt, "--method", method, "--sparsity", "0.9",
                             "--schedule", "iterative", "--steps", "3", "--scope", "layer", "--finetune-epochs", "0.6",
                             *DATA, "-o", tmp_path / f"{method}.pt", "--json")
        assert code == 0, err
        results[method] = json.loads(out)
    for r in results.values():
        assert abs(r["sparsity"] - 0.9) < 1e-3
        assert all(abs(L["sparsity"] - 0.9) < 0.01 for L in r["layers"])   # layer scope: every layer at 90 %
    # magnitude beats the random control before fine-tuning hides the difference
    assert results["magnitude"]["pruned_val_accuracy"] > results["random"]["pruned_val_accuracy"]


def test_export(capsys, tmp_path, pruned):
    code, out, _ = run(capsys, "export", pruned, "-o", tmp_path / "p.onnx", "--json")
    r = json.loads(out)
    assert code == 0 and r["parity"]["top1_agreement"] == 1.0 and r["opset"] == 17
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((3, 1, 28, 28), np.float32)})[0].shape == (3, 10)


def test_deploy_writes_the_run_directory(capsys, tmp_path, pruned, lenet300_ckpt, fast_target):
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "deploy", pruned, "--target", fast_target, "--baseline", lenet300_ckpt,
                         "--test-limit", "500", "-o", run_dir, "--json")
    assert code == 0, err
    report = json.loads((run_dir / "report.json").read_text())
    assert report == json.loads(out)
    assert REPORT_KEYS <= set(report) and report["schema"] == "edgeprune.report/1"
    for side in ("dense", "pruned"):
        assert SIDE_KEYS <= set(report[side])
        assert set(report[side]["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
    assert set(report["ratios"]) >= {"latency_p50", "macs", "params", "size"}
    assert abs(report["sparsity"] - 0.8) < 1e-3 and report["method"] == "magnitude"
    assert report["ratios"]["params"] < 0.25 and report["ratios"]["macs"] == pytest.approx(1.0)
    assert any("no speed-up" in n for n in report["notes"])
    assert (run_dir / "report.md").read_text().count("|") > 20
    assert (run_dir / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert {"dense.onnx", "pruned.onnx"} <= {p.name for p in run_dir.iterdir()}
    for name in ("dense.onnx", "pruned.onnx"):   # deploy's exports record the data set like `export`'s
        meta = {p.key: p.value for p in onnx.load(str(run_dir / name)).metadata_props}
        assert meta["edgeprune.data"] == "fashion-mnist" and meta["edgeprune.input_shape"] == "1,28,28"


def test_int8_deploy_on_a_target_without_calibration_data_calibrates_on_the_runs_data(capsys, tmp_path, fast_target):
    # host-cpu names no calibration set (the shipped one is Fashion-MNIST, 28x28): deploy samples the
    # training split of --data, here sklearn's 8x8 digits, and says so in the report
    m, p, run_dir = tmp_path / "m.pt", tmp_path / "p.pt", tmp_path / "run"
    assert main(["train", "--arch", "zoo:lenet300", "--data", "digits", "--epochs", "1", "-o", str(m), "--json"]) == 0
    assert main(["compress", str(m), "--sparsity", "0.5", "--granularity", "channel", "--finetune-epochs", "0",
                 "--data", "digits", "-o", str(p), "--json"]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, "deploy", p, "--precision", "int8", "--target", fast_target, "--baseline", m,
                         "--data", "digits", "-o", run_dir, "--json")
    assert code == 0, err
    int8 = json.loads(out)["int8"]
    assert int8["calibration"] == str(run_dir / "calibration.npz") and int8["calibration_samples"] == 512
    with np.load(run_dir / "calibration.npz") as z:
        assert z["x"].shape[1:] == (1, 8, 8) and np.bincount(z["y"]).min() >= 51   # class-balanced, 10 classes


def test_profile_two_onnx_files(capsys, tmp_path, pruned, lenet300_ckpt, fast_target):
    for src, name in ((lenet300_ckpt, "d.onnx"), (pruned, "p.onnx")):
        assert main(["export", str(src), "-o", str(tmp_path / name)]) == 0
    # no --data: the data set comes from what export recorded in the ONNX metadata
    code, out, err = run(capsys, "profile", "--target", fast_target, "--baseline", tmp_path / "d.onnx",
                         tmp_path / "p.onnx", "--test-limit", "300", "--json", tmp_path / "out.json")
    assert code == 0, err
    report = json.loads((tmp_path / "out.json").read_text())
    assert REPORT_KEYS <= set(report) and report["method"] == "magnitude"
    assert report["dense"]["accuracy"] > 60 and "latency p50" in out and report["run"]["accuracy_samples"] == 300


def test_targets_lists_host_cpu(capsys):
    code, out, _ = run(capsys, "targets", "--json")
    rows = {t["name"]: t for t in json.loads(out)}
    assert code == 0 and rows["host-cpu"]["backend"] == "onnxruntime"


def test_targets_show_stack_and_build_policy(capsys, monkeypatch):
    code, out, _ = run(capsys, "targets", "--json")
    rows = {t["name"]: t for t in json.loads(out)}
    nano = rows["jetson-nano"]
    assert code == 0 and nano["stack_summary"] == "JetPack 4.6.1, TensorRT 8.2.1, CUDA 10.2"
    assert (nano["precision"], nano["sparsity"], nano["trt_generation"]) == ("fp16", "none", "8.2")
    assert rows["jetson-agx-orin"]["build"]["sparsity"] == "2:4" and rows["jetson-agx-orin"]["hardware"]["dla_cores"] == 2
    # an ARM target builds on any host; on a non-ARM one its status says whose latency a run measures
    assert rows["host-cpu"]["status"] == "ready"
    assert rows["raspberry-pi-5"]["status"] in ("ready", "builds here; latency is this host's, not the aarch64 device's")
    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough for one line per target
    code, out, _ = run(capsys, "targets")
    header = out.splitlines()[2]
    assert "JetPack 6.2, TensorRT 10.3.0, CUDA 12.6" in next(ln for ln in out.splitlines() if "jetson-agx-orin" in ln)
    assert code == 0 and all(col in header for col in ("name", "backend", "stack", "precision", "sparsity", "DLA", "status"))


def test_a_users_targets_dir_adds_and_overrides_targets(capsys, tmp_path, fast_target):
    (tmp_path / "my-board.toml").write_text(fast_target.read_text())
    (tmp_path / "host-cpu.toml").write_text(fast_target.read_text().replace('round_to = "host"', "round_to = 24"))
    code, out, _ = run(capsys, "targets", "--targets-dir", tmp_path, "--json")
    rows = {t["name"]: t for t in json.loads(out)}
    assert code == 0 and {"my-board", "jetson-agx-orin"} <= set(rows) and len(rows) == 11
    assert rows["host-cpu"]["build"]["round_to"] == 24 and rows["host-cpu"]["path"] == str(tmp_path / "host-cpu.toml")
    bad(capsys, "targets", "--targets-dir", tmp_path / "nope", match="targets folder not found")


def test_compress_with_a_target_keeps_its_channel_multiple(capsys, tmp_path, lenet300_ckpt, fast_target):
    board = tmp_path / "boards"
    board.mkdir()
    (board / "wide.toml").write_text(fast_target.read_text().replace('round_to = "host"', "round_to = 32"))

    def widths(*extra):
        out = tmp_path / f"p{len(extra)}.pt"
        code, _, err = run(capsys, "compress", lenet300_ckpt, "--granularity", "channel", "--sparsity", "0.5",
                           "--finetune-epochs", "0", *DATA, "-o", out, "--json", *extra)
        assert code == 0, err
        meta = load_model(out).checkpoint.meta
        shapes = [p.shape[0] for n, p in load_model(out).model.named_parameters() if n.endswith("weight")][:-1]
        return meta["spec"]["round_to"], meta["target"], shapes

    round_to, target, hidden = widths("--target", "wide", "--targets-dir", board)
    assert (round_to, target) == (32, "wide") and all(w % 32 == 0 for w in hidden) and hidden != [300, 100]
    round_to, target, hidden = widths("--target", "wide", "--targets-dir", board, "--round-to", "4", "--force")
    assert (round_to, target) == (4, "wide") and any(w % 32 for w in hidden)   # an explicit --round-to wins


def test_version_no_arguments_and_a_bad_option(capsys):
    from edgeprune import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"edgeprune {__version__}"
    code, out, _ = run(capsys)
    assert code == 0 and "Usage: edgeprune" in out and "compress" in out
    bad(capsys, "--bad-option", match="No such option: --bad-option")


def test_python_dash_m_runs_the_same_cli():
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("edgeprune ")
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "deploy", "x.pt", "--target", "no-such-board"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown target 'no-such-board' (available: ")


def test_validate_exit_code_says_whether_the_model_fits(capsys, tmp_path, lenet300_ckpt):
    model = tmp_path / "m.onnx"
    assert main(["export", str(lenet300_ckpt), "-o", str(model), "--no-check", "--json"]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "validate", model, "--target", "jetson-orin-nano")
    assert code == 0 and out.strip() == "m.onnx on jetson-orin-nano: ok (0 errors, 0 notes)"
    code, out, _ = run(capsys, "validate", model, "--target", "jetson-nano")
    assert code == 1 and out.splitlines()[0] == "model: opset 17 is above the target's max_opset 13; fix: re-export with --opset 13"
    code, out, _ = run(capsys, "validate", model, "--target", "jetson-nano", "--json")
    r = json.loads(out)
    assert code == 1 and (r["ok"], r["errors"], r["notes"]) == (False, 1, 0) and r["problems"][0]["layer"] == "model"
    code, out, _ = run(capsys, "validate", "--help")
    assert "Example: edgeprune validate" in " ".join(out.split())
    bad(capsys, "validate", tmp_path / "nope.onnx", match="not found")


# ------------------------------------------------------------------ bad input: exit 2, one line, no traceback
def bad(capsys, *argv, match: str):
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err
    assert "Traceback" not in err


def test_missing_model_file(capsys, tmp_path):
    bad(capsys, "compress", tmp_path / "nope.pt", "-o", tmp_path / "o.pt", match="not found")


def test_corrupt_model_file(capsys, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    bad(capsys, "export", tmp_path / "junk.pt", "-o", tmp_path / "o.onnx", match="cannot read model file")


def test_pickle_without_trust_pickle(capsys, tmp_path, lenet300_ckpt):
    torch.save(load_model(lenet300_ckpt).model, tmp_path / "full.pt")
    bad(capsys, "compress", tmp_path / "full.pt", "-o", tmp_path / "o.pt", match="--trust-pickle")


def test_unknown_method(capsys, tmp_path, lenet300_ckpt):
    bad(capsys, "compress", lenet300_ckpt, "--method", "optimal-brain", "-o", tmp_path / "o.pt", match="unknown method")


def test_unknown_target(capsys, tmp_path, pruned):
    bad(capsys, "deploy", pruned, "--target", "cray-1", "-o", tmp_path / "r", match="unknown target")


def test_unknown_architecture(capsys, tmp_path):
    bad(capsys, "train", "--arch", "zoo:alexnet", "-o", tmp_path / "m.pt", *DATA, match="unknown architecture")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "lots"])
def test_sparsity_outside_range(capsys, tmp_path, lenet300_ckpt, value):
    bad(capsys, "compress", lenet300_ckpt, "--sparsity", value, "-o", tmp_path / "o.pt", match="--sparsity")


def test_wrong_input_shape(capsys, tmp_path, lenet300_ckpt):
    bad(capsys, "compress", lenet300_ckpt, "--data", "digits", "-o", tmp_path / "o.pt", match="expects (1, 28, 28)")


def test_data_set_not_found(capsys, tmp_path, lenet300_ckpt):
    bad(capsys, "compress", lenet300_ckpt, "--data", "fashion-mnist", "--data-dir", tmp_path, "-o", tmp_path / "o.pt",
        match="not found")
    bad(capsys, "compress", lenet300_ckpt, "--data", "imagenet", "-o", tmp_path / "o.pt", match="unknown data set")


def test_existing_output_without_force_is_kept(capsys, tmp_path, lenet300_ckpt):
    out = tmp_path / "o.pt"
    out.write_bytes(b"precious")
    bad(capsys, "compress", lenet300_ckpt, "-o", out, match="--force")
    assert out.read_bytes() == b"precious"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    bad(capsys, "deploy", lenet300_ckpt, "--baseline", lenet300_ckpt, "-o", tmp_path / "run", match="--force")


def test_unknown_option_is_one_line(capsys, lenet300_ckpt):
    bad(capsys, "compress", lenet300_ckpt, "--frobnicate", match="No such option")


def test_input_files_are_never_modified(capsys, tmp_path, lenet300_ckpt):
    before = digest(lenet300_ckpt)
    assert main(["compress", str(lenet300_ckpt), "--sparsity", "0.3", "--finetune-epochs", "0.1", *DATA,
                 "-o", str(tmp_path / "p.pt"), "--json"]) == 0
    capsys.readouterr()
    assert digest(lenet300_ckpt) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pt"]   # no temp files left behind


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("edgeprune")
    proc = subprocess.run([str(exe), "export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: model file not found: {tmp_path / 'missing.pt'}"


def test_profile_rejects_data_of_the_wrong_shape_and_corrupt_onnx(capsys, tmp_path, lenet300_ckpt):
    assert main(["export", str(lenet300_ckpt), "-o", str(tmp_path / "d.onnx")]) == 0
    capsys.readouterr()
    bad(capsys, "profile", "--baseline", tmp_path / "d.onnx", tmp_path / "d.onnx", "--data", "digits",
        match="expects ['batch', 1, 28, 28]")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    bad(capsys, "profile", "--baseline", tmp_path / "junk.onnx", tmp_path / "d.onnx", "--data", "digits",
        match="not a readable ONNX model")


def test_unexportable_operator_is_one_line_and_a_bug_is_a_traceback(capsys, tmp_path, lenet300_ckpt, monkeypatch):
    from tests.test_export import UNEXPORTABLE, _unexportable_ckpt

    bad(capsys, "export", _unexportable_ckpt(tmp_path / "z.pt"), "-o", tmp_path / "z.onnx", "--no-check",
        "--arch", UNEXPORTABLE,
        match="operator 'prims.zeta' has no ONNX translation at opset 17")

    def broken(*args, **kwargs):
        raise KeyError("edgeprune bug")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(KeyError, match="edgeprune bug"):   # propagates out of main: a traceback, not exit 2
        main(["export", str(lenet300_ckpt), "-o", str(tmp_path / "m.onnx")])
