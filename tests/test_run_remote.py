"""`deploy --host` against a real sshd on loopback, with the venv's python as the board's python
(blocked from importing torch, onnx, typer and rich, as a board without them would be): push,
build, measure, pull, a report shaped like a local one, the engine cache, each fault as one line
with exit 2, and a run cut mid-measurement resumed at the first unfinished stage."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeprune import api
from edgeprune.cli import main
from edgeprune.device import DEVICE_FILES
from edgeprune.errors import RemoteError

from . import sshd as sshd_mod
from .fake_tensorrt import install_fake_gpu, orin_nano_toml

pytestmark = pytest.mark.skipif(not sshd_mod.available(), reason="openssh-server not installed (.ci/run installs it)")

BLOCKED = ("torch", "onnx", "typer", "rich", "click", "matplotlib")
TEST = api.DataOptions("fashion-mnist", test_limit=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory, lenet300_ckpt):
    out = tmp_path_factory.mktemp("remote-models") / "pruned.pt"
    api.compress(lenet300_ckpt, api.PruneSpec(method="magnitude", sparsity=0.5, granularity="channel"), out,
                 data=api.DataOptions("fashion-mnist", limit=1000), finetune_epochs=0, progress=False)
    return out, lenet300_ckpt


@pytest.fixture()
def board(tmp_path):
    server = sshd_mod.make_sshd(tmp_path / "sshd").start()
    yield server
    server.stop()


def board_python(tmp_path: Path, also_block: tuple[str, ...] = (), path: tuple[Path, ...] = ()) -> Path:
    """A python for the 'board': this venv's, with the modules a board lacks made unimportable (and
    ``path`` searched too: the fake GPU's modules)."""
    site = tmp_path / "board-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor m in {BLOCKED + also_block!r}:\n    sys.modules[m] = None   # import m -> ImportError\n")
    exe = tmp_path / "board-python"
    more = "".join(f":{p}" for p in path)
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{site}{more}" exec {sys.executable} "$@"\n')
    exe.chmod(0o755)
    return exe


def target_file(tmp_path: Path, fast_target: Path, workdir: Path, *, run: dict | None = None,
                stack: str | None = None) -> Path:
    text = fast_target.read_text()
    for key, value in (run or {}).items():
        text = text.replace(f"\n{key} = ", f"\n{key} = {value}\n# was: ", 1)
    if stack:
        text = text.replace('onnxruntime = ">=1.18,<2"', f'onnxruntime = "{stack}"')
    path = tmp_path / "targets" / "loopback.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + f'\n[device]\nworkdir = "{workdir}"\n')
    return path


def deploy(models, target, out, board, python, **kw):
    pruned, dense = models
    return api.deploy(pruned, str(target), out, baseline_path=dense, data=TEST, progress=False, host=board.alias,
                      ssh_config=board.ssh_config, device_python=str(python), **kw)


def cli(capsys, models, target, out, board, python, *more):
    pruned, dense = models
    code = main(["deploy", str(pruned), "--baseline", str(dense), "--target", str(target), "--data", "fashion-mnist",
                 "--test-limit", "300", "-o", str(out), "--host", board.alias, "--ssh-config", str(board.ssh_config),
                 "--device-python", str(python), "--json", *more])
    return code, capsys.readouterr()


def one_line_error(code, captured, match: str) -> str:
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], captured.err
    return lines[0]


def stages(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "stages.json").read_text())["done"]


def keys(d, depth=2):
    return {k: keys(v, depth - 1) if isinstance(v, dict) and depth > 1 else None for k, v in d.items()}


