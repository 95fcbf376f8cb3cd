"""The CLIP half of the demo: the tiny dual encoder of Bimodal-CL's debug config under four losses.

Every loss runs the real Bimodal-CL trainer (`tempnet.train.clip_trainer.train`) on the synthetic
image-text set with the same config, epochs and seed; its final evaluation gives retrieval recall@1
(IR@1: text -> image, TR@1: image -> text; `r1` is their mean) and zero-shot top-1 on the synthetic
classes.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLIP_LOSSES", "debug_config_path", "train_clip"]

#: The losses compared, in the paper's order (isogclr_tempnet is the paper's method).
CLIP_LOSSES = ("clip", "sogclr", "isogclr", "isogclr_tempnet")


def debug_config_path() -> Path:
    """Bimodal-CL/configs/debug.yaml of the checkout this package lives in."""
    path = Path(__file__).resolve().parents[2] / "Bimodal-CL" / "configs" / "debug.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"the CLIP part needs Bimodal-CL/configs/debug.yaml of a TempNet checkout; "
                                f"not found at {path} (run from a source checkout, or pass --no-clip)")
    return path


def train_clip(loss: str, seed: int, out: Path, epochs: int | None = None) -> dict:
    """Train one loss; returns {"img_r1", "txt_r1", "r1", "zeroshot_top1"} (percent) and the eval record."""
    import torch

    from tempnet.config import load_config
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import train

    overrides = [f"loss={loss}", f"train.seed={seed}", "train.tensorboard=false", "train.keep_last=1",
                 "eval.every_epoch=false"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    cfg = load_config(BimodalConfig, debug_config_path(), overrides)
    record = train(cfg, out, torch.device("cpu"), overwrite=True)
    img, txt = record["synthetic/img_r1"], record["synthetic/txt_r1"]
    return {"img_r1": img, "txt_r1": txt, "r1": (img + txt) / 2, "zeroshot_top1": record["synthetic/zeroshot_top1"],
            "record": record}
