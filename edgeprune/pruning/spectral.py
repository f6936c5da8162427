"""Adaptive Spectral Density Shaping (ASDS), read as activation-spectrum-modulated magnitude pruning.

Source: the DEV Community post "Efficient Neural Network Pruning via Adaptive Spectral Density
Shaping" (freederia, /work/shared/sources/000_*). The post gives no code and leaves the transform,
its axis and the frequency-to-weight mapping open; this is METHODS.md section 3.3, "interpretation
A": for every conv layer, the radial power spectrum of each output map (per-map mean removed, so
ReLU's DC peak does not dominate) on calibration images; a Gaussian of width `width` bins around
the layer's spectral peak; each output channel's share of power under that Gaussian, rho_c; and
per-weight scores |w| * (1 - attenuation * rho_c). Channels whose energy sits in the layer's
dominant band are spectrally redundant with the rest and are pruned first, which "attenuates the
high-density region"; with attenuation 0 the scores are exactly |w| (layer-wise magnitude pruning).
Linear layers have no spatial axis and keep plain |w|.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from edgeprune.errors import InputError
from edgeprune.pruning.base import Method, _is_int, register
from edgeprune.pruning.masks import prunable_layers, weight_of
from edgeprune.pruning.structured import _eval_mode

# METHODS.md proposes a = 0.5, width 1 bin; on Fashion-MNIST validation (LeNet-5, 75 and 90 %,
# benchmarks/bench_spectral.py) a = 0.25 with width 0.5 was best of six settings, a = 1 worst
# (-2 pt at 90 %): strong attenuation strips whole low-frequency channels. The spread is within
# seed noise except for a = 1.
DEFAULT_ATTENUATION = 0.25
DEFAULT_WIDTH = 0.5
DEFAULT_IMAGES = 512   # METHODS.md's N_cal


def radial_bins(sizes: tuple[int, ...]) -> torch.Tensor:
    """Radial frequency bin of every FFT position of a map with spatial `sizes` (long, that shape).

    q = round(|f| * min(sizes)) with f the per-axis frequencies in cycles/sample (fftfreq), so one
    bin is one cycle per shortest side: bin 0 is DC, bin min(sizes)/2 the axis Nyquist frequency.
    """
    grids = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in sizes], indexing="ij")
    radius = torch.sqrt(sum(g.pow(2) for g in grids)) * min(sizes)
    return torch.round(radius).long()


def _spectral_layers(model: nn.Module) -> dict[str, nn.Module]:
    # A transposed conv's weight is laid out [in, out/groups, ...]: left to plain magnitude.
    return {name: m for name, m in prunable_layers(model).items()
            if isinstance(m, _ConvNd) and not m.transposed}


@torch.no_grad()
def radial_spectra(model: nn.Module, batches: Iterable[torch.Tensor], images: int = DEFAULT_IMAGES
                   ) -> dict[str, torch.Tensor]:
    """Per conv layer, the mean radial power spectrum of each output map: float64 [channels, bins].

    Hooks every (non-transposed) conv's output, before any norm layer, on the first `images`
    inputs of `batches`; each map has its spatial mean removed, P = |FFT(map)|^2 / (H*W) is summed
    over each radial bin (`radial_bins`) and averaged over images. Layers whose maps have no
    spatial extent (1x1) have no spectrum and are left out.
    """
    layers = _spectral_layers(model)
    sums: dict[str, torch.Tensor] = {}
    bins: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            dims = tuple(range(2, output.dim()))
            sizes = tuple(output.shape[2:])
            if math.prod(sizes) < 2:
                return
            z = output.detach().float()
            z = z - z.mean(dim=dims, keepdim=True)
            power = torch.fft.fftn(z, dim=dims).abs().pow(2).sum(0).double() / math.prod(sizes)
            if name not in bins:
                bins[name] = radial_bins(sizes).to(power.device).reshape(-1)
            b = bins[name]
            ring = torch.zeros(power.shape[0], int(b.max()) + 1, dtype=torch.float64, device=power.device)
            ring.index_add_(1, b, power.reshape(power.shape[0], -1))
            sums[name] = sums[name] + ring if name in sums else ring
        return fn

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    seen = 0
    try:
        with _eval_mode(model):
            for batch in batches:
                if seen >= images:
                    break
                batch = batch[: images - seen]
                model(batch.to(device))
                seen += len(batch)
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise InputError("spectral pruning needs calibration images, and none were given")
    return {name: (s / seen).cpu() for name, s in sums.items()}


def channel_factors(spectrum: torch.Tensor, attenuation: float, width: float) -> tuple[torch.Tensor, int]:
    """(m_c = 1 - attenuation * rho_c per channel, the peak bin) for one layer's [channels, bins] spectrum.

    The peak is the bin >= 1 with the most power summed over channels; rho_c is channel c's power
    share under exp(-(q - peak)^2 / (2 width^2)) over bins >= 1. A dead channel (no power) has
    rho = 1: it carries nothing and goes first.
    """
    power = spectrum[:, 1:]
    q = torch.arange(1, spectrum.shape[1], dtype=torch.float64)
    peak = int(q[torch.argmax(power.sum(0))])
    gauss = torch.exp(-(q - peak) ** 2 / (2 * width ** 2))
    total = power.sum(1)
    rho = torch.where(total > 0, (power * gauss).sum(1) / total.clamp_min(1e-300), torch.ones_like(total))
    return 1.0 - attenuation * rho, peak


def flatness(spectrum: torch.Tensor) -> float | None:
    """Spectral flatness of a layer: geometric / arithmetic mean of its channel-summed radial power
    over bins >= 1 (1 = flat, near 0 = one band holds everything); None without power."""
    power = spectrum[:, 1:].sum(0)
    if power.numel() == 0 or float(power.mean()) <= 0:
        return None
    return float(torch.exp(torch.log(power).mean()) / power.mean())


def flatness_report(spectra: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per-layer flatness and their mean ("overall")."""
    layers = {name: flatness(s) for name, s in spectra.items() if s.shape[1] > 1}
    values = [v for v in layers.values() if v is not None]
    return {"overall": sum(values) / len(values) if values else None, "layers": layers}


