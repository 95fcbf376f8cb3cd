"""lm-evaluation-harness glue: a registered model "tempnet" that evaluates a causal LM with its TempNet.

The checkpoint is loaded by `tempnet_model_from_pretrained`, so both our own checkpoints and the
authors' released layout (a plain LLaMA config whose state dict also holds `tempnet.*`) are
evaluated with TempNet in place: every log-likelihood is computed from logits divided by the
predicted tau. Import this module (or run `scripts/eval_lm.py`) to make `--model tempnet` known.
"""

from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from tempnet.integrations.head import DTYPES
from tempnet.integrations.hf import tempnet_model_from_pretrained

__all__ = ["TempNetLM"]

_DTYPES = {**DTYPES, "auto": "auto"}


@register_model("tempnet")
class TempNetLM(HFLM):
    """HFLM over a causal LM with a temperature head.

    Args (as lm-eval `--model_args`): pretrained (path or hub name), tokenizer (defaults to
    pretrained), dtype (float32 | float16 | bfloat16 | auto), device, batch_size, and any other
    HFLM argument. A model instance may be passed as `pretrained` too (with a tokenizer).
    """

    def __init__(self, pretrained, tokenizer=None, dtype: str | torch.dtype = "auto", device: str = "cuda",
                 **kwargs):
        if isinstance(pretrained, str):
            if isinstance(dtype, str) and dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            torch_dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
            tokenizer = tokenizer or pretrained
            pretrained = tempnet_model_from_pretrained(pretrained, dtype=torch_dtype)
        if tokenizer is None:
            raise ValueError("pass a tokenizer (path or object) when `pretrained` is a model instance")
        pretrained = pretrained.to(device).eval()
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, device=device, **kwargs)
