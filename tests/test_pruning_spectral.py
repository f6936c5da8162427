"""Adaptive spectral density shaping (edgeprune/pruning/spectral.py) on a LeNet-5 trained on Fashion-MNIST."""

import json
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from edgeprune.cli import main
from edgeprune.errors import InputError
from edgeprune.model_io import load_model
from edgeprune.pruning import PruneSpec, get_method, prune
from edgeprune.pruning.spectral import channel_factors, flatness_report, radial_spectra
from edgeprune.pruning.structured import ScoreImportance

DATA = ["--data", "fashion-mnist", "--limit", "1000"]


@pytest.fixture(scope="module")
def lenet5(lenet5_ckpt, fmnist_small):
    """The shared LeNet-5 trained on 3000 Fashion-MNIST images, and 1024 calibration images."""
    path = lenet5_ckpt
    train, _ = fmnist_small.train_val()
    calib = [torch.from_numpy(train.x[i:i + 256]) for i in range(0, 1024, 256)]
    return path, calib


def pruned(path, calib, spec, finetune=None):
    loaded = load_model(path)
    model = loaded.model
    result = prune(model, spec, loaded.example_input, finetune=finetune, batches=calib)
    return model, result


def test_a_pure_cosine_peaks_at_its_radial_frequency():
    # An identity 1x1 conv passes the images through, so its output spectrum is theirs.
    conv = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    for ky, kx in ((0, 3), (3, 4), (5, 0)):   # cycles per 16 px: radius 3, 5, 5
        maps = torch.cos(2 * math.pi * (ky * yy + kx * xx) / 16) + 2.0   # + DC, which must not count
        spectrum = radial_spectra(conv, [maps.expand(4, 1, 16, 16)])[""]   # the root module's name
        _, peak = channel_factors(spectrum, 0.5, 1.0)
        assert peak == round(math.hypot(ky, kx))
        assert spectrum[0, 0] < 1e-6 * spectrum.sum()   # per-map mean removed


def test_attenuation_zero_gives_layerwise_magnitude_masks_exactly(lenet5):
    path, calib = lenet5
    for sparsity in (0.5, 0.75, 0.9):
        _, spectral = pruned(path, calib, PruneSpec("spectral", sparsity, options={"attenuation": 0.0}))
        _, magnitude = pruned(path, calib, PruneSpec("magnitude", sparsity, scope="layer"))
        assert spectral.masks.keys() == magnitude.masks.keys()
        assert all(torch.equal(spectral.masks[n], magnitude.masks[n]) for n in spectral.masks)


def test_default_scope_is_per_layer_and_an_explicit_global_is_kept(lenet5):
    path, calib = lenet5
    spec = PruneSpec("spectral", 0.75)
    _, result = pruned(path, calib, spec)
    assert spec.scope == "layer"
    for name, mask in result.masks.items():   # every layer at the target, to within one weight
        assert abs(int((~mask).sum()) - 0.75 * mask.numel()) <= 1, name
    explicit = PruneSpec("spectral", 0.75, scope="global")
    _, result = pruned(path, calib, explicit)
    assert explicit.scope == "global"
    assert len({round(float((~m).float().mean()), 2) for m in result.masks.values()}) > 1
    other = PruneSpec("magnitude")
    other.validate()
    assert other.scope == "global"


def test_attenuation_prunes_channels_with_energy_at_the_peak_harder(lenet5):
    path, calib = lenet5
    dense = load_model(path).model
    spectra = radial_spectra(dense, calib)
    _, magnitude = pruned(path, calib, PruneSpec("magnitude", 0.75, scope="layer"))
    _, spectral = pruned(path, calib, PruneSpec("spectral", 0.75, options={"attenuation": 1.0, "width": 1.0}))
    for name in ("features.0", "features.3"):
        m, _ = channel_factors(spectra[name], 1.0, 1.0)   # low m = high share at the peak
        kept_mag = magnitude.masks[name].flatten(1).sum(1).double()
        kept_spec = spectral.masks[name].flatten(1).sum(1).double()
        assert kept_spec.sum() == kept_mag.sum()   # same per-layer budget
        shift = kept_spec - kept_mag
        assert torch.corrcoef(torch.stack([m, shift]))[0, 1] > 0.5, name
        assert (m * kept_spec).sum() > (m * kept_mag).sum()
    # Linear layers have no spatial spectrum: plain magnitude there
    for name in ("classifier.1", "classifier.3", "classifier.5"):
        assert torch.equal(spectral.masks[name], magnitude.masks[name])


