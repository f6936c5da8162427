"""How a stored image becomes a model input: decode, resize, centre crop, scale to [0, 1], normalise.

One ``Preprocess`` is chosen when a model is trained on an image folder and then travels with it:
the checkpoint's meta (``preprocess``), the ONNX metadata (``edgeprune.preprocess``), calibration and
deploy all rebuild it from that record rather than guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# Named presets for --normalize: the per-channel mean/std torchvision's ImageNet weights expect.
PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "none": None}


@dataclass(frozen=True)
class Preprocess:
    """Decode as ``C`` channels (1: greyscale, 3: RGB), resize the shorter side to max(H, W), centre
    crop H x W, scale to [0, 1], then ``(x - mean) / std`` per channel when ``mean`` is set."""

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        c, h, w = self.input_shape
        if c not in (1, 3) or h <= 0 or w <= 0:
            raise InputError(f"an image folder gives 1 (greyscale) or 3 (RGB) channels of positive size, "
                             f"not --input-shape {c},{h},{w}")
        if (self.mean is None) != (self.std is None):
            raise InputError("normalisation needs both a mean and a std")
        if self.mean is not None:
            if len(self.mean) not in (1, c) or len(self.std) not in (1, c):
                raise InputError(f"--normalize gives {len(self.mean)} means and {len(self.std)} stds for {c} channels")
            if any(s <= 0 for s in self.std):
                raise InputError("--normalize: every std must be positive")

    def __call__(self, img) -> np.ndarray:
        """A PIL image -> float32 C x H x W."""
        from PIL import Image

        c, h, w = self.input_shape
        img = img.convert("L" if c == 1 else "RGB")
        scale = max(h, w) / min(img.size)
        if img.size != (w, h):
            size = (max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale)))
            img = img.resize(size, Image.Resampling.BILINEAR)
            left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
            img = img.crop((left, top, left + w, top + h))
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = x[None] if c == 1 else x.transpose(2, 0, 1)
        if self.mean is not None:
            mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
            std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def unit_range(self) -> bool:
        """Inputs stay in [0, 1] (no normalisation): they round-trip through uint8."""
        return self.mean is None

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "resize": "shorter side to max(H, W), centre crop",
                "scale": "uint8 pixels / 255", "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        try:
            return cls(tuple(int(v) for v in d["input_shape"]),  # type: ignore[arg-type]
                       tuple(d["mean"]) if d.get("mean") else None, tuple(d["std"]) if d.get("std") else None)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"malformed recorded preprocessing {d!r}: {e}") from None

    def describe(self) -> str:
        """One line for the ONNX metadata: what a runtime must do to an image before the model sees it."""
        c, h, w = self.input_shape
        norm = (f"(x - mean {list(self.mean)}) / std {list(self.std)}" if self.mean else "no mean/std normalization")
        return (f"decode as {'greyscale' if c == 1 else 'RGB'}, resize shorter side to {max(h, w)}, centre crop "
                f"{h}x{w}, uint8 pixels / 255 -> float32 N x C x H x W; {norm}; json {json.dumps(self.to_dict())}")


def parse_normalize(value: str | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``--normalize``: a preset name (imagenet, none) or ``MEAN[,MEAN..]/STD[,STD..]``."""
    if value is None or value.strip().lower() == "none":
        return None
    key = value.strip().lower()
    if key in PRESETS:
        mean, std = PRESETS[key]  # type: ignore[misc]
        if len(mean) != channels:
            raise InputError(f"--normalize {key} is for 3-channel (RGB) inputs, this data has {channels}")
        return mean, std
    try:
        m, s = value.split("/")
        mean = tuple(float(v) for v in m.split(","))
        std = tuple(float(v) for v in s.split(","))
    except ValueError:
        raise InputError(f"--normalize must be a preset ({', '.join(PRESETS)}) or MEAN,../STD,.. like "
                         f"0.5/0.25, got '{value}'") from None
    return mean, std
