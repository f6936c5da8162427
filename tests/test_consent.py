"""A checkpoint received from someone else cannot make edgeprune import or call anything unless the
user said yes on the command line (--arch REF or --trust-code); zoo: names need no consent."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from edgeprune.cli import main
from edgeprune.errors import InputError, UnsafeFileError
from edgeprune.model_io import ArchRef, Consent, load_model, new_checkpoint, save_checkpoint
from edgeprune.zoo import build_zoo

DIGITS = ["--data", "digits"]


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A folder on sys.path holding a harmful module and a real factory module, and a trained-shape
    digits LeNet-5 checkpoint to tamper with. The marker file is what harm would create."""
    marker = tmp_path / "PWNED"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make(**kw):\n    return None\n")
    (tmp_path / "goodmod.py").write_text(textwrap.dedent("""
        from edgeprune.zoo import build_zoo
        def make(**kw):
            return build_zoo("lenet5", **kw)
        def not_a_model(**kw):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("evilmod", "goodmod"):
        sys.modules.pop(name, None)
    torch.manual_seed(0)
    model = build_zoo("lenet5", image_size=8)
    path = tmp_path / "model.pt"
    save_checkpoint(new_checkpoint(model, ArchRef("zoo:lenet5", {"image_size": 8}), (1, 8, 8), {"data": "digits"}),
                    path)
    return tmp_path, marker, path


def tamper(path, out, ref, kwargs):
    """What a stranger sending a file does: the issue's recipe."""
    ck = torch.load(path, weights_only=True)
    ck["arch"] = {"ref": ref, "kwargs": kwargs}
    torch.save(ck, out)
    return out


def payloads(marker):
    return {
        "os:system": {"command": f"touch {marker}"},
        "subprocess:run": {"args": ["touch", str(marker)]},
        "builtins:exec": {"source": f"open({str(marker)!r}, 'w').close()"},
        "evilmod:make": {"image_size": 8},
    }


def commands(f, tmp_path):
    """Every command that opens a checkpoint, as a user types it."""
    return {
        "compress": ["compress", f, "-o", tmp_path / "o.pt", "--finetune-epochs", "0", *DIGITS],
        "export": ["export", f, "-o", tmp_path / "o.onnx", *DIGITS],
        "deploy": ["deploy", f, "--baseline", f, "-o", tmp_path / "run", *DIGITS],
        "analyze": ["analyze", f, "--baseline", f, *DIGITS],
        "limit": ["limit", f, *DIGITS],
        "check-sparsity": ["check-sparsity", f],
    }


def run(capsys, argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("ref", ["os:system", "subprocess:run", "builtins:exec", "evilmod:make"])
def test_no_command_runs_what_a_checkpoint_names(capsys, workspace, ref):
    tmp_path, marker, path = workspace
    f = tamper(path, tmp_path / "shared_model.pt", ref, payloads(marker)[ref])
    for name, argv in commands(f, tmp_path).items():
        code, err = run(capsys, argv)
        assert code == 2, name
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, (name, err)
        assert f"'{ref}'" in err and "--trust-code" in err and f"--arch {ref}" in err, (name, err)
        assert not marker.exists(), f"{name} ran {ref}"
    assert "evilmod" not in sys.modules            # not even imported
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.onnx").exists()


def test_a_real_factory_opens_with_either_consent(capsys, workspace):
    tmp_path, marker, path = workspace
    f = tamper(path, tmp_path / "factory.pt", "goodmod:make", {"image_size": 8})
    code, err = run(capsys, ["export", f, "-o", tmp_path / "a.onnx", *DIGITS])
    assert code == 2 and "--arch goodmod:make" in err and not (tmp_path / "a.onnx").exists()
    assert main([str(a) for a in ["export", f, "-o", tmp_path / "a.onnx", *DIGITS, "--arch", "goodmod:make"]]) == 0
    assert main([str(a) for a in ["export", f, "-o", tmp_path / "b.onnx", *DIGITS, "--trust-code"]]) == 0
    assert (tmp_path / "a.onnx").stat().st_size > 0 and (tmp_path / "b.onnx").stat().st_size > 0
    # consent to one reference is not consent to another
    code, err = run(capsys, ["export", f, "-o", tmp_path / "c.onnx", *DIGITS, "--arch", "othermod:make"])
    assert code == 2 and "goodmod:make" in err and "othermod:make" in err
    # a pruned checkpoint keeps its base reference, and so needs the same consent
    pruned = tmp_path / "pruned.pt"
    assert main([str(a) for a in ["compress", f, "-o", pruned, "--finetune-epochs", "0", *DIGITS,
                                  "--arch", "goodmod:make", "--json"]]) == 0
    capsys.readouterr()
    code, err = run(capsys, ["check-sparsity", pruned])
    assert code == 2 and "goodmod:make" in err
    assert main([str(a) for a in ["check-sparsity", pruned, "--arch", "goodmod:make", "--json"]]) == 0
    assert not marker.exists()


def test_a_factory_returning_a_non_module_is_a_one_line_error(capsys, workspace):
    tmp_path, _, path = workspace
    f = tamper(path, tmp_path / "int.pt", "goodmod:not_a_model", {})
    for name, argv in commands(f, tmp_path).items():
        code, err = run(capsys, [*argv, "--trust-code"])
        assert code == 2 and err.count("\n") == 1 and "not a torch.nn.Module" in err, (name, err)


def test_python_api_takes_the_same_consent(workspace):
    tmp_path, marker, path = workspace
    f = tamper(path, tmp_path / "factory.pt", "goodmod:make", {"image_size": 8})
    with pytest.raises(UnsafeFileError, match="--trust-code"):
        load_model(f)
    x = torch.rand(2, 1, 8, 8)
    a = load_model(f, Consent(arch="goodmod:make")).model
    b = load_model(f, Consent(code=True)).model
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), load_model(path).model(x))   # same weights either way
    with pytest.raises(InputError, match="othermod:make"):
        load_model(f, Consent(arch="othermod:make"))
    evil = tamper(path, tmp_path / "evil.pt", "os:system", {"command": f"touch {marker}"})
    with pytest.raises(UnsafeFileError):
        load_model(evil, Consent(pickle=True))   # --trust-pickle is not --trust-code
    assert not marker.exists()


def test_the_issue_recipe_in_a_fresh_process(workspace):
    """The exact attack from the report, through the installed entry point in its own process."""
    tmp_path, marker, path = workspace
    f = tamper(path, tmp_path / "shared_model.pt", "os:system", {"command": f"touch {marker}"})
    for argv in (["compress", str(f), "-o", str(tmp_path / "o.pt"), *DIGITS],
                 ["export", str(f), "-o", str(tmp_path / "o.onnx")]):
        p = subprocess.run([sys.executable, "-c", "import sys; from edgeprune.cli import main; sys.exit(main())", *argv],
                           capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not marker.exists()
