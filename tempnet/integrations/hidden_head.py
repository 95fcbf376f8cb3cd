"""A temperature head that reads the last hidden state instead of the logits (AutoDeco's, arXiv 2510.26697).

AutoDeco puts a small MLP on the causal LM's final hidden state h (the LM head's input) and trains it, with
the LM frozen, by cross-entropy through the tempered softmax: minimise CE(z / tau(h), y) with z = W h.
`HiddenTemperatureHead` is that MLP (tau in [tau_min, tau_max] by a scaled sigmoid, starting at tau = 1);
`capture_last_hidden` records h on any Hugging Face causal LM by a forward pre-hook on its output embedding,
so the same head serves teacher-forced scoring and `generate` (see
`tempnet.integrations.decoding.HiddenStateTemperatureLogitsProcessor`).

The LLM trainer trains heads over logits only (TempNet), so `train_hidden_head` is a small documented loop:
the frozen model's hidden states of the training text are computed once, then Adam minimises the project's
`tempered_ce_loss` over random batches of positions.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from tempnet.losses.lm import tempered_ce_loss
from tempnet.modules import check_tau_range

__all__ = ["HiddenTemperatureHead", "capture_last_hidden", "hidden_states_and_labels", "train_hidden_head"]


class HiddenTemperatureHead(nn.Module):
    """tau(h) = tau_min + (tau_max - tau_min) * sigmoid(MLP(h)): h [..., d] -> tau [..., 1] float32.

    The MLP is Linear(d, width) - GELU - Linear(width, 1); its last layer starts at zero weight and the bias
    that gives tau = 1 (clipped into the range), so training starts from the untempered model.
    """

    def __init__(self, hidden_size: int, width: int = 64, tau_min: float = 0.05, tau_max: float = 5.0):
        super().__init__()
        check_tau_range(tau_min, tau_max)
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        share = min(max((1.0 - tau_min) / (tau_max - tau_min), 1e-3), 1 - 1e-3)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, math.log(share / (1 - share)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.mlp(hidden.float()))
        return self.tau_min + (self.tau_max - self.tau_min) * s


@contextmanager
def capture_last_hidden(model):
    """Within the block, `store["hidden"]` is the input of the model's LM head at its latest call ([B, T, d]):
    the final hidden state (after the last norm) whose product with the head's weight gives the logits."""
    store: dict = {}

    def hook(_module, args):
        store["hidden"] = args[0].detach()

    handle = model.get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def hidden_states_and_labels(model, docs: np.ndarray, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen model's last hidden state at every position predicting docs[:, 1:]: ([P, d], labels [P])."""
    hidden = []
    with capture_last_hidden(model) as store:
        for s in range(0, len(docs), batch):
            model(input_ids=torch.as_tensor(docs[s:s + batch]))
            hidden.append(store["hidden"][:, :-1].reshape(-1, store["hidden"].shape[-1]).float())
    return torch.cat(hidden), torch.as_tensor(docs[:, 1:]).reshape(-1)


def train_hidden_head(model, docs: np.ndarray, steps: int, tau_min: float, tau_max: float, width: int = 64,
                      lr: float = 1e-3, batch_positions: int = 2048, seed: int = 0) -> tuple[HiddenTemperatureHead, list]:
    """Train a `HiddenTemperatureHead` on a frozen causal LM by CE through the tempered softmax.

    docs: [N, L] token ids of training text (every position predicting docs[:, 1:] is used). Returns the
    head in eval mode and the loss of every step.
    """
    torch.manual_seed(seed)
    h, y = hidden_states_and_labels(model.eval(), docs)
    lm_head = model.get_output_embeddings()
    head = HiddenTemperatureHead(h.shape[-1], width, tau_min, tau_max)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(batch_positions, len(y)),), generator=gen)
        with torch.no_grad():
            z = lm_head(h[idx]).float()  # [B, V] the frozen logits
        loss = tempered_ce_loss(z, y[idx], head(h[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return head.eval(), losses
