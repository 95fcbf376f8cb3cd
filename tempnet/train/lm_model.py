"""Tokenizer and model of the LLM trainer, built through the Hugging Face integration.

scratch   a random model of any causal-LM family (`model.arch`) from `model.base` with the objective's head;
finetune  `model.path` loaded with its head (or a fresh one), everything trained;
frozen    `model.path` loaded, `freeze_base()`: only the head (TempNet) is trained.
"""

from __future__ import annotations

import math

from tempnet.errors import ConfigError, check_model_path
from tempnet.train.inputs import load_pretrained
from tempnet.train.protocol import say

__all__ = ["load_tokenizer", "build_model", "head_settings"]


def load_tokenizer(cfg):
    """The tokenizer of `model.tokenizer` (default `model.path`)."""
    from transformers import AutoTokenizer

    name = cfg.model.tokenizer or cfg.model.path
    if not name:
        raise ConfigError("model.mode=scratch needs model.tokenizer (a Hub name or a tokenizer directory)")
    field = "model.tokenizer" if cfg.model.tokenizer else "model.path"
    return load_pretrained(AutoTokenizer.from_pretrained, check_model_path(name, field), field)



def head_settings(cfg) -> dict:
    """The TempNetConfig fields of the integration (objective, rho, tau, tau range, width, dropout)."""
    return {"objective": cfg.objective, **cfg.tempnet.head()}


def _check_vocab(model, tokenizer) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary size is "
                         f"{model.config.vocab_size}: set model.base.vocab_size >= {len(tokenizer)} or use the "
                         "model's own tokenizer")


#: Model types whose position embeddings are a learned table: a longer input indexes past its end.
LEARNED_POSITIONS = ("gpt2", "gpt_neo", "opt", "gpt_bigcode", "biogpt")


def _check_positions(model, seq_len: int, scratch: bool) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if model.config.model_type.removesuffix("_tempnet") in LEARNED_POSITIONS and limit is not None and seq_len > limit:
        fix = "model.base.n_positions" if scratch else "a model with more positions"
        raise ConfigError(f"data.seq_len={seq_len} is larger than the model's {limit} positions "
                          f"(max_position_embeddings): lower data.seq_len or use {fix}")


def _load_or_create(cfg, tokenizer):
    """The scratch model of `model.arch`, or `model.path` loaded as its family's TempNet class."""
    from tempnet.integrations.families import config_class
    from tempnet.integrations.head import DTYPES
    from tempnet.integrations.hf import tempnet_model_from_config, tempnet_model_from_pretrained

    m = cfg.model
    if m.mode == "scratch":
        special = {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                   if getattr(tokenizer, k) is not None}
        return tempnet_model_from_config(config_class(m.arch)(**{**special, **m.base}), **head_settings(cfg))
    return load_pretrained(tempnet_model_from_pretrained, check_model_path(m.path, "model.path"), "model.path",
                           fresh_tempnet=m.fresh_tempnet, dtype=DTYPES[m.dtype] if m.dtype else None,
                           **head_settings(cfg))


def _check_fused_loss(model, fused_loss: bool | None) -> None:
    """tempnet.fused_loss=true where the fused loss would not run: a ConfigError naming why (null falls back)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if fused_loss is not True:
        return
    if is_deepspeed_zero3_enabled():
        raise ConfigError("tempnet.fused_loss=true: DeepSpeed ZeRO-3 partitions the LM head's weight, which the fused "
                          "loss reads outside a module call; set tempnet.fused_loss=null (auto) or false")
    reason = model.fused_loss_declined()
    if reason is not None:
        raise ConfigError(f"tempnet.fused_loss=true: {reason}, so the fused loss would train on other logits than "
                          f"{model.config.model_type.removesuffix('_tempnet')}'s forward gives; set "
                          "tempnet.fused_loss=null (auto: the full-logits path) or false")


def build_model(cfg, tokenizer):
    """The TempNet causal LM for cfg.model.mode, on the CPU, in training mode.

    Trainable weights must be float32 unless DeepSpeed keeps float32 master copies (engine=deepspeed).
    """
    from tempnet.losses.lm import check_rho_vocab

    m = cfg.model
    try:
        model = _load_or_create(cfg, tokenizer)
    except ValueError as exc:  # a target entropy outside (0, log V]: known only once V is
        if isinstance(exc, ConfigError) or not str(exc).startswith("target_entropy"):
            raise
        raise ConfigError(f"tempnet.{exc}") from None
    _check_vocab(model, tokenizer)
    _check_positions(model, cfg.data.seq_len, m.mode == "scratch")
    objective = model.tempnet_objective
    if objective.robust:
        try:
            check_rho_vocab(objective.rho, model.config.vocab_size, cfg.tempnet.allow_large_rho)
        except ValueError as exc:
            raise ConfigError(f"tempnet.{exc}") from None
        say(f"tempnet: rho = {objective.rho:.4f}, target entropy log V - rho = "
            f"{math.log(model.config.vocab_size) - objective.rho:.4f} nats (V = {model.config.vocab_size})")
    _check_fused_loss(model, cfg.tempnet.fused_loss)
    if m.mode == "frozen":
        model.freeze_base()
    elif m.dtype not in (None, "float32") and cfg.engine.name != "deepspeed":
        raise ConfigError(f"model.dtype={m.dtype} with model.mode={m.mode}: the {cfg.engine.name} engine would train "
                         "half-precision weights without float32 master copies; load float32 and use "
                         "train.precision for mixed precision (or engine.name=deepspeed)")
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()