def _check_number(name: str, value: Any, low: float, high: float | None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InputError(f"spectral option {name} must be a number, got {value!r}")
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        bound = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise InputError(f"spectral option {name} must be {'in ' if high is not None else ''}{bound}, got {value:g}")
    return float(value)


@register
class Spectral(Method):
    """ASDS interpretation A (METHODS.md section 3.3): |w| * (1 - attenuation * rho_c), per-layer thresholds.

    Options: `attenuation` a in [0, 1] (0 = layer-wise magnitude), `width` the Gaussian width in
    radial-frequency bins (> 0; the post's sigma 0.5-1.5 read as bins), `images` the calibration
    images used per round (METHODS' N_cal). Spectra are re-measured on the current model at every
    step of an iterative schedule; `details` reports spectral flatness before and after pruning.
    """

    name = "spectral"
    # "theta adaptive to the desired sparsity" for "each individualized layer": one threshold per layer.
    default_scope = "layer"

    def __init__(self, seed: int = 0, attenuation: float = DEFAULT_ATTENUATION, width: float = DEFAULT_WIDTH,
                 images: int = DEFAULT_IMAGES) -> None:
        super().__init__(seed)
        self.attenuation = _check_number("attenuation", attenuation, 0.0, 1.0)
        self.width = _check_number("width", width, 0.0, None, low_open=True)
        if not _is_int(images) or images < 1:
            raise InputError(f"spectral option images must be an integer >= 1, got {images!r}")
        self.images = images
        self.details = {"attenuation": self.attenuation, "width": self.width, "images": images,
                        "flatness": {}, "rounds": []}

    def collect(self, model: nn.Module, batches: Iterable[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if batches is None:
            raise InputError("spectral pruning needs calibration images, and none were given")
        spectra = radial_spectra(model, batches, self.images)
        report = flatness_report(spectra)
        self.details["flatness"].setdefault("before", report)
        self.details["rounds"].append({"flatness": report["overall"]})
        return spectra

    def score(self, model: nn.Module, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        factors = self._factors(model, stats)
        scores = {}
        for name, module in prunable_layers(model).items():
            w = weight_of(module).detach().abs()
            m = factors.get(name)
            scores[name] = w.clone() if m is None else w * m.to(w).reshape(-1, *([1] * (w.dim() - 1)))
        return scores

    def filter_scores(self, model: nn.Module, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """METHODS.md 3.5's structured variant: filter c of a conv layer scores m_c * ||W_c||_1 (at
        attenuation 0, L1-norm filter pruning, Li et al. 2017). Linear layers keep the group aggregate."""
        layers = prunable_layers(model)
        return {name: m * layers[name].weight.detach().abs().reshape(len(m), -1).sum(1).double()
                for name, m in self._factors(model, stats).items()}

    def _factors(self, model: nn.Module, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # m_c per conv layer with a spectrum; also what the user sees of it, per layer
        factors = {}
        layers = {}
        for name, module in _spectral_layers(model).items():
            spectrum = stats.get(name)
            if spectrum is None or spectrum.shape[1] < 2 or spectrum.shape[0] != module.weight.shape[0]:
                continue
            factors[name], peak = channel_factors(spectrum, self.attenuation, self.width)
            layers[name] = {"peak_bin": peak, "bins": spectrum.shape[1] - 1,
                            "factor_min": float(factors[name].min()), "factor_mean": float(factors[name].mean())}
        self.details["layers"] = layers
        return factors

    def finish(self, model: nn.Module, batches: Iterable[torch.Tensor] | None) -> None:
        if batches is None:
            return
        after = flatness_report(radial_spectra(model, batches, self.images))
        self.details["flatness"]["after"] = after
        before = self.details["flatness"].get("before", {}).get("overall")
        if before is not None and after["overall"] is not None:
            self.details["summary"] = (f"spectral flatness {before:.3f} -> {after['overall']:.3f} "
                                       f"(dense -> pruned, mean over conv layers; 1 = flat)")
