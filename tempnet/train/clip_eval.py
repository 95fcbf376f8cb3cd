"""Zero-shot evaluation of a DualEncoder: retrieval (TR@k / IR@k) and classification (top-k).

Runs in one process on the model's device (the trainer calls it on rank 0); the metric math is in
`tempnet.eval`. Returns flat dicts of percentages; NaN ones for a model whose embeddings are not finite
(recorded as such in eval.json, never selected as the best checkpoint).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from tempnet.data.image_text import RetrievalSet
from tempnet.eval.retrieval import retrieval_metrics
from tempnet.eval.zeroshot import class_embeddings, topk_accuracy
from tempnet.train.clip_model import DualEncoder, TextTokenizer
from tempnet.train.signals import loader_worker_init

__all__ = ["encode_texts", "encode_images", "evaluate_retrieval", "evaluate_zeroshot"]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_texts(model: DualEncoder, tokenizer: TextTokenizer, texts: list[str], batch_size: int = 256,
                 autocast: Callable = contextlib.nullcontext) -> torch.Tensor:
    """Unit text embeddings [N, E] (float32, on the model's device)."""
    device, out = _device(model), []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start:start + batch_size])
        with autocast():
            out.append(model.encode_text(ids.to(device), mask.to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def encode_images(model: DualEncoder, dataset: Dataset, batch_size: int = 256, num_workers: int = 0,
                  autocast: Callable = contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit image embeddings [N, E], the second item of each sample [N]: index or label)."""
    device = _device(model)
    # an own generator: creating a loader iterator must not draw from the global RNG (exact resume)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        worker_init_fn=loader_worker_init, generator=torch.Generator().manual_seed(0))
    feats, extra = [], []
    for images, second in loader:
        with autocast():
            feats.append(model.encode_image(images.to(device)).float())
        extra.append(second)
    return torch.cat(feats), torch.cat(extra)


@torch.no_grad()
def evaluate_retrieval(model: DualEncoder, tokenizer: TextTokenizer, split: RetrievalSet, transform: Callable,
                       batch_size: int = 256, num_workers: int = 0,
                       autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """txt_r1/5/10 (image -> text), img_r1/5/10 (text -> image), their means and r_mean, in percent."""
    was_training = model.training
    model.eval()
    try:
        images, order = encode_images(model, split.image_dataset(transform), batch_size, num_workers, autocast)
        texts = encode_texts(model, tokenizer, split.texts, batch_size, autocast)
        sim = images[order.argsort()] @ texts.t()  # [N_img, N_txt]
        return retrieval_metrics(sim.cpu(), split.txt2img)
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_zeroshot(model: DualEncoder, tokenizer: TextTokenizer, dataset: Dataset, classnames: list[str],
                      templates: list[str], batch_size: int = 256, num_workers: int = 0,
                      autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """zeroshot_top1 and zeroshot_top5 (percent) of the prompt-ensemble classifier."""
    was_training = model.training
    model.eval()
    try:
        weights = class_embeddings(lambda t: encode_texts(model, tokenizer, t, batch_size, autocast),
                                   classnames, templates)  # [C, E]
        images, labels = encode_images(model, dataset, batch_size, num_workers, autocast)
        ks = (1, 5) if len(classnames) > 5 else (1,)
        return topk_accuracy((images @ weights.t()).cpu(), labels, ks)
    finally:
        model.train(was_training)
