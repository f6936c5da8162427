import subprocess
import sys

import pytest
import torch

from edgeprune.errors import InputError, UnsafeFileError
from edgeprune.model_io import ArchRef, Consent, load_model, new_checkpoint, save_checkpoint
from edgeprune.zoo import build_zoo


def _ckpt(tmp_path, name="m.pt"):
    torch.manual_seed(0)
    model = build_zoo("lenet5", image_size=8)
    path = tmp_path / name
    save_checkpoint(new_checkpoint(model, ArchRef("zoo:lenet5", {"image_size": 8}), (1, 8, 8), {"data": "digits"}), path)
    return model.eval(), path


def test_checkpoint_round_trip_in_a_fresh_process(tmp_path):
    model, path = _ckpt(tmp_path)
    x = torch.rand(4, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    code = (f"import torch; from edgeprune.model_io import load_model; m = load_model(r'{path}').model; "
            f"x = torch.load(r'{tmp_path / 'x.pt'}'); torch.save(m(x), r'{tmp_path / 'y.pt'}')")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert torch.allclose(torch.load(tmp_path / "y.pt"), model(x))


def test_factory_reference_and_kwargs(tmp_path):
    ref = ArchRef("edgeprune.zoo:fc5", {"hidden": [20, 10], "image_size": 8})
    model = ref.build(Consent(arch="edgeprune.zoo:fc5"))
    save_checkpoint(new_checkpoint(model, ref, (1, 8, 8), {}), tmp_path / "f.pt")
    with pytest.raises(UnsafeFileError, match="--arch edgeprune.zoo:fc5"):
        load_model(tmp_path / "f.pt")   # a factory outside the zoo builds only with consent
    assert load_model(tmp_path / "f.pt", Consent(arch="edgeprune.zoo:fc5")).model[1].out_features == 20


def test_torchscript_and_torch_export_inputs(tmp_path):
    model, _ = _ckpt(tmp_path)
    x = torch.rand(3, 1, 8, 8)
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "ts.pt")
    with pytest.raises(InputError, match="--input-shape"):
        load_model(tmp_path / "ts.pt")
    ts = load_model(tmp_path / "ts.pt", input_shape=(1, 8, 8))
    assert ts.checkpoint.kind == "torchscript" and torch.allclose(ts.model(x), model(x))
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    ep = load_model(tmp_path / "m.pt2")
    assert ep.checkpoint.kind == "exported" and ep.checkpoint.input_shape == (1, 8, 8)
    assert torch.allclose(ep.model(x), model(x), atol=1e-6)


def test_full_pickle_needs_trust_pickle(tmp_path):
    model, _ = _ckpt(tmp_path)
    torch.save(model, tmp_path / "pickled.pt")
    with pytest.raises(UnsafeFileError, match="--trust-pickle"):
        load_model(tmp_path / "pickled.pt")
    loaded = load_model(tmp_path / "pickled.pt", Consent(pickle=True), input_shape=(1, 8, 8))
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(loaded.model(x), model(x))
    # a checkpoint built on a pickled base stays behind the flag
    save_checkpoint(loaded.checkpoint, tmp_path / "from_pickle.pt")
    with pytest.raises(UnsafeFileError):
        load_model(tmp_path / "from_pickle.pt")
    assert load_model(tmp_path / "from_pickle.pt", Consent(pickle=True)).checkpoint.kind == "pickle"


