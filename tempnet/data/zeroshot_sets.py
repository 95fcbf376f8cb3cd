"""Zero-shot classification sets: images with labels, class names and prompt templates.

Kinds: `cifar10` / `cifar100` (torchvision's folders, test split, never downloaded here),
`imagenet` (an ImageFolder of the validation set, class folders by WordNet id, names from open_clip's
metadata), `folder` (any ImageFolder; names from `classnames.json` beside the class folders if
present, else the folder names; templates from `templates.json` if present).
Templates are format strings with one `{}` for the class name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

__all__ = ["ZEROSHOT_KINDS", "CIFAR_TEMPLATES", "SIMPLE_TEMPLATES", "build_zeroshot_set"]

ZEROSHOT_KINDS = ("cifar10", "cifar100", "imagenet", "folder")

# CLIP's prompt ensemble for CIFAR (Radford et al., 2021, prompt engineering notebook)
CIFAR_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.", "a low contrast photo of a {}.",
    "a high contrast photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of a small {}.",
    "a photo of a big {}.", "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
]
SIMPLE_TEMPLATES = ["a photo of a {}."]


def _imagenet_metadata() -> tuple[list[str], list[str]]:
    from open_clip import zero_shot_metadata as meta

    templates = [t("{}") if callable(t) else t for t in meta.OPENAI_IMAGENET_TEMPLATES]
    return list(meta.IMAGENET_CLASSNAMES), templates


def _read_json_list(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot parse {path} as JSON: {err}") from err
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{path} must hold a JSON list of non-empty strings")
    return values


def build_zeroshot_set(kind: str, root: str | Path, transform: Callable,
                       templates: list[str] | None = None) -> tuple[Dataset, list[str], list[str]]:
    """(dataset of (image [3, H, W], label), class names in label order, templates)."""
    from torchvision import datasets

    root = Path(root)
    if kind not in ZEROSHOT_KINDS:
        raise ValueError(f"unknown zero-shot kind {kind!r}; choose one of {ZEROSHOT_KINDS}")
    if not root.is_dir():
        raise FileNotFoundError(f"zero-shot {kind} folder not found: {root}")
    if kind in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        try:
            dataset = cls(str(root), train=False, download=False, transform=transform)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(f"no {kind} test split under {root} (torchvision layout expected): {err}") from err
        names, default_templates = [c.replace("_", " ") for c in dataset.classes], CIFAR_TEMPLATES
    else:
        dataset = datasets.ImageFolder(str(root), transform=transform)
        if kind == "imagenet":
            names, default_templates = _imagenet_metadata()
        else:
            names = _read_json_list(root / "classnames.json") or [c.replace("_", " ") for c in dataset.classes]
            default_templates = _read_json_list(root / "templates.json") or SIMPLE_TEMPLATES
        if len(names) != len(dataset.classes):
            raise ValueError(f"{root} has {len(dataset.classes)} class folders but {len(names)} class names")
    templates = list(templates) if templates else default_templates
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"prompt templates need exactly one '{{}}' for the class name, got {bad}")
    return dataset, names, templates
