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