def test_device_side_needs_no_torch_onnx_typer_or_rich(tmp_path):
    """The device package runs from exactly DEVICE_FILES, with the host-only libraries blocked."""
    root = Path(api.__file__).resolve().parents[1]
    for name in DEVICE_FILES:
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_bytes((root / name).read_bytes())
    p = subprocess.run([str(board_python(tmp_path)), "-m", "edgeprune.device", "probe"], capture_output=True,
                       text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "pkg")})
    assert p.returncode == 0, p.stderr
    probe = json.loads(p.stdout)
    assert probe["hostname"] == socket.gethostname() and probe["onnxruntime"]["version"]
    assert "CPUExecutionProvider" in probe["onnxruntime"]["providers"] and probe["l4t"] is None


def test_remote_deploy_reports_like_a_local_one_and_reuses_engines(tmp_path, models, board, fast_target):
    target = target_file(tmp_path, fast_target, tmp_path / "workdir")
    python = board_python(tmp_path)
    t0 = time.perf_counter()
    local = api.deploy(models[0], str(target), tmp_path / "local", baseline_path=models[1], data=TEST, progress=False)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    deploy(models, target, tmp_path / "remote", board, python)
    t_remote = time.perf_counter() - t0
    print(f"local {t_local:.1f} s, remote {t_remote:.1f} s")
    ld, rd = local.to_dict(), json.loads((tmp_path / "remote" / "report.json").read_text())
    assert keys(ld) == keys(rd)                                  # the same report, field for field
    assert rd["device"]["host"] == "board" and ld["device"]["host"] is None
    assert rd["device"]["hostname"] == socket.gethostname() and len(rd["device"]["stack"]) == 16
    assert rd["engine_cache"] == {"dense": "miss", "pruned": "miss"} == ld["engine_cache"]
    # measured on the 'board': its accuracy through its engines equals the local engines'
    assert rd["dense"]["accuracy"] == ld["dense"]["accuracy"] and rd["pruned"]["accuracy"] == ld["pruned"]["accuracy"]
    assert rd["ratios"]["macs"] == pytest.approx(ld["ratios"]["macs"]) and rd["ratios"]["macs"] < 0.8
    assert rd["dense"]["peak_rss_mb"] > 0 and rd["latency"]["1"]["dense"]["n"] == 30
    # what a bench history needs comes back from the board too: per-sample correctness, per-round medians
    assert rd["evaluation"] == ld["evaluation"] and rd["evaluation"]["samples"] == rd["agreement"]["samples"]
    assert len(rd["latency"]["1"]["rounds_ms"]["pruned"]) == 20
    for e in rd["run"]["engines"].values():                       # the engines came back into the run directory
        assert Path(e).is_file() and Path(e).is_relative_to(tmp_path / "remote")
    assert stages(tmp_path / "remote") == ["exported", "pushed", "built", "measured", "pulled", "reported"]
    assert (tmp_path / "remote" / "report.md").is_file()

    t0 = time.perf_counter()
    again = deploy(models, target, tmp_path / "remote2", board, python)
    print(f"remote again (engine cache) {time.perf_counter() - t0:.1f} s")
    assert again.engine_cache == {"dense": "hit", "pruned": "hit"}
    assert "both reused from the board's engine cache" in again.notes[0]
    assert len(list((tmp_path / "workdir" / "engines").iterdir())) == 2       # nothing built twice


def test_a_changed_stack_never_reuses_an_engine(tmp_path, models, board, fast_target):
    target = target_file(tmp_path, fast_target, tmp_path / "workdir")
    deploy(models, target, tmp_path / "r1", board, board_python(tmp_path))
    # the same board after an upgrade: another numpy version is another stack
    site = tmp_path / "upgraded"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import numpy\nnumpy.__version__ = '9.9.9'\n")
    py = tmp_path / "upgraded-python"
    py.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{site}" exec {sys.executable} "$@"\n')
    py.chmod(0o755)
    r = deploy(models, target, tmp_path / "r2", board, py)
    assert r.engine_cache == {"dense": "miss", "pruned": "miss"} and r.stack["numpy"] == "9.9.9"
    assert len(list((tmp_path / "workdir" / "engines").iterdir())) == 4


