"""A wheel built from the source tree carries the data files edgeprune finds with importlib.resources."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO, SHIPPED


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edgeprune", src / "edgeprune", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("edgeprune-*.whl")
    with zipfile.ZipFile(path) as z:
        yield z


def test_the_wheel_ships_every_target_and_the_calibration_set(wheel):
    wheel_files = set(wheel.namelist())
    targets = {p.name for p in (SHIPPED / "targets").glob("*.toml")}
    assert len(targets) == 10
    assert {f"edgeprune/shipped/targets/{t}" for t in targets} <= wheel_files
    assert {"edgeprune/shipped/calibration/fmnist.npz", "edgeprune/shipped/calibration/make_calibration.py",
            "edgeprune/shipped/__init__.py", "edgeprune/__main__.py"} <= wheel_files
    assert {"edgeprune/bench/templates/report.html.j2", "edgeprune/bench/templates/report.md.j2"} <= wheel_files


def test_the_wheel_declares_the_script_the_extras_and_bounded_dependencies(wheel):
    names = wheel.namelist()
    assert not any(f.startswith(("targets/", "calibration/", "tests/", "benchmarks/")) for f in names)
    info = next(f.rsplit("/", 1)[0] for f in names if f.endswith(".dist-info/METADATA"))
    assert "edgeprune = edgeprune.cli:main" in wheel.read(f"{info}/entry_points.txt").decode()
    meta = wheel.read(f"{info}/METADATA").decode().splitlines()
    assert {"Provides-Extra: tensorrt", "Provides-Extra: device", "Provides-Extra: dev"} <= set(meta)
    required = [ln.split(":", 1)[1].strip() for ln in meta if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert any(r.startswith("torch") for r in required)
    assert all("<" in r and ">=" in r for r in required), required   # tested lower bound, next-major cap
    device = [ln for ln in meta if ln.startswith("Requires-Dist:") and 'extra == "device"' in ln]
    assert device and not any("torch" in ln for ln in device)
