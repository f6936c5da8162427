"""The commands as people type them (issue 12, part 3): compress without -o, each method's own schedule
and budget, a help generated from the method registry, a target family named instead of a board."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeprune import api
from edgeprune.cli import main
from edgeprune.model_io import load_model
from edgeprune.pruning.base import PruneSpec, available_methods, method_class

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """A small MLP (64-32-16-10) trained on digits: the data set it records is the one compress uses."""
    out = tmp_path_factory.mktemp("typed") / "model.pt"
    api.train("zoo:lenet300", out, data=api.DataOptions("digits"), epochs=8, lr=1e-2,
              arch_kwargs={"hidden": [32, 16]}, progress=False)
    return out


def test_compress_as_typed_writes_model_activation_pt_with_the_gated_schedule(capsys, digits_model):
    out = digits_model.with_name("model.activation.pt")
    code, text, err = run(capsys, "compress", digits_model, "--method", "activation")
    assert code == 0, err
    assert f"wrote {out}" in " ".join(text.split())
    meta = load_model(out).checkpoint.meta
    # the method's own schedule and budget: gated cycles, dead neurons physically removed, 14 epochs
    assert (meta["schedule"], meta["finetune_epochs"]) == ("gated", 14.0)
    numel = {p: sum(t.numel() for t in load_model(p).model.parameters()) for p in (digits_model, out)}
    assert meta["details"]["removed_units"] and numel[out] < numel[digits_model]   # neurons gone, not zeroed
    assert meta["val_accuracy"] > meta["dense_val_accuracy"] - 5
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    code, text, err = run(capsys, "compress", digits_model, "--method", "activation")
    assert code == 2 and err == f"error: output {out} exists (use --force to overwrite)\n"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    code, text, err = run(capsys, "compress", digits_model, "--finetune-epochs", "0", "--force")
    assert code == 0 and digits_model.with_name("model.magnitude.pt").exists()
    code, text, err = run(capsys, "compress", digits_model, "--method", "activation", "--finetune-epochs", "0",
                          "--force", "--json")
    assert code == 0 and json.loads(text)["path"] == str(out) and hashlib.sha256(out.read_bytes()).hexdigest() != before


def test_an_explicit_schedule_wins_over_the_methods_own(capsys, digits_model, tmp_path):
    code, text, err = run(capsys, "compress", digits_model, "--method", "activation", "--schedule", "oneshot",
                          "--finetune-epochs", "0", "-o", tmp_path / "o.pt", "--json")
    r = json.loads(text)
    assert code == 0 and r["schedule"] == "oneshot" and "events" not in r["details"]
    assert r["macs_after"] == r["macs_before"]   # one-shot zeroes weights, removes nothing


def test_each_method_declares_its_defaults():
    spec = PruneSpec(method="activation")
    spec.validate()
    assert spec.schedule == "gated" and method_class("activation").default_finetune_epochs == 14.0
    for name in set(available_methods()) - {"activation"}:
        spec = PruneSpec(method=name)
        spec.validate()
        assert spec.schedule == method_class(name).default_schedule == "oneshot", name


def test_compress_help_lists_every_registered_method_from_the_registry(tmp_path):
    """A method registered from outside the package shows up in `compress --help`: the list is generated."""
    (tmp_path / "mymethods.py").write_text(textwrap.dedent("""
        from edgeprune.pruning.base import Method, register

        @register
        class Thirsty(Method):
            name = "thirsty"
            default_schedule = "iterative"
            default_finetune_epochs = 3.0

            def score(self, model, stats):
                return {}
    """))
    code = "import sys, mymethods; from edgeprune.cli import main; sys.exit(main(['compress', '--help']))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), str(REPO),
                                                                     os.environ.get("PYTHONPATH")])),
           "COLUMNS": "400"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    help_text = " ".join(p.stdout.split())
    assert p.returncode == 0, p.stderr
    for name in available_methods():
        assert f"{name} ({method_class(name).default_schedule}," in help_text, name
    assert "thirsty (iterative, 3 epochs)" in help_text and "activation (gated, 14 epochs)" in help_text


@pytest.mark.parametrize("family, members", [
    ("jetson", "jetson-agx-orin, jetson-agx-xavier, jetson-nano, jetson-orin-nano, jetson-orin-nx, jetson-xavier-nx"),
    ("raspberry-pi", "raspberry-pi-4, raspberry-pi-5"),
])
def test_a_family_name_lists_its_members_in_one_line(capsys, tmp_path, family, members):
    code, _, err = run(capsys, "deploy", tmp_path / "model.pt", "--target", family, "-o", tmp_path / "run")
    assert code == 2 and err == f"error: target '{family}' is a family: {members} — name one\n"
    code, _, err = run(capsys, "deploy", tmp_path / "model.pt", "--target", "jets", "-o", tmp_path / "run")
    assert code == 2 and err.startswith("error: unknown target 'jets' (available: ")


def test_a_users_own_board_joins_its_family(tmp_path):
    from edgeprune.errors import UnknownNameError
    from edgeprune.targets import load_target

    (tmp_path / "jetson-lab-7.toml").write_text("# only its name matters to the family\n")
    with pytest.raises(UnknownNameError, match="jetson-agx-xavier, jetson-lab-7, jetson-nano"):
        load_target("jetson", tmp_path)