def test_faults_are_one_line_and_keep_what_was_done(capsys, tmp_path, models, board, fast_target):
    python = board_python(tmp_path)
    target = target_file(tmp_path, fast_target, tmp_path / "workdir")
    # unreachable: nothing listens on the port; the exports are kept
    cfg = tmp_path / "cfg-unreachable"
    cfg.write_text(board.ssh_config.read_text().replace(f"Port {board.port}", f"Port {sshd_mod.free_port()}"))
    pruned, dense = models
    code = main(["deploy", str(pruned), "--baseline", str(dense), "--target", str(target), "--test-limit", "300",
                 "-o", str(tmp_path / "r0"), "--host", "board", "--ssh-config", str(cfg), "--json"])
    one_line_error(code, capsys.readouterr(), "board is unreachable")
    assert stages(tmp_path / "r0") == ["exported"] and (tmp_path / "r0" / "dense.onnx").is_file()
    # a stack that does not match the target: refused on the board after the push
    bad_stack = target_file(tmp_path / "b", fast_target, tmp_path / "workdir", stack=">=9")
    code, out = cli(capsys, models, bad_stack, tmp_path / "r1", board, python)
    one_line_error(code, out, "on board: the board's stack does not match target loopback: installed onnxruntime")
    assert stages(tmp_path / "r1") == ["exported", "pushed"]
    # the runtime missing on the board
    code, out = cli(capsys, models, target, tmp_path / "r2", board, board_python(tmp_path / "b", ("onnxruntime",)))
    one_line_error(code, out, "on board: backend 'onnxruntime' is not usable here")
    # a refused key
    authorized = board.root / "authorized_keys"
    key = authorized.read_text()
    authorized.write_text("")
    code, out = cli(capsys, models, target, tmp_path / "r3", board, python)
    one_line_error(code, out, "authentication refused by board")
    authorized.write_text(key)


def test_a_full_disk_on_the_board(capsys, tmp_path, models, board, fast_target):
    full = tmp_path / "tiny"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        target = target_file(tmp_path, fast_target, full)
        code, out = cli(capsys, models, target, tmp_path / "run", board, board_python(tmp_path))
        one_line_error(code, out, "the disk on board is full")
        assert stages(tmp_path / "run") == ["exported"]
    finally:
        subprocess.run(["umount", "-l", str(full)])


