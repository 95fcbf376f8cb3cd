"""Image-text retrieval metrics from a similarity matrix: TR@k, IR@k and their mean (ALBEF's `itm_eval`).

Text retrieval (image -> text, `txt_r*`) ranks all texts for each image; the rank is that of the
best-placed of the image's captions. Image retrieval (text -> image, `img_r*`) ranks all images for
each text. Ties count against the model (a caption tied with a wrong one is not at rank 1), so a
constant similarity matrix scores chance, never 100%. Values are percentages. Non-finite similarities
(a diverged model) give NaN for every metric, never a score: NaN compares false, so a rank counted
with `>=` would be 0 and every recall 100.
"""

from __future__ import annotations

import torch

__all__ = ["retrieval_ranks", "retrieval_metrics"]


def retrieval_ranks(sim: torch.Tensor, txt2img: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks (text_ranks [N_img], image_ranks [N_txt]) from sim [N_img, N_txt] and txt2img [N_txt].

    text_ranks[i] = number of wrong texts scoring >= image i's best caption;
    image_ranks[t] = number of wrong images scoring >= text t's image.
    """
    n_img, n_txt = sim.shape
    if txt2img.shape != (n_txt,):
        raise ValueError(f"txt2img must be [N_txt] = [{n_txt}], got {tuple(txt2img.shape)}")
    if n_txt and (int(txt2img.min()) < 0 or int(txt2img.max()) >= n_img):
        raise ValueError(f"txt2img holds image indices outside [0, {n_img})")
    sim, txt2img = sim.float(), txt2img.to(sim.device).long()
    text_ranks = torch.empty(n_img, dtype=torch.long, device=sim.device)
    for start in range(0, n_img, chunk):
        block = sim[start:start + chunk]  # [c, N_txt]
        rows = torch.arange(start, start + block.shape[0], device=sim.device)
        positive = txt2img[None, :] == rows[:, None]  # [c, N_txt]
        if not positive.any(dim=1).all():
            raise ValueError("every image needs at least one caption in txt2img")
        best = block.masked_fill(~positive, float("-inf")).amax(dim=1)  # [c]
        text_ranks[start:start + block.shape[0]] = ((block >= best[:, None]) & ~positive).sum(dim=1)
    image_ranks = torch.empty(n_txt, dtype=torch.long, device=sim.device)
    sim_t = sim.t()  # [N_txt, N_img]
    for start in range(0, n_txt, chunk):
        block = sim_t[start:start + chunk]  # [c, N_img]
        target = txt2img[start:start + block.shape[0]]
        own = block.gather(1, target[:, None])  # [c, 1]
        wrong = torch.ones_like(block, dtype=torch.bool).scatter_(1, target[:, None], False)
        image_ranks[start:start + block.shape[0]] = ((block >= own) & wrong).sum(dim=1)
    return text_ranks, image_ranks


def retrieval_metrics(sim: torch.Tensor, txt2img: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """{txt_r1, txt_r5, txt_r10, img_r1, ..., txt_r_mean, img_r_mean, r_mean} in percent.

    sim [N_img, N_txt]: image-text similarities; txt2img [N_txt]: the image index of each text.
    r_mean is the mean of the six recalls (with the default ks), as in ALBEF and the paper's tables.
    Every value is NaN when `sim` holds a NaN or infinity.
    """
    if not bool(torch.isfinite(sim).all()):
        names = [f"{side}_r{k}" for side in ("txt", "img") for k in ks] + ["txt_r_mean", "img_r_mean", "r_mean"]
        return dict.fromkeys(names, float("nan"))
    text_ranks, image_ranks = retrieval_ranks(sim, txt2img)
    out = {}
    for k in ks:
        out[f"txt_r{k}"] = 100.0 * (text_ranks < k).float().mean().item()
    for k in ks:
        out[f"img_r{k}"] = 100.0 * (image_ranks < k).float().mean().item()
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in ks) / len(ks)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out
