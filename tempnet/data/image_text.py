"""Image-text data sets in the ALBEF / CC3M JSON forms, with the dataset index flowing with each sample.

    training pairs   [{"image": "rel/path.jpg", "caption": "a dog", "image_id": optional}, ...]
    retrieval sets   [{"image": "rel/path.jpg", "caption": ["a dog", "a brown dog", ...]}, ...]

The per-sample state of the global contrastive losses is indexed by dataset index, so a training
sample is (image, caption, image_id, text_id): text_id is the entry's position, image_id the
position of its image among distinct images (equal to text_id when every image has one caption,
as in CC3M). Bad data fails with an error naming the file and the entry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = ["pre_caption", "load_annotations", "load_image", "ImageTextPairs", "RetrievalImages", "RetrievalSet",
           "sample_seed", "seeded_transform"]


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lower-case, drop punctuation, collapse whitespace, keep the first max_words words (as ALBEF)."""
    caption = re.sub(r"([,.'!?\"()*#:;~])", "", caption.lower()).replace("-", " ").replace("/", " ")
    return " ".join(caption.split()[:max_words])


def load_annotations(path: str | Path) -> list[dict]:
    """Read a JSON list of entries, each with an "image" key; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse annotation file {path} as JSON: {err}") from err
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"annotation file {path} must hold a non-empty JSON list of entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]:
            raise ValueError(f"entry {i} of {path} has no \"image\" path: {entry!r}")
    return entries


def _clean_caption(caption, where: str, max_words: int) -> str:
    if not isinstance(caption, str):
        raise ValueError(f"{where} has a caption that is not a string: {caption!r}")
    cleaned = pre_caption(caption, max_words)
    if not cleaned:
        raise ValueError(f"{where} has an empty caption: {caption!r}")
    return cleaned


def load_image(path: Path, where: str) -> Image.Image:
    """Open an RGB image; a missing or unreadable file raises an error naming the entry."""
    if not path.is_file():
        raise FileNotFoundError(f"image file of {where} not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read the image file of {where} ({path}): {err}") from err


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from (seed, epoch, index): the augmentation of a sample is a function of these only."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seeded_transform(transform: Callable, image, seed: int):
    """transform(image) with the global torch RNG (which torchvision draws from) seeded by `seed`, restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: cheap
        return transform(image)


class ImageTextPairs(Dataset):
    """Training pairs: item i -> (image [3, H, W], caption str, image_id int, text_id int).

    The random transform of item i in epoch e is seeded by (seed, e, i), so augmentation is the same
    whatever the number of loader workers or ranks, and a resumed run repeats it exactly. Call
    `set_epoch` before iterating (the loader must not keep persistent workers).
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path, transform: Callable, max_words: int = 30,
                 seed: int = 0):
        self.ann_file, self.image_root = Path(ann_file), Path(image_root)
        self.transform, self.seed, self.epoch = transform, int(seed), 0
        entries = load_annotations(self.ann_file)
        self.images, self.captions, image_ids, first = [], [], [], {}
        for i, entry in enumerate(entries):
            self.captions.append(_clean_caption(entry.get("caption"), f"entry {i} of {self.ann_file}", max_words))
            self.images.append(entry["image"])
            key = entry.get("image_id", i)
            image_ids.append(first.setdefault(key, len(first)))
        self.image_ids = torch.tensor(image_ids)
        self.num_images = len(first)

    def __len__(self) -> int:
        return len(self.captions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        where = f"entry {index} of {self.ann_file}"
        image = load_image(self.image_root / self.images[index], where)
        image = seeded_transform(self.transform, image, sample_seed(self.seed, self.epoch, index))
        return image, self.captions[index], int(self.image_ids[index]), index


class RetrievalSet:
    """A retrieval test set: images, all their captions flattened, and txt2img (the image of each text)."""

    def __init__(self, ann_file: str | Path, image_root: str | Path, max_words: int = 30):
        self.ann_file, self.image_root = Path(ann_file), Path(image_root)
        self.images, self.texts, txt2img = [], [], []
        for i, entry in enumerate(load_annotations(self.ann_file)):
            captions = entry.get("caption")
            captions = [captions] if isinstance(captions, str) else captions
            if not isinstance(captions, list) or not captions:
                raise ValueError(f"entry {i} of {self.ann_file} needs a caption or a non-empty list of captions")
            self.images.append(entry["image"])
            for caption in captions:
                self.texts.append(_clean_caption(caption, f"entry {i} of {self.ann_file}", max_words))
                txt2img.append(i)
        self.txt2img = torch.tensor(txt2img)  # [N_text]

    def image_dataset(self, transform: Callable) -> "RetrievalImages":
        return RetrievalImages(self, transform)


class RetrievalImages(Dataset):
    """The images of a RetrievalSet: item i -> (image [3, H, W], i)."""

    def __init__(self, split: RetrievalSet, transform: Callable):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int):
        where = f"entry {index} of {self.split.ann_file}"
        return self.transform(load_image(self.split.image_root / self.split.images[index], where)), index