def test_a_cut_connection_resumes_at_the_unfinished_stage(tmp_path, models, board, fast_target):
    workdir = tmp_path / "workdir"
    target = target_file(tmp_path, fast_target, workdir, run={"batch_sizes": "[1]", "min_seconds": "3.0"})
    python, run_dir = board_python(tmp_path), tmp_path / "run"
    errors: list[Exception] = []

    def first():
        try:
            deploy(models, target, run_dir, board, python)
        except RemoteError as e:
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    deadline = time.monotonic() + 120
    while not list(workdir.glob("jobs/*/built.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)                      # measuring now
    board.kill_sessions()
    t.join(60)
    assert errors and str(errors[0]).startswith("connection to board lost"), errors
    assert stages(run_dir) == ["exported", "pushed", "built"]
    before = json.loads((run_dir / "stages.json").read_text())["times"]
    exported = (run_dir / "dense.onnx").stat().st_mtime_ns
    report = deploy(models, target, run_dir, board, python)   # the same command again
    assert stages(run_dir)[-1] == "reported" and report.latency[1].dense.n >= 30
    after = json.loads((run_dir / "stages.json").read_text())["times"]
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {"measured", "pulled", "reported"}
    assert (run_dir / "dense.onnx").stat().st_mtime_ns == exported                   # not exported again
    assert not list(workdir.glob("jobs/*"))                # the job folder is cleaned up, the cache stays
    assert report.engine_cache == {"dense": "miss", "pruned": "miss"}   # built once, by the first attempt


def test_remote_int8_is_quantised_here_and_measured_on_the_board_like_a_local_run(tmp_path, models, board, fast_target):
    """The board has no onnx (blocked here): the host quantises the pruned model as a local INT8 deploy
    does, pushes the Q/DQ model, and the board times it beside the pruned fp32 model and the dense one."""
    target = target_file(tmp_path, fast_target, tmp_path / "workdir")
    local = api.deploy(models[0], str(target), tmp_path / "local", baseline_path=models[1], data=TEST, progress=False,
                       precision="int8")
    remote = deploy(models, target, tmp_path / "remote", board, board_python(tmp_path), precision="int8")
    ld, rd = local.to_dict(), json.loads((tmp_path / "remote" / "report.json").read_text())
    assert keys(ld) == keys(rd) and rd["precision"] == "int8" == remote.precision
    assert rd["int8"]["quantized_nodes"] == ld["int8"]["quantized_nodes"] > 0
    assert Path(rd["int8"]["int8_onnx"]) == tmp_path / "remote" / "pruned.int8.onnx"
    assert rd["pruned"]["size_bytes"] == (tmp_path / "remote" / "pruned.int8.onnx").stat().st_size < rd["pruned_fp32"]["size_bytes"]
    # the same quantised network, run on the 'board': the same predictions as the local INT8 engine
    for side in ("dense", "pruned", "pruned_fp32"):
        assert rd[side]["accuracy"] == ld[side]["accuracy"]
    assert rd["int8"]["agreement_with_fp32"] == ld["int8"]["agreement_with_fp32"]
    assert set(rd["int8"]["latency_ratio_p50"]) == set(ld["int8"]["latency_ratio_p50"]) and rd["latency"]["1"]["pruned_fp32"]["n"] == 30


JETSON = orin_nano_toml("a Jetson reached over loopback, with the fake TensorRT",
                        run="warmup = 2\niterations = 10\nbatch_sizes = [1, 16]\nmin_seconds = 0.0\n",
                        extra='[device]\nworkdir = "{workdir}"\n')


def fake_gpu_dir(tmp_path: Path, version: str = "10.3.0") -> Path:
    """`tensorrt` and `cuda` for the board's python: the fake TensorRT ``version`` and cuda-python over one fake device."""
    d = tmp_path / f"fake-gpu-{version}"
    (d / "cuda").mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    (d / "tensorrt.py").write_text(f"import sys\nsys.path.append({str(root)!r})\n"
                                   "from tests.fake_tensorrt import fake_gpu_modules\n"
                                   f"sys.modules.update(fake_gpu_modules({version!r}))   # this module, cuda's too\n")
    (d / "cuda" / "__init__.py").write_text("import tensorrt  # noqa: F401 -- installs the fake's cuda modules\n")
    return d


def test_remote_tensorrt_builds_on_the_board_and_reports_like_a_local_run_fake_tensorrt(tmp_path, models, board,
                                                                                         monkeypatch):
    """Planned here, built and timed on the board through its TensorRT Python API (the fake one, on the
    board's python path): the same report as a deploy where TensorRT is installed."""
    target = tmp_path / "targets" / "jetson-loopback.toml"
    target.parent.mkdir()
    target.write_text(JETSON.format(workdir=tmp_path / "workdir"))
    python = board_python(tmp_path, path=(fake_gpu_dir(tmp_path),))
    remote = deploy(models, target, tmp_path / "remote", board, python)
    rd = json.loads((tmp_path / "remote" / "report.json").read_text())
    install_fake_gpu(monkeypatch, "10.3.0")
    ld = api.deploy(models[0], str(target), tmp_path / "local", baseline_path=models[1], data=TEST, progress=False,
                    host=None).to_dict()
    assert keys(ld) == keys(rd) and rd["backend"] == "tensorrt" and rd["device"]["host"] == "board"
    assert rd["engine_facts"] == ld["engine_facts"] and rd["engine_facts"]["pruned"]["precisions"] == {"FP16": 3}
    for side in ("dense", "pruned"):
        assert rd[side]["accuracy"] == ld[side]["accuracy"]       # the same engines' predictions, there and here
    assert rd["latency"]["16"]["dense"]["n"] == 10 and remote.engine_cache == {"dense": "miss", "pruned": "miss"}
    for e in rd["run"]["engines"].values():
        assert Path(e).is_file() and Path(e).is_relative_to(tmp_path / "remote")

    # The board's engine cache: a second deploy of the same models reuses both plans, built by nobody
    slots = tmp_path / "workdir" / "engines"
    built = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in slots.glob("*/*.plan")}
    again = deploy(models, target, tmp_path / "again", board, python)
    assert len(built) == 2 and again.engine_cache == {"dense": "hit", "pruned": "hit"}
    assert "both reused from the board's engine cache" in again.notes[0]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in slots.glob("*/*.plan")} == built
    ad = json.loads((tmp_path / "again" / "report.json").read_text())
    assert ad["engine_facts"] == rd["engine_facts"]                  # the layer information came with them
    for side in ("dense", "pruned"):   # the cached engines run (their job's ONNX files are long gone)
        assert ad[side]["accuracy"] == rd[side]["accuracy"]
        assert Path(ad["run"]["engines"][side]).read_bytes() == Path(rd["run"]["engines"][side]).read_bytes()
    # the board's TensorRT upgraded (10.3.0 -> 10.3.1, which the target still accepts): rebuilt, nothing reused
    upgraded = board_python(tmp_path / "upgraded", path=(fake_gpu_dir(tmp_path, "10.3.1"),))
    moved = deploy(models, target, tmp_path / "upgraded-run", board, upgraded)
    assert moved.engine_cache == {"dense": "miss", "pruned": "miss"} and moved.stack["tensorrt"] == "10.3.1"
    assert len(list(slots.glob("*/*.plan"))) == 4
    assert Path(json.loads((tmp_path / "upgraded-run" / "report.json").read_text())["run"]["engines"]["pruned"]
                ).read_bytes().startswith(b"fake-plan-10.3.1 FP16")


