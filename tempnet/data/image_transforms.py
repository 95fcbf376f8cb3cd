"""Image transforms of the paper's CLIP runs (ALBEF / iSogCLR): random resized crop, flip, RandAugment.

RandAugment uses ALBEF's list of operations (geometry, contrast, brightness, sharpness: no colour,
posterize or solarize, which would contradict captions naming colours) and ALBEF's magnitude scale
0-10. The torchvision transforms draw from the global torch RNG; `ImageTextPairs` seeds it per sample.
"""

from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["CLIP_MEAN", "CLIP_STD", "AlbefRandAugment", "train_transform", "eval_transform", "center_crop_transform"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ALBEF_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
             "TranslateY", "Rotate")


class AlbefRandAugment(T.RandAugment):
    """torchvision's RandAugment restricted to ALBEF's operations; magnitude on ALBEF's 0-10 scale."""

    def __init__(self, num_ops: int = 2, magnitude: int = 7):
        if not 0 <= magnitude <= 10:
            raise ValueError(f"RandAugment magnitude is on a 0-10 scale, got {magnitude}")
        super().__init__(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=11)

    def _augmentation_space(self, num_bins, image_size):
        space = super()._augmentation_space(num_bins, image_size)
        return {name: space[name] for name in ALBEF_OPS}


def train_transform(image_size: int, augment: bool = True, crop_scale: tuple[float, float] = (0.5, 1.0),
                    randaugment_ops: int = 2, randaugment_magnitude: int = 7):
    """PIL image -> normalised tensor [3, image_size, image_size].

    augment=True: RandomResizedCrop(scale=crop_scale), horizontal flip, ALBEF's RandAugment(ops, magnitude 0-10);
    augment=False: the deterministic evaluation transform (for parity tests and ablations).
    """
    if not augment:
        return eval_transform(image_size)
    ops = [T.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=InterpolationMode.BICUBIC),
           T.RandomHorizontalFlip()]
    if randaugment_ops > 0:
        ops.append(AlbefRandAugment(randaugment_ops, randaugment_magnitude))
    return T.Compose([*ops, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def eval_transform(image_size: int):
    """PIL image -> tensor [3, image_size, image_size]: bicubic resize to a square, then normalise (as ALBEF)."""
    return T.Compose([T.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(CLIP_MEAN, CLIP_STD)])


def center_crop_transform(image_size: int):
    """PIL image -> tensor [3, image_size, image_size]: resize the short side, centre crop (zero-shot sets)."""
    return T.Compose([T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size),
                      T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
