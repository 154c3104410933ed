"""Plain callables that behave like torchvision transforms (torchvision itself is not installed).

They follow torchvision's contracts: ``ToTensor`` takes a PIL image or an ``HxW[xC]`` array and
returns a float ``[C, H, W]`` tensor scaled to [0, 1] for uint8 input; ``Normalize`` returns a new
tensor; ``RandomCrop`` draws its offsets from torch's global RNG on EVERY call, as torchvision's
``RandomCrop.get_params`` does, and applied to a batch ``[B, C, H, W]`` it crops all images alike
(one draw), as torchvision v2 does. ``offset_of`` recovers the offset a crop used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from conftest import RAMP
from PIL import Image


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    def __call__(self, pic: Any) -> torch.Tensor:
        array = np.array(pic, dtype=np.uint8, copy=True) if isinstance(pic, Image.Image) else np.asarray(pic)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor.to(torch.float32).div(255) if tensor.dtype == torch.uint8 else tensor


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


class PILToTensor:
    def __call__(self, pic: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(pic, dtype=np.uint8)).unsqueeze(0)


class RandomCrop:
    """Zero-pad by ``padding``, then crop ``size`` at an offset drawn per call (tensor ``[..., H, W]``)."""

    def __init__(self, size: int, padding: int) -> None:
        self.size, self.padding = size, padding

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        p = self.padding
        padded = torch.nn.functional.pad(img, (p, p, p, p))
        h, w = padded.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, size=(1,)).item())
        left = int(torch.randint(0, w - self.size + 1, size=(1,)).item())
        return padded[..., top:top + self.size, left:left + self.size].contiguous()


def offset_of(cropped: torch.Tensor, original: torch.Tensor, padding: int) -> tuple[int, int]:
    """The ``(top, left)`` at which ``cropped`` ([C, h, w]) was cut from the zero-padded ``original``."""
    p = padding
    padded = torch.nn.functional.pad(original, (p, p, p, p))
    h, w = cropped.shape[-2:]
    hits = [(t, left) for t in range(padded.shape[-2] - h + 1) for left in range(padded.shape[-1] - w + 1)
            if torch.equal(padded[..., t:t + h, left:left + w], cropped)]
    assert len(hits) == 1, f"crop matches {len(hits)} offsets"
    return hits[0]


RAMP_T = torch.from_numpy(RAMP).unsqueeze(0)


def crop_offsets(images: torch.Tensor) -> list[tuple[int, int]]:
    """The crop offset of each image of a batch of cropped ramp images."""
    return [offset_of(image, RAMP_T, 4) for image in images]


def offsets(images: torch.Tensor) -> set[tuple[int, int]]:
    """The distinct crop offsets in a batch of cropped ramp images."""
    return set(crop_offsets(images))