def test_a_family_resolves_to_the_member_whose_stack_the_board_has(capsys, tmp_path, models, board, fast_target):
    tdir = tmp_path / "targets"
    target_file(tmp_path, fast_target, tmp_path / "workdir", stack="<1.0").rename(tdir / "loopback-old.toml")
    target_file(tmp_path, fast_target, tmp_path / "workdir").rename(tdir / "loopback-cpu.toml")
    pruned, dense = models
    common = [str(pruned), "--baseline", str(dense), "--target", "loopback", "--targets-dir", str(tdir),
              "--data", "fashion-mnist", "--test-limit", "100"]
    remote = ["--host", board.alias, "--ssh-config", str(board.ssh_config), "--device-python", str(board_python(tmp_path))]
    # without --host nothing can be probed: the members, in one line
    one_line_error(main(["deploy", *common, "-o", str(tmp_path / "here")]), capsys.readouterr(),
                   "target 'loopback' is a family: loopback-cpu, loopback-old — name one")
    assert main(["deploy", *common, "-o", str(tmp_path / "run"), *remote, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["target"] == "loopback-cpu" and doc["device"]["host"] == "board"
    # no member matches: why each does not, in one line
    (tdir / "loopback-cpu.toml").rename(tdir / "other.toml")
    (tdir / "loopback-new.toml").write_text((tdir / "loopback-old.toml").read_text().replace('"<1.0"', '">=99"'))
    err = one_line_error(main(["deploy", *common, "-o", str(tmp_path / "run2"), *remote]), capsys.readouterr(),
                         "no member of family 'loopback' matches board")
    assert "loopback-new: onnxruntime" in err and "loopback-old: onnxruntime" in err and "outside '<1.0'" in err
