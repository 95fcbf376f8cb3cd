"""lm-evaluation-harness glue: a registered model "tempnet" that evaluates a causal LM with its TempNet.

The checkpoint is loaded by `tempnet_model_from_pretrained`, so both our own checkpoints and the
authors' released layout (a plain LLaMA config whose state dict also holds `tempnet.*`, with `scaler`
of shape [] or [1]) are evaluated with TempNet in place: every log-likelihood is computed from logits
divided by the predicted tau. `apply_tempnet=false` evaluates the raw logits of the same checkpoint
(what `--model hf` gives on the base model), so one harness fills both columns of the paper's GPT-2
table (tau = 1 and TempNet). `logits_processor` (Python API) scores a decoding rule the same way: every
position's logits pass through the processor (`TemperatureLogitsProcessor.positions` of
`tempnet.integrations.decoding`: a fixed tau, dynatemp, EDT, a stored TempNet, a hidden-state head) before
lm-eval's log-softmax. Import this module (or run `scripts/eval_lm.py`) to make `--model tempnet`
known.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
from lm_eval.api.metrics import mean, weighted_mean
from lm_eval.api.registry import register_aggregation, register_model
from lm_eval.models.huggingface import HFLM

from tempnet.integrations.head import DTYPES
from tempnet.integrations.hf import TempNetCausalLMMixin, tempnet_model_from_pretrained
from tempnet.modules import FixedTemperature

__all__ = ["TempNetLM", "perplexity_or_inf", "weighted_perplexity_or_inf"]

_DTYPES = {**DTYPES, "auto": "auto"}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _as_bool(name: str, value) -> bool:
    """A bool from a bool or an lm-eval `--model_args` string ("true" / "false", any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}")


class _TempNetAutoModel:
    """Stands in for AutoModelForCausalLM while HFLM loads a checkpoint (our and the released layouts)."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        return tempnet_model_from_pretrained(path, **kwargs)


def _exp_or_inf(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


@register_aggregation("perplexity_or_inf")
def perplexity_or_inf(items) -> float:
    """lm-eval's `perplexity` aggregation, but inf where exp overflows (a rule that gives some target a
    probability of ~0, which lm-eval's own aggregation turns into an OverflowError that stops the whole run)."""
    return _exp_or_inf(-mean(items))


@register_aggregation("weighted_perplexity_or_inf")
def weighted_perplexity_or_inf(items) -> float:
    """lm-eval's `weighted_perplexity` (word perplexity of rolling tasks), inf where exp overflows."""
    return _exp_or_inf(-weighted_mean(items))


@register_model("tempnet")
class TempNetLM(HFLM):
    """HFLM over a causal LM with a temperature head.

    Args (as lm-eval `--model_args`): pretrained (path or hub name), tokenizer (defaults to
    pretrained), dtype (float32 | float16 | bfloat16 | auto), device, batch_size, apply_tempnet
    (default true; false: the raw logits of the same checkpoint, tau = 1), and any other HFLM
    argument. A model instance may be passed as `pretrained` too (with a tokenizer). logits_processor: a
    temperature processor applied to every position's logits (after the head; a processor that hooks the
    model, like the hidden-state head's, is entered around each forward).
    """

    def __init__(self, pretrained, tokenizer=None, dtype: str | torch.dtype = "auto", device: str = "cuda",
                 apply_tempnet: bool | str = True, logits_processor=None, **kwargs):
        self.apply_tempnet = _as_bool("apply_tempnet", apply_tempnet)
        self.logits_processor = logits_processor
        if isinstance(pretrained, str):
            # HFLM loads it (through `_create_model`, below), so accelerate data parallelism and
            # `parallelize=True` (device_map) work as for `--model hf`
            if isinstance(dtype, str) and dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            kwargs.setdefault("backend", "causal")
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, dtype=dtype, device=device, **kwargs)
        else:
            if tokenizer is None:
                raise ValueError("pass a tokenizer (path or object) when `pretrained` is a model instance")
            super().__init__(pretrained=pretrained.to(device).eval(), tokenizer=tokenizer, device=device, **kwargs)
        if self.apply_tempnet and not isinstance(self.model, TempNetCausalLMMixin):
            raise ValueError(f"apply_tempnet=true needs a model with a temperature head, got "
                             f"{type(self.model).__name__}; load it with tempnet_model_from_pretrained or pass "
                             f"apply_tempnet=false")

    def _create_model(self, *args, **kwargs) -> None:
        """HFLM's loader, with `tempnet_model_from_pretrained` in place of AutoModelForCausalLM."""
        auto, self.AUTO_MODEL_CLASS = self.AUTO_MODEL_CLASS, _TempNetAutoModel
        try:
            super()._create_model(*args, **kwargs)
        finally:
            self.AUTO_MODEL_CLASS = auto

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """[B, L] ids -> [B, L, V] logits (divided by tau, or the base model's own), then the logits processor."""
        proc = self.logits_processor
        if proc is None:
            return self._head_call(inps, attn_mask, labels)
        with proc if hasattr(proc, "__enter__") else nullcontext():
            logits = self._head_call(inps, attn_mask, labels)
            with torch.no_grad():
                return proc.positions(inps, logits)

    def _head_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """[B, L] ids -> [B, L, V] logits: divided by tau, or (apply_tempnet=false) the base model's own."""
        if self.apply_tempnet or not isinstance(self.model, TempNetCausalLMMixin):
            return super()._model_call(inps, attn_mask, labels)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            # the base class's forward, bypassing the head: bit-identical to `--model hf` on the base weights
            return super(TempNetCausalLMMixin, self.model).forward(input_ids=inps).logits

    def _model_generate(self, *args, **kwargs):
        proc = self.logits_processor
        if proc is not None:  # generate_until samples through the same rule
            kwargs["logits_processor"] = [proc]
        with self._tau_one(), proc if hasattr(proc, "__enter__") else nullcontext():
            return super()._model_generate(*args, **kwargs)

    @contextmanager
    def _tau_one(self):
        """With apply_tempnet=false, generation runs with the head replaced by tau = 1 (restored after)."""
        if self.apply_tempnet or not isinstance(self.model, TempNetCausalLMMixin):
            yield
            return
        head = self.model.tempnet
        self.model.tempnet = FixedTemperature(1.0)
        try:
            yield
        finally:
            self.model.tempnet = head