def test_bad_model_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="cannot read model file"):
        load_model(tmp_path / "junk.pt")
    model, path = _ckpt(tmp_path)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputError, match="bare state_dict"):
        load_model(tmp_path / "sd.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="cannot read model file"):
        load_model(truncated)


def test_save_refuses_to_overwrite_and_leaves_no_partial_file(tmp_path):
    model, path = _ckpt(tmp_path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="--force"):
        _ckpt(tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


# ---------------------------------------------------------------- models in (issue 12, part 1)
# Factories live in tests/tiny.py, as a user's own package would hold them; torchvision does not import here.
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from edgeprune import api  # noqa: E402
from edgeprune.cli import main  # noqa: E402
from edgeprune.pruning.base import PruneSpec  # noqa: E402
from edgeprune.training import evaluate  # noqa: E402
from tests import tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DIGITS = api.DataOptions("digits")


def test_a_factory_is_called_with_its_own_signature(tmp_path):
    """train passes in_channels / image_size / num_classes only where the factory takes them, then --arch-kwargs."""
    cases = {"tests.tiny:digits_mlp": ({"width": 24}, {"width": 24}),
             "tests.tiny:digits_cnn": ({"width": 12}, {"in_channels": 1, "num_classes": 10, "width": 12}),
             "tests.tiny:any_kwargs_mlp": ({}, {"in_channels": 1, "image_size": 8, "num_classes": 10})}
    for ref, (given, recorded) in cases.items():
        out = tmp_path / f"{ref.rsplit(':', 1)[1]}.pt"
        r = api.train(ref, out, data=DIGITS, epochs=3, lr=1e-2, arch_kwargs=given, progress=False)
        assert r.val_accuracy > 30, ref   # it trained (chance is 10 %)
        ck = load_model(out, Consent(arch=ref)).checkpoint
        assert ck.arch.kwargs == recorded, ref


def test_arch_kwargs_on_the_command_line(capsys, tmp_path):
    out = tmp_path / "m.pt"
    code = main(["train", "--arch", "tests.tiny:digits_mlp", "--arch-kwargs", '{"width": 12}', "--data", "digits",
                 "--epochs", "1", "-o", str(out), "--json"])
    assert code == 0 and load_model(out, Consent(arch="tests.tiny:digits_mlp")).model[1].out_features == 12
    for bad, why in (("{width: 12}", "must be a JSON object"), ("[12]", "got list"),
                     ('{"depth": 3}', "unexpected keyword argument 'depth'")):
        code = main(["train", "--arch", "tests.tiny:digits_mlp", "--arch-kwargs", bad, "--data", "digits",
                     "-o", str(tmp_path / "n.pt")])
        err = capsys.readouterr().err
        assert code == 2 and why in err and err.count("\n") == 1, err
    assert not (tmp_path / "n.pt").exists()


@pytest.fixture(scope="module")
def digits_state(tmp_path_factory):
    """A trained tests.tiny:digits_mlp(width=24), its state_dict saved bare, and the model to compare with."""
    d = tmp_path_factory.mktemp("state")
    api.train("tests.tiny:digits_mlp", d / "full.pt", data=DIGITS, epochs=4, lr=1e-2, arch_kwargs={"width": 24},
              progress=False)
    model = load_model(d / "full.pt", Consent(arch="tests.tiny:digits_mlp")).model
    torch.save(model.state_dict(), d / "sd.pt")
    return d, model


def test_a_state_dict_and_its_wrappers_load_with_arch(digits_state):
    d, model = digits_state
    state = model.state_dict()
    wrappers = {"bare": state, "lightning": {"state_dict": state, "epoch": 3, "hparams": {"lr": 0.1}},
                "model": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
                "ddp": {f"module.{k}": v for k, v in state.items()}}
    x = torch.rand(5, 1, 8, 8)
    consent = Consent(arch="tests.tiny:digits_mlp")
    for name, obj in wrappers.items():
        torch.save(obj, d / f"{name}.pt")
        loaded = load_model(d / f"{name}.pt", consent, input_shape=(1, 8, 8), arch_kwargs={"width": 24})
        assert torch.equal(loaded.model(x), model(x)), name
        assert (loaded.checkpoint.arch.ref, loaded.checkpoint.arch.kwargs) == ("tests.tiny:digits_mlp", {"width": 24})
    with pytest.raises(InputError, match="--arch package.module:factory"):
        load_model(d / "sd.pt", input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="--input-shape"):
        load_model(d / "sd.pt", consent)
    with pytest.raises(InputError, match="--arch-kwargs is for a bare state_dict"):
        load_model(d / "full.pt", consent, arch_kwargs={"width": 24})


def _cli(*argv, cwd):
    """edgeprune in its own process: what was built must rebuild from the file alone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "edgeprune", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_state_dict_compress_then_export_in_fresh_processes(digits_state, tmp_path):
    d, model = digits_state
    arch = ["--arch", "tests.tiny:digits_mlp"]
    p = _cli("compress", d / "sd.pt", *arch, "--arch-kwargs", '{"width": 24}', "--input-shape", "1,8,8",
             "--data", "digits", "--sparsity", "0.5", "--granularity", "channel", "--round-to", "4",
             "--finetune-epochs", "1", "-o", tmp_path / "p.pt", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["layers"][0]["shape"][0] < 24 and r["finetuned_val_accuracy"] > 50   # channels gone, still a classifier
    p = _cli("export", tmp_path / "p.pt", "-o", tmp_path / "p.onnx", cwd=tmp_path)   # no consent: refused
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--arch tests.tiny:digits_mlp" in p.stderr
    p = _cli("export", tmp_path / "p.pt", *arch, "-o", tmp_path / "p.onnx", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    parity = json.loads(p.stdout)["parity"]
    assert parity["samples"] > 100 and parity["max_abs_diff"] < 1e-4
    rebuilt = load_model(tmp_path / "p.pt", Consent(arch="tests.tiny:digits_mlp")).model
    assert rebuilt[1].out_features == r["layers"][0]["shape"][0]


def test_deploy_builds_a_state_dict_baseline_with_the_recorded_arguments(digits_state, tmp_path, fast_target):
    """compress took --arch-kwargs for the bare state_dict; deploy's default baseline (that same file) is
    built with them again: the dense model profiled is the trained one, not a width-16 default."""
    d, model = digits_state
    consent = Consent(arch="tests.tiny:digits_mlp")
    pruned = api.compress(d / "sd.pt", PruneSpec(method="magnitude", sparsity=0.5), tmp_path / "p.pt",
                          finetune_epochs=0, data=DIGITS, consent=consent, input_shape=(1, 8, 8),
                          arch_kwargs={"width": 24}, progress=False)
    report = api.deploy(pruned.path, str(fast_target), tmp_path / "run", consent=consent, progress=False)
    test = DIGITS.test()
    assert report.dense.accuracy == pytest.approx(evaluate(model, test), abs=1e-6)


def test_a_wrong_arch_for_a_state_dict_is_one_line(capsys, digits_state, tmp_path):
    d, _ = digits_state
    for argv, why in ((["--arch", "tests.tiny:digits_mlp", "--arch-kwargs", '{"width": 16}'], "size mismatch"),
                      (["--arch", "zoo:lenet300"], "Missing key"),
                      (["--arch", "tests.tiny:digits_mlp"], "do not fit tests.tiny:digits_mlp with {}")):
        code = main(["compress", str(d / "sd.pt"), *argv, "--input-shape", "1,8,8", "--data", "digits",
                     "-o", str(tmp_path / "x.pt")])
        err = capsys.readouterr().err
        assert code == 2 and why in err and err.count("\n") == 1 and "--arch-kwargs" in err, err
    assert not (tmp_path / "x.pt").exists()


def test_several_inputs_or_integer_inputs_are_one_line(tmp_path):
    torch.save(tiny.TwoInputs().state_dict(), tmp_path / "two.pt")
    with pytest.raises(InputError, match=r"takes 2 inputs \(image, mask\): edgeprune supports models with one "
                                         "floating-point tensor input"):
        load_model(tmp_path / "two.pt", Consent(arch="tests.tiny:TwoInputs"), input_shape=(1, 8, 8))
    torch.jit.save(torch.jit.script(tiny.TwoInputs()), tmp_path / "two.ts")
    with pytest.raises(InputError, match=r"takes 2 inputs \(image, mask\)"):
        load_model(tmp_path / "two.ts", input_shape=(1, 8, 8))
    torch.save(tiny.Tokens().state_dict(), tmp_path / "tokens.pt")
    with pytest.raises(InputError, match="takes integer inputs \\(its first layer 'embed' is an Embedding\\)"):
        load_model(tmp_path / "tokens.pt", Consent(arch="tests.tiny:Tokens"), input_shape=(16,))
    ep = torch.export.export(tiny.Tokens(), (torch.zeros(1, 16, dtype=torch.long),))
    torch.export.save(ep, tmp_path / "tokens.pt2")
    with pytest.raises(InputError, match="takes a torch.int64 input 'ids'"):
        load_model(tmp_path / "tokens.pt2")
