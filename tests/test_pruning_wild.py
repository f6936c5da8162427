"""Architectures from the wild (tests/wild_models.py) through every method and granularity: each
prunes for real and still runs, or refuses in one line naming the layer it cannot handle."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune import api
from edgeprune.errors import EdgepruneError
from edgeprune.model_io import ArchRef, Consent, new_checkpoint, save_checkpoint
from edgeprune.pruning import PruneSpec, available_methods, prune, sparsity_report
from edgeprune.pruning.activation import ActivationCounter
from tests.wild_models import MODELS

REPO = Path(__file__).resolve().parents[1]
GRANULARITIES = ("weight", "channel", "2:4")
# What each model cannot take, and the layer the refusal must name.
REFUSED = {("grouped", "channel"): "grouped", ("vit", "channel"): "attn"}


def _build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    model = factory(width=8) if name == "resnet18" else factory()
    return model.eval(), torch.rand(4, *shape, generator=torch.Generator().manual_seed(seed))


def _prune_or_refuse(name: str, method: str, granularity: str) -> None:
    model, x = _build(name)
    before = sparsity_report(model, x[:1])
    dense_out = model(x)
    # the pruning layer's one-shot step for every method (activation's own default, the gated
    # schedule, trains while it prunes and runs through api.compress)
    spec = PruneSpec(method=method, granularity=granularity, sparsity=0.5, round_to=1, schedule="oneshot")
    refused = REFUSED.get((name, granularity))
    if refused:
        with pytest.raises(EdgepruneError) as err:
            prune(model, spec, x[:1], batches=[x])
        message = str(err.value)
        assert "\n" not in message and refused in message
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Torch-Pruning's note on the ViT's position embedding
        result = prune(model, spec, x[:1], batches=[x])
    out = model(x)
    assert out.shape == dense_out.shape and torch.isfinite(out).all()
    after = sparsity_report(model, x[:1])
    removed = 1.0 - after.nonzero / before.total
    # Never silently dense: half the prunable weights go (2:4 leaves layers whose reduction is not a
    # multiple of 4 dense, and names them); channel pruning also shrinks the executed MACs.
    if granularity == "2:4":
        assert removed > 0.35 and all("multiple of 4" in why for why in result.details["2:4 dense layers"].values())
    else:
        assert 0.45 < removed < 0.55, removed
    if granularity == "channel":
        assert after.macs < 0.9 * before.macs and result.plan


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("name", ["mobilenet", "grouped", "vit", "segnet"])
def test_every_method_prunes_or_refuses_in_one_line(name, granularity):
    for method in available_methods():
        _prune_or_refuse(name, method, granularity)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_resnet18_at_224_takes_every_method(granularity):
    for method in available_methods():
        _prune_or_refuse("resnet18", method, granularity)


def test_attention_projections_count_as_prunable_weights():
    model, x = _build("vit")
    report = sparsity_report(model, x[:1])
    names = {layer.name: layer for layer in report.layers}
    attn = model.blocks[0].attn
    assert names["blocks.0.attn"].total == attn.in_proj_weight.numel() == 3 * 64 * 64
    assert "blocks.0.attn.out_proj" in names
    prune(model, PruneSpec(method="magnitude", sparsity=0.5), x[:1])
    # the packed q/k/v projection is pruned like any Linear weight, not skipped
    assert 0.2 < float((attn.in_proj_weight == 0).float().mean()) < 0.8
    assert 1.0 - sparsity_report(model, x[:1]).nonzero / report.total == pytest.approx(0.5, abs=1e-3)


def test_activation_counts_token_units_on_their_last_axis():
    model, x = _build("vit")
    counter = ActivationCounter(model, x[:1])
    try:
        counter.count(model, [x])
    finally:
        counter.remove()
    tokens = (32 // 8) ** 2
    # fc1 has 128 units, each seen once per (image, token); an attention's q/k/v rows likewise
    assert counter.active["blocks.0.fc1"].shape == (128,) and counter.chances["blocks.0.fc1"] == 4 * tokens
    assert counter.active["blocks.0.attn"].shape == (192,) and counter.chances["blocks.0.attn"] == 4 * tokens
    with torch.no_grad():
        h = model.blocks[0].fc1(_tokens_before_fc1(model, x))
    assert torch.equal(counter.active["blocks.0.fc1"], (h > 0).reshape(-1, 128).sum(0))


def _tokens_before_fc1(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.blocks[0].fc1.register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["x"]


# ---------------------------------------------------------------- through api.compress
def _npz(path: Path, shape: tuple[int, ...], n: int = 40) -> api.DataOptions:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, *shape), dtype=np.uint8), y=np.arange(n) % 10)
    return api.DataOptions(str(path))


def _checkpoint(tmp_path: Path, name: str, **kwargs) -> tuple[Path, Consent]:
    ref = ArchRef(f"tests.wild_models:{name}", kwargs)
    consent = Consent(arch=ref.ref)
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(new_checkpoint(ref.build(consent), ref, MODELS[name][1], {"method": "dense"}), path)
    return path, consent


def test_vit_channel_pruning_keeps_heads_whole_and_the_result_reloads(tmp_path):
    path, consent = _checkpoint(tmp_path, "vit")
    spec = PruneSpec(method="magnitude", granularity="channel", sparsity=0.3, round_to=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = api.compress(path, spec, tmp_path / "vit.ch.pt", data=_npz(tmp_path / "d.npz", (3, 32, 32)),
                         finetune_epochs=0, consent=consent, progress=False)
    assert 0.25 < r.sparsity < 0.35 and r.macs_after < r.macs_before
    assert "blocks.0.attn" in r.details["channels kept whole"]
    # a fresh process rebuilds it from the plan: embedding and heads intact, MLP narrower
    code = ("import torch; from edgeprune.model_io import load_model, Consent; "
            f"m = load_model({r.path!r}, Consent(arch='tests.wild_models:vit')).model; "
            "a = m.blocks[0].attn; print(a.embed_dim, a.num_heads, m.blocks[0].fc1.out_features, "
            "tuple(m(torch.rand(2, 3, 32, 32)).shape))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    embed, heads, hidden, shape = out.stdout.split(maxsplit=3)
    assert (embed, heads, shape.strip()) == ("64", "4", "(2, 10)") and int(hidden) < 128 and int(hidden) % 8 == 0


def test_torchscript_and_torch_export_are_refused_not_reported_as_pruned(tmp_path):
    model, x = _build("mobilenet")
    scripted, exported = tmp_path / "m.torchscript.pt", tmp_path / "m.pt2"
    torch.jit.save(torch.jit.trace(model, x[:1]), scripted)
    torch.export.save(torch.export.export(model, (x[:1],)), exported)
    data = _npz(tmp_path / "d.npz", (3, 32, 32))
    for path in (scripted, exported):
        with pytest.raises(EdgepruneError, match="nothing would be pruned") as err:
            api.compress(path, PruneSpec(), tmp_path / "out.pt", data=data, finetune_epochs=0,
                         input_shape=(3, 32, 32), progress=False)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "out.pt").exists()


def test_a_segmentation_head_on_classification_data_is_refused_in_one_line(tmp_path):
    path, consent = _checkpoint(tmp_path, "segnet")
    with pytest.raises(EdgepruneError, match=r"\(4, 32, 32\), not one score per class") as err:
        api.compress(path, PruneSpec(), tmp_path / "seg.pt", data=_npz(tmp_path / "d.npz", (3, 32, 32)),
                     finetune_epochs=0, consent=consent, progress=False)
    assert "\n" not in str(err.value)


class FixedWidth(nn.Module):
    """Conv features turned into tokens by a reshape to a constant width: Torch-Pruning cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        t = torch.relu(self.conv(x)).flatten(2).transpose(1, 2).reshape(x.shape[0], -1, 16)
        return self.fc(t.mean(1))


def test_channel_pruning_that_breaks_the_forward_pass_is_an_error_not_a_model():
    model, x = FixedWidth().eval(), torch.rand(2, 3, 32, 32)
    with pytest.raises(EdgepruneError, match="no longer runs") as err:
        prune(model, PruneSpec(granularity="channel", sparsity=0.5, round_to=1), x[:1], batches=[x])
    assert "\n" not in str(err.value)
