"""TempNet for a serving engine: load it for the served checkpoint, temper rows of logits, read per-request options.

What an engine plugin (`tempnet.integrations.vllm`) needs that does not depend on the engine, importing only
torch, the core and safetensors (an engine pins its own transformers):

    ServingHead.load(checkpoint, vocab_size, stored)   the checkpoint's `tempnet.*` weights (ours or the
                                                       authors' released layout), or an exported TempNet file
    head.temper(logits)                                 (logits / tau, tau) for rows [N, V]
    request_wants_tempnet(extra_args)                   the per-request switch {"tempnet": true | false}

Rows already masked by the engine (grammar, bad words: -inf) are shown to TempNet as the row's lowest finite
logit, so its input stays finite, and keep -inf after the division; penalised rows are read as penalised
(TempNet sees the logits the engine would sample from, as with transformers' processors). Any positive tau
keeps every row's argmax, so greedy requests pick the same token and only their log-probabilities change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from tempnet.errors import DataError, UserError
from tempnet.integrations.head import (PREFIX, TempNetConfig, build_head, check_head_shapes, checkpoint_shapes,
                                       fits_vocab, head_shapes, load_tempnet_file, read_checkpoint_tensors,
                                       released_state, resolve_settings)

__all__ = ["ServingHead", "finite_for_tempnet", "request_wants_tempnet", "XARG", "TEMPNET_FILE_KEY"]

#: The per-request key (`SamplingParams.extra_args`, `vllm_xargs` over HTTP): false turns TempNet off.
XARG = "tempnet"
#: The config.json key (set through vLLM's `hf_overrides`) naming an exported TempNet file to serve instead.
TEMPNET_FILE_KEY = "tempnet_file"


def finite_for_tempnet(scores: torch.Tensor) -> torch.Tensor:
    """scores [N, V] with every -inf/NaN entry replaced by its row's lowest finite score (0 for a row with
    none): TempNet's input must be finite, and a masked token then counts as the least likely one."""
    finite = torch.isfinite(scores)
    if finite.all():
        return scores
    floor = scores.masked_fill(~finite, float("inf")).amin(dim=-1, keepdim=True)  # [N, 1]
    floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
    return torch.where(finite, scores, floor)


def request_wants_tempnet(extra_args: Mapping[str, Any] | None) -> bool:
    """Whether a request is tempered: yes unless its extra args say {"tempnet": false}.

    vLLM's HTTP schema holds `vllm_xargs` values as strings or numbers, so JSON's false arrives as 0: the
    switch is true/false, 1/0 or "true"/"false". Any other key or value is a ValueError naming it (a typo must
    not leave a request silently untempered or silently tempered).
    """
    extra_args = extra_args or {}
    unknown = sorted(k for k in extra_args if k != XARG)
    if unknown:
        raise ValueError(f"unknown vllm_xargs key(s) {unknown}: TempNet's server reads only {XARG!r} "
                         f'(e.g. "vllm_xargs": {{"{XARG}": false}} to turn TempNet off for this request)')
    value = extra_args.get(XARG, True)
    if isinstance(value, (bool, int, float, str)) and value in _SWITCH:
        return _SWITCH[value]
    raise ValueError(f"vllm_xargs {XARG!r} must be true or false, got {value!r}")


_SWITCH = {True: True, False: False, "true": True, "false": False}  # 1 == True and 0 == False as keys


@dataclass
class ServingHead:
    """The temperature head of a served model, in eval mode, float32, on the engine's device."""

    head: nn.Module
    settings: TempNetConfig
    vocab_size: int
    source: str
    """Where the weights came from (the checkpoint, or the exported file)."""

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, vocab_size: int, stored: Mapping[str, Any] | None = None,
             tempnet_file: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> "ServingHead":
        """The TempNet of `checkpoint` (its `tempnet.*` tensors; settings from `stored`, config.json's
        "tempnet", else the released layout's), or the one in `tempnet_file` (written by `tempnet export`).

        A UserError when there is none or it was built for another vocabulary than the model's `vocab_size`.
        """
        if tempnet_file is not None:
            if not os.path.isfile(tempnet_file):
                raise FileNotFoundError(f"{TEMPNET_FILE_KEY}: no such file: {tempnet_file}")
            try:
                head, settings, vocab = load_tempnet_file(tempnet_file)
            except Exception as exc:  # safetensors' own error type, or a file without TempNet metadata
                raise UserError(f"{tempnet_file} is not a TempNet export (tempnet export writes one): {exc}") from None
            if not fits_vocab(head, vocab_size):
                raise DataError(f"the TempNet in {tempnet_file} was built for vocabulary size {vocab} but the served "
                                f"model {checkpoint} has vocabulary size {vocab_size}")
            return cls(head.to(device).eval(), settings, vocab_size, str(tempnet_file))
        found = {k[len(PREFIX):]: v for k, v in checkpoint_shapes(checkpoint).items()}
        if not found:
            raise UserError(f"{checkpoint} holds no TempNet weights ({PREFIX}* tensors): serve a checkpoint trained "
                            f"with TempNet, or name an exported TempNet file ({TEMPNET_FILE_KEY})")
        settings = resolve_settings(dict(stored) if stored else None, found, {})
        try:
            check_head_shapes(checkpoint, found, head_shapes(settings, vocab_size), settings, vocab_size)
        except ValueError as exc:
            raise DataError(str(exc).split("; pass fresh_tempnet")[0]) from None
        head = build_head(settings, vocab_size)
        state = {k[len(PREFIX):]: v for k, v in read_checkpoint_tensors(checkpoint).items()}
        head.load_state_dict(released_state(state))
        return cls(head.float().to(device).eval(), settings, vocab_size, str(checkpoint))

    @torch.no_grad()
    def temper(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [N, V] -> (logits / tau in logits' dtype [N, V], tau [N, 1] float32)."""
        tau = self.head(finite_for_tempnet(logits))  # [N, 1] float32
        return (logits.float() / tau).to(logits.dtype), tau
