"""Zero-shot classification: class embeddings from prompt templates, top-k accuracy.

Ties count against the model: a class tied with the true one ranks above it. Non-finite logits (a
diverged model) give NaN accuracies, never a score.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["class_embeddings", "topk_accuracy"]


@torch.no_grad()
def class_embeddings(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """[C, E]: per class, the L2-normalised mean of its normalised prompt embeddings (CLIP's prompt ensemble).

    encode_text maps a list of strings to embeddings [n, E].
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    out = []
    for name in classnames:
        emb = F.normalize(encode_text([t.format(name) for t in templates]).float(), dim=-1)  # [T, E]
        out.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(out)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5),
                  prefix: str = "zeroshot_top") -> dict[str, float]:
    """{f"{prefix}{k}": percent of rows whose label is among the k highest logits}. logits [N, C], labels [N]."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"need logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if not bool(torch.isfinite(logits).all()):
        return {f"{prefix}{k}": float("nan") for k in ks}
    labels = labels.to(logits.device).long()
    own = logits.gather(1, labels[:, None])  # [N, 1]
    above = (logits >= own).sum(dim=1) - 1  # classes other than the label scoring >= it
    return {f"{prefix}{k}": 100.0 * (above < k).float().mean().item() for k in ks}