def test_flatness_is_reported_before_and_after_and_spectra_are_remeasured_each_step(lenet5):
    path, calib = lenet5
    calls = []
    model, result = pruned(path, calib, PruneSpec("spectral", 0.9, schedule="iterative", steps=3),
                           finetune=lambda m, masks, share: calls.append(share))
    flat = result.details["flatness"]
    assert set(flat["before"]["layers"]) == set(flat["after"]["layers"]) == {"features.0", "features.3"}
    for report in (flat["before"], flat["after"]):
        assert all(0 < v <= 1 for v in report["layers"].values())
    assert flat["after"] == flatness_report(radial_spectra(model, calib))   # measured on the final model
    rounds = [r["flatness"] for r in result.details["rounds"]]
    assert len(rounds) == len(calls) == 3 and rounds[0] == flat["before"]["overall"]
    assert len(set(rounds)) == 3   # each step measured the model as pruned so far
    assert "spectral flatness" in result.details["summary"]
    json.dumps(result.details)


def test_channel_variant_removes_filters_by_spectral_filter_score(lenet5):
    path, calib = lenet5
    spec = dict(granularity="channel", round_to=1, scope="layer")
    dense = load_model(path).model
    spectra = radial_spectra(dense, calib)
    plans = {a: pruned(path, calib, PruneSpec("spectral", 0.5, options={"attenuation": a, "width": 1.0}, **spec))[1].plan
             for a in (0.0, 1.0)}
    for a, plan in plans.items():
        removed = {step["layer"]: step["idxs"] for step in plan}
        for name in ("features.0", "features.3"):
            m, _ = channel_factors(spectra[name], a, 1.0)
            l1 = dict(dense.named_modules())[name].weight.detach().abs().flatten(1).sum(1).double()
            score = m * l1
            kept = [c for c in range(len(score)) if c not in removed[name]]
            assert removed[name] and score[removed[name]].max() <= score[kept].min(), (a, name)
    assert plans[0.0] != plans[1.0]
    model, _ = pruned(path, calib, PruneSpec("spectral", 0.5, **spec))
    assert model(torch.from_numpy(calib[0].numpy()[:2])).shape == (2, 10)   # compacted and still runs


def test_a_residual_channel_is_scored_by_every_filter_that_writes_it(resnet_ckpt, fmnist_small):
    loaded = load_model(resnet_ckpt)
    model = loaded.model
    calib = [torch.from_numpy(fmnist_small.train_val()[0].x[:128])]
    method = get_method("spectral", attenuation=0.5)
    stats = method.collect(model, calib)
    filters = method.filter_scores(model, stats)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=loaded.example_input)
    group = next(g for g in graph.get_all_groups(ignored_layers=[model.fc], root_module_types=(nn.Conv2d,))
                 if any(item.dep.target.module is model.layers[0].conv2 for item in g))
    imp = ScoreImportance(method.score(model, stats), model, filter_scores=filters)(group)
    # stem and block 1's conv2 both write the 16 channels of the first residual stage
    torch.testing.assert_close(imp, filters["stem.0"] + filters["layers.0.conv2"])


@pytest.mark.parametrize("options", [{"attenuation": 1.5}, {"attenuation": -0.1}, {"width": 0}, {"images": 0},
                                     {"attenuation": float("nan")}, {"sigma": 1.0}])
def test_bad_options_are_user_errors(options):
    with pytest.raises(InputError):
        get_method("spectral", **options)


def test_no_calibration_images_is_a_user_error(lenet5):
    path, _ = lenet5
    with pytest.raises(InputError, match="calibration"):
        pruned(path, None, PruneSpec("spectral", 0.5))


def test_cli_compress_spectral(capsys, lenet5, tmp_path):
    path, _ = lenet5
    argv = ["compress", str(path), "--method", "spectral", "--sparsity", "0.75", "--attenuation", "0.5",
            "--width", "1.0", "--finetune-epochs", "0.1", *DATA]
    assert main([*argv, "-o", str(tmp_path / "a.pt"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["scope"] == "layer" and abs(r["sparsity"] - 0.75) < 0.01
    assert r["details"]["attenuation"] == 0.5 and r["details"]["width"] == 1.0
    assert r["details"]["flatness"]["after"]["overall"] > 0
    assert load_model(tmp_path / "a.pt").checkpoint.meta["details"] == r["details"]
    assert main([*argv, "-o", str(tmp_path / "b.pt")]) == 0
    assert "spectral flatness" in " ".join(capsys.readouterr().out.split())
    assert main([*argv[:7], "1.5", *argv[8:], "-o", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "attenuation" in err and "Traceback" not in err
