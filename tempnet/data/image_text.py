"""Image-text data sets in the ALBEF / CC3M JSON forms, with the dataset index flowing with each sample.

    training pairs   [{"image": "rel/path.jpg", "caption": "a dog", "image_id": optional}, ...]
    retrieval sets   [{"image": "rel/path.jpg", "caption": ["a dog", "a brown dog", ...]}, ...]

The per-sample state of the global contrastive losses is indexed by dataset index, so a training
sample is (image, caption, image_id, text_id): text_id is the entry's position, image_id the
position of its image among distinct images (equal to text_id when every image has one caption,
as in CC3M). Bad data fails with an error naming the file and the entry (or, for training images
with on_bad_sample="skip", is replaced by a deterministic other entry: see ImageTextPairs).
"""

from __future__ import annotations

import json
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tempnet.data.bad_samples import BadSample, BadSamples
from tempnet.errors import DataError

__all__ = ["pre_caption", "load_annotations", "load_image", "ImageTextPairs", "RetrievalImages", "RetrievalSet",
           "sample_seed", "seeded_transform", "missing_files"]


def missing_files(paths: Sequence[str | os.PathLike], workers: int = 32) -> list[int]:
    """Positions of `paths` that are not regular files, found with parallel stats (network filesystems
    answer many small requests at once far faster than one after another)."""
    paths = [os.fspath(p) for p in paths]
    size = max(1, min(1024, -(-len(paths) // workers)))  # one task per block of files, not per file
    blocks = [paths[i:i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(blocks)))) as pool:
        exists = [ok for block in pool.map(lambda b: [os.path.isfile(p) for p in b], blocks) for ok in block]
    return [i for i, ok in enumerate(exists) if not ok]


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
        entries = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse annotation file {path} as JSON: {err}") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"annotation file {path} must hold a non-empty JSON list of entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]:
            raise DataError(f"entry {i} of {path} has no \"image\" path: {_short(entry)}")
    return entries


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _clean_caption(caption, where: str, max_words: int) -> str:
    if not isinstance(caption, str):
        what = "no caption" if caption is None else f"a caption that is not a string: {_short(caption)}"
        raise DataError(f"{where} has {what}")
    cleaned = pre_caption(caption, max_words)
    if not cleaned:
        raise DataError(f"{where} has an empty caption: {caption!r}")
    return cleaned


#: What PIL raises for a file that is not an image, truncated, or broken inside.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
                  Image.DecompressionBombError)


def load_image(path: Path, where: str) -> Image.Image:
    """Open an RGB image; a missing or unreadable file raises BadSample naming the entry and the file."""
    if not path.is_file():
        raise BadSample(f"image file of {where} not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except _DECODE_ERRORS as err:
        raise BadSample(f"cannot read the image file of {where} ({path}): {err}") from None


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

    Bad images: every image file is stat-ed at construction (in parallel); one that is missing, or
    found corrupt when read, is an error naming the entry (`on_bad_sample="error"`), or with
    `on_bad_sample="skip"` item i serves the pair of the next readable entry (i+1, i+2, ... mod N)
    under i's own ids: a rule of the index alone, so batch shapes, the per-sample state ids and an
    exact resume all hold. More than `max_bad_fraction` of the entries bad is an error. The bad
    entries seen so far are in `bad` (tempnet.data.bad_samples: loader workers mark it too).
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path, transform: Callable, max_words: int = 30,
                 seed: int = 0, on_bad_sample: str = "error", max_bad_fraction: float = 0.0, check_files: bool = True):
        self.ann_file, self.image_root = Path(ann_file), Path(image_root)
        self.transform, self.seed, self.epoch = transform, int(seed), 0
        entries = load_annotations(self.ann_file)
        self.images, self.captions, image_ids, first = [], [], [], {}
        for i, entry in enumerate(entries):
            self.captions.append(_clean_caption(entry.get("caption"), f"entry {i} of {self.ann_file}", max_words))
            self.images.append(entry["image"])
            key = entry.get("image_id", i)
            image_ids.append(first.setdefault(key if isinstance(key, (str, int)) else json.dumps(key), len(first)))
        self.image_ids = torch.tensor(image_ids)
        self.num_images = len(first)
        self.bad = BadSamples(on_bad_sample, len(self), len(self), max_bad_fraction, f"entries of {self.ann_file}")
        if check_files:
            self._check_files()

    def _check_files(self) -> None:
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"data.image_root: no such directory: {self.image_root}")
        missing = missing_files([self.image_root / p for p in self.images])
        if not missing:
            return
        first = f"entry {missing[0]} of {self.ann_file}: {self.image_root / self.images[missing[0]]}"
        if self.bad.mode == "error":
            raise BadSample(f"{len(missing)} of {len(self)} image files not found, the first: {first} "
                            "(data.on_bad_sample=skip trains on the others)")
        self.bad.add(missing, f"not found: {first}")

    def __len__(self) -> int:
        return len(self.captions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def num_bad(self) -> int:
        """Entries found bad so far (at construction and by any loader worker of this process)."""
        return len(self.bad)

    def _read(self, index: int) -> tuple[Image.Image, int]:
        """The image of `index`, or under "skip" of the next readable entry: (image, its entry)."""
        entries = ((index + k) % len(self) for k in range(len(self)))
        return self.bad.first_good(((j, partial(self._load, j)) for j in entries), str(self.ann_file))

    def _load(self, j: int) -> tuple[Image.Image, int]:
        return load_image(self.image_root / self.images[j], f"entry {j} of {self.ann_file}"), j

    def __getitem__(self, index: int):
        image, j = self._read(index)
        image = seeded_transform(self.transform, image, sample_seed(self.seed, self.epoch, index))
        return image, self.captions[j], int(self.image_ids[index]), index


class RetrievalSet:
    """A retrieval test set: images, all their captions flattened, and txt2img (the image of each text)."""

    def __init__(self, ann_file: str | Path, image_root: str | Path, max_words: int = 30):
        self.ann_file, self.image_root = Path(ann_file), Path(image_root)
        self.images, self.texts, txt2img = [], [], []
        for i, entry in enumerate(load_annotations(self.ann_file)):
            captions = entry.get("caption")
            captions = [captions] if isinstance(captions, str) else captions
            if not isinstance(captions, list) or not captions:
                raise DataError(f"entry {i} of {self.ann_file} needs a caption or a non-empty list of captions")
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
