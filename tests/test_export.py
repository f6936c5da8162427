import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeprune import api
from edgeprune.errors import InputError, ParityError
from edgeprune.export import export, parity_check, to_onnx_model
from edgeprune.model_io import Consent, load_model


def test_export_matches_pytorch_on_real_inputs_with_dynamic_batch(tmp_path, lenet300_ckpt, fmnist_small):
    loaded = load_model(lenet300_ckpt)
    x = fmnist_small.test().x[:64]
    r = export(loaded, tmp_path / "m.onnx", check_inputs=x)
    assert r.parity.top1_agreement == 1.0 and r.parity.max_abs_diff < 1e-4
    model = onnx.load(r.path)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 64):   # the batch dimension is dynamic
        out = sess.run(None, {"input": x[:batch]})[0]
        assert out.shape == (batch, 10)
        assert np.allclose(out, loaded.model(torch.from_numpy(x[:batch])).detach().numpy(), atol=1e-4)


def test_metadata_names_method_sparsity_and_source(tmp_path, lenet300_ckpt, fmnist_small):
    pruned = tmp_path / "p.pt"
    from edgeprune.pruning.base import PruneSpec

    api.compress(lenet300_ckpt, PruneSpec(sparsity=0.7), pruned, data=fmnist_small, finetune_epochs=0, progress=False)
    r = export(load_model(pruned), tmp_path / "p.onnx")
    props = {p.key: p.value for p in onnx.load(r.path).metadata_props}
    assert props["edgeprune.method"] == "magnitude"
    assert abs(float(props["edgeprune.sparsity"]) - 0.7) < 1e-3
    assert props["edgeprune.source_sha256"] == load_model(pruned).checkpoint.meta["source_sha256"]
    assert props["edgeprune.arch"] == "zoo:lenet300"
    # what the model expects to be fed: the checkpoint's data set, its input shape and preprocessing
    assert props["edgeprune.data"] == "fashion-mnist" and props["edgeprune.input_shape"] == "1,28,28"
    assert props["edgeprune.preprocess"] == ("uint8 pixels / 255 -> float32 N x C x H x W in [0, 1]; "
                                             "no mean/std normalization")


def test_a_model_file_without_a_data_set_records_the_one_given(tmp_path, lenet300_ckpt):
    scripted = tmp_path / "m.ts"
    torch.jit.script(load_model(lenet300_ckpt).model).save(str(scripted))
    for data, want in ((None, None), ("mnist", "mnist")):
        out = tmp_path / f"{data}.onnx"
        api.export(scripted, out, input_shape=(1, 28, 28), check=False,
                   data=api.DataOptions(data) if data else None)
        props = {p.key: p.value for p in onnx.load(out).metadata_props}
        assert props.get("edgeprune.data") == want and ("edgeprune.preprocess" in props) == bool(want)


def test_residual_cnn_exports_with_parity(tmp_path, resnet_ckpt, fmnist_small):
    loaded = load_model(resnet_ckpt)
    r = export(loaded, tmp_path / "r.onnx", check_inputs=fmnist_small.test().x[:32])
    assert r.parity.ok and r.size_bytes == (tmp_path / "r.onnx").stat().st_size


def test_opsets_below_what_the_dynamo_exporter_reaches_are_honoured(tmp_path, resnet_ckpt, fmnist_small):
    # The dynamo exporter cannot bring BatchNormalization below opset 18 and used to keep 18 silently.
    loaded = load_model(resnet_ckpt)
    for opset in (13, 16):
        r = export(loaded, tmp_path / f"r{opset}.onnx", opset=opset, check_inputs=fmnist_small.test().x[:32])
        model = onnx.load(r.path)
        assert r.opset == opset and r.parity.ok
        assert [i.version for i in model.opset_import if i.domain == ""] == [opset]
        onnx.checker.check_model(model, full_check=True)


def test_parity_check_fails_loudly_when_onnx_disagrees(tmp_path, lenet300_ckpt, fmnist_small):
    loaded = load_model(lenet300_ckpt)
    proto = to_onnx_model(loaded.model, (1, 28, 28))
    for init in proto.graph.initializer:          # corrupt the exported weights
        if len(init.dims) == 2:
            arr = onnx.numpy_helper.to_array(init) * -1.0
            init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
            break
    p = parity_check(loaded.model, proto.SerializeToString(), fmnist_small.test().x[:64])
    assert not p.ok and p.top1_agreement < 0.9


def test_export_refuses_existing_output_and_keeps_it(tmp_path, lenet300_ckpt):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(InputError, match="--force"):
        export(load_model(lenet300_ckpt), out)
    assert out.read_bytes() == b"keep me"


def test_parity_error_is_a_user_error():
    assert issubclass(ParityError, Exception) and ParityError.__mro__[1].__name__ == "EdgepruneError"


UNEXPORTABLE = "tests.tiny:Unexportable"   # outside the zoo: opening it takes --arch (consent)


def _unexportable_ckpt(path):
    from edgeprune.model_io import ArchRef, new_checkpoint, save_checkpoint

    ref = ArchRef(UNEXPORTABLE, {})
    save_checkpoint(new_checkpoint(ref.build(Consent(arch=UNEXPORTABLE)), ref, (1, 28, 28), {"method": "dense", "data": "fashion-mnist"}), path)
    return path


@pytest.mark.parametrize("opset", [17, 13])   # the dynamo exporter, and the TorchScript one below 18
def test_an_operator_without_onnx_translation_is_a_user_error_naming_it(tmp_path, opset):
    loaded = load_model(_unexportable_ckpt(tmp_path / "z.pt"), Consent(arch=UNEXPORTABLE))
    with pytest.raises(InputError, match=r"operator '(prims\.zeta|aten::special_zeta)' has no ONNX translation"):
        export(loaded, tmp_path / "z.onnx", opset=opset)
    assert not (tmp_path / "z.onnx").exists()


def test_a_model_that_does_not_run_on_its_input_shape_is_a_shape_error(tmp_path, lenet300_ckpt):
    from edgeprune.errors import ShapeError

    with pytest.raises(ShapeError, match=r"does not run on inputs of shape \(1, 14, 14\)"):
        to_onnx_model(load_model(lenet300_ckpt).model, (1, 14, 14))


def test_a_bug_inside_the_export_is_not_turned_into_a_user_error(tmp_path, lenet300_ckpt, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("edgeprune bug")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(KeyError, match="edgeprune bug"):
        export(load_model(lenet300_ckpt), tmp_path / "m.onnx")
