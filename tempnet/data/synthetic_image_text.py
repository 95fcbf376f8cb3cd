"""A tiny synthetic image-text data set: rendered shapes and colours with matching captions.

It stands in for CC3M / Flickr30K / ImageNet in smoke tests and the debug config: no download,
a few hundred 64x64 PNGs written in well under a second, in the same file formats as the real
sets, so the trainer reads it through the ordinary code path.

    OUT/train.json                 [{"image": "train/00000.png", "caption": "..."}]  (ALBEF / CC3M form)
    OUT/retrieval.json             [{"image": "retrieval/00000.png", "caption": ["...", "..."]}]  (Karpathy form)
    OUT/zeroshot/<class>/*.png     an image folder; classnames.json and templates.json beside the class folders

Each image shows one shape of one colour, at a random place and size, on a white background; the
caption names colour and shape, so every retrieval image (a distinct combination) has one right answer.
The zero-shot classes are the colours (what a model learns first from these captions). Run `python -m tempnet.data.synthetic_image_text OUT`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["COLOURS", "SHAPES", "make_synthetic_image_text"]

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 215, 20),
           "purple": (140, 40, 170), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
RADIUS = (0.22, 0.4)  # range of the shape's radius as a fraction of the image side (not in the caption:
                     # random resized crops change the apparent size anyway)

_CAPTIONS = (
    "a {colour} {shape} on a white background",
    "a picture of a {colour} {shape}",
    "there is a {colour} {shape} drawn here",
    "one {colour} {shape} in the image",
)
_TEMPLATES = ("a {}", "a picture of a {}", "there is a {}", "one {}")  # completed by a colour
_VERSION = 4  # bump when the output changes, so stale cached copies are regenerated


def _draw(shape: str, colour: str, side: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (side, side), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(*RADIUS) * side
    margin = r + 1
    cx, cy = rng.uniform(margin, side - margin), rng.uniform(margin, side - margin)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # cross
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    return img


def _caption(attrs: dict, rng: random.Random, template: str | None = None) -> str:
    return (template or rng.choice(_CAPTIONS)).format(**attrs)


def _all_combinations() -> list[dict]:
    return [dict(shape=s, colour=c) for s, c in itertools.product(SHAPES, COLOURS)]


def make_synthetic_image_text(out_dir: str | Path, num_train: int = 320, num_retrieval: int = 30,
                              captions_per_image: int = 2, zeroshot_per_class: int = 10, image_size: int = 64,
                              seed: int = 0) -> Path:
    """Write the data set to out_dir (skipped when an identical one is already there) and return out_dir.

    Deterministic in its arguments, so every rank and every resumed run sees the same files.
    """
    out = Path(out_dir)
    spec = dict(version=_VERSION, num_train=num_train, num_retrieval=num_retrieval,
                captions_per_image=captions_per_image, zeroshot_per_class=zeroshot_per_class,
                image_size=image_size, seed=seed)
    marker = out / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out
    combos = _all_combinations()
    if not 1 <= num_retrieval <= len(combos):
        raise ValueError(f"num_retrieval must lie in [1, {len(combos)}] (distinct attribute combinations)")
    if not 1 <= captions_per_image <= len(_CAPTIONS):
        raise ValueError(f"captions_per_image must lie in [1, {len(_CAPTIONS)}]")
    rng = random.Random(seed)
    for sub in ("train", "retrieval", "zeroshot"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    train = []
    for i in range(num_train):
        attrs = rng.choice(combos)
        name = f"train/{i:05d}.png"
        _draw(**attrs, side=image_size, rng=rng).save(out / name)
        train.append({"image": name, "caption": _caption(attrs, rng)})

    retrieval = []
    for i, attrs in enumerate(rng.sample(combos, num_retrieval)):
        name = f"retrieval/{i:05d}.png"
        _draw(**attrs, side=image_size, rng=rng).save(out / name)
        templates = rng.sample(_CAPTIONS, captions_per_image)
        retrieval.append({"image": name, "caption": [_caption(attrs, rng, t) for t in templates]})

    for colour in COLOURS:
        (out / "zeroshot" / colour).mkdir(exist_ok=True)
        for i in range(zeroshot_per_class):
            attrs = dict(rng.choice(combos), colour=colour)
            _draw(**attrs, side=image_size, rng=rng).save(out / "zeroshot" / colour / f"{i:05d}.png")
    # class folders sort alphabetically (ImageFolder order); the names file follows that order
    (out / "zeroshot" / "classnames.json").write_text(json.dumps(sorted(COLOURS)))
    (out / "zeroshot" / "templates.json").write_text(json.dumps(list(_TEMPLATES)))

    (out / "train.json").write_text(json.dumps(train, indent=0))
    (out / "retrieval.json").write_text(json.dumps(retrieval, indent=0))
    marker.write_text(json.dumps(spec))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--num-train", type=int, default=320)
    parser.add_argument("--num-retrieval", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_synthetic_image_text(args.out_dir, num_train=args.num_train, num_retrieval=args.num_retrieval,
                                    image_size=args.image_size, seed=args.seed)
    print(f"wrote the synthetic image-text set to {out}")


if __name__ == "__main__":
    main()
