"""Hugging Face causal LMs with a temperature head (TempNet or an ablation baseline).

The TempNet class of every causal-LM family (`tempnet_class_for("qwen2")` -> `Qwen2TempNetForCausalLM`;
`LlamaTempNetForCausalLM`, `GPT2TempNetForCausalLM`, `GPTNeoXTempNetForCausalLM` as before) is the
family's own `*ForCausalLM` class plus a `tempnet` submodule (`tempnet.integrations.families` derives it),
so one checkpoint holds base weights and `tempnet.*` weights, config.json holds the head's settings
under "tempnet" and model_type "<family>_tempnet". forward(labels=...) returns the objective's
loss (by default fused with the LM head, `tempnet.losses.fused.linear_tempnet_dro_loss`, so no full-vocabulary
tensor is kept; else the objective's `loss`) and the per-position tau; without labels it returns the logits
already divided by tau, so `generate` (any strategy, KV cache, left padding) and pipelines work
unchanged. The head always reads the detached logits (TempNet shifts them by their max itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers import initialization as hf_init
from transformers.modeling_outputs import CausalLMOutputWithPast

from tempnet.errors import ConfigError
from tempnet.integrations import families
from tempnet.integrations.decoding import TempNetLogitsProcessor  # noqa: F401  (public name, see tempnet.__init__)
from tempnet.integrations.fused_probe import fused_logits_mismatch
from tempnet.integrations.head import (DOWNLOAD_KEYS, PREFIX, RELEASED_TEMPNET, TempNetConfig, check_base_loaded,
                                       check_head_shapes, checkpoint_shapes, head_shapes, load_head_tensors,
                                       quiet_loading_report, resolve_settings, zero_dim_keys)
from tempnet.losses.fused import linear_tempnet_dro_loss

IGNORE_INDEX = -100

__all__ = [
    "TempNetConfig", "TempNetCausalLMOutput", "LlamaTempNetForCausalLM", "GPT2TempNetForCausalLM",
    "GPTNeoXTempNetForCausalLM", "LLaMA_TempNet", "TempNetLogitsProcessor", "tempnet_model_from_config",
    "tempnet_model_from_pretrained", "tempnet_class_for", "checkpoint_family",
]

logger = logging.getLogger(__name__)


@dataclass
class TempNetCausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast (logits divided by tau) plus tau [B, L, 1] float32 and the objective's terms."""

    tau: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


class TempNetCausalLMMixin:
    """Adds the temperature head to a HF causal LM class; put it first in the bases.

    The head is `self.tempnet`: TempNet for "tempnet_ce"/"tempnet_dro", GlobalTemperature for "dro",
    FixedTemperature for "ce" (all from `tempnet.modules`). Its parameters stay in float32 when the
    model is loaded in half precision (they are small, and TempNet is often the only thing trained).
    `self.tempnet_objective` (a `tempnet.losses.objectives.Objective`) is config.tempnet parsed once, when the
    head is built: change the settings by `reset_tempnet` or `use_fused_loss`, not by editing config.tempnet.
    """

    _keep_in_fp32_modules_strict = ["tempnet"]

    def __init__(self, config: PreTrainedConfig):
        super().__init__(config)
        self._attach_head()
        self.post_init()  # initialises only the new head: the base modules are already marked initialised

    # ---- the head --------------------------------------------------------------------------------
    @property
    def tempnet_config(self) -> TempNetConfig:
        """The head's settings: config.tempnet as parsed when the head was built (the released defaults if none)."""
        return self.tempnet_objective.settings

    def _attach_head(self) -> None:
        """Parse config.tempnet into `tempnet_objective` (config.tempnet records the rho it resolves) and build
        the head."""
        stored = getattr(self.config, "tempnet", None)
        settings = TempNetConfig.from_dict(stored) if stored else RELEASED_TEMPNET
        objective = settings.build(self.config.vocab_size)
        if stored and settings.rho is None and objective.robust:
            objective = settings.replace(rho=objective.rho).build(self.config.vocab_size)
            self.config.tempnet = objective.settings.to_dict()
        self.tempnet_objective, self.tempnet = objective, objective.build_head()

    def reset_tempnet(self, **overrides) -> nn.Module:
        """Replace the head by a fresh one (settings updated by `overrides`), on the LM head's device."""
        self.config.tempnet = self.tempnet_config.replace(**overrides).to_dict()
        device = self.get_output_embeddings().weight.device
        self._attach_head()
        return self.tempnet.to(device).train(self.training)

    def use_fused_loss(self, fused: bool = True) -> None:
        """Train through the fused loss (`TempNetSettings.fused_loss`) or the full-logits path; the head is kept."""
        settings = self.tempnet_config.replace(fused_loss=fused)
        self.config.tempnet, self.tempnet_objective = settings.to_dict(), settings.build(self.config.vocab_size)

    def freeze_base(self) -> "TempNetCausalLMMixin":
        """Leave only the head trainable (the paper's LLaMA-2 setting: LLM frozen, TempNet trained)."""
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith(PREFIX))
        return self

    def _init_weights(self, module: nn.Module) -> None:
        head = self.__dict__.get("_modules", {}).get("tempnet")
        if head is None:
            return super()._init_weights(module)
        if module is head:  # a freshly built head, copied into every parameter that was not loaded
            fresh = self.tempnet_objective.build_head()
            for name, param in module.named_parameters():
                hf_init.copy_(param, fresh.get_parameter(name).to(param))
        elif not any(module is m for m in head.modules()):
            super()._init_weights(module)

    # ---- forward and generation -------------------------------------------------------------------
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs) -> TempNetCausalLMOutput | tuple:
        """The base forward, then tau = head(logits.detach()) and logits / tau.

        labels [B, L]: the input ids (shifted inside), -100 ignored; loss = the objective of
        `tempnet_config` (per-token mean). Returns logits [B, L, V] float32 divided by tau, tau [B, L, 1]
        float32, loss_terms (loss, ce, tau_mean/min/max). With labels and `tempnet_config.fused_loss`
        the loss comes from `tempnet.losses.fused.linear_tempnet_dro_loss` over the backbone's hidden states, no
        full-vocabulary tensor is kept, and logits is None; otherwise from the objective's `loss`.
        """
        kwargs.pop("num_items_in_batch", None)  # the core averages over the batch's non-ignored tokens
        return_dict = kwargs.pop("return_dict", None)
        if labels is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("labels need the logits of every position: do not pass logits_to_keep with labels")
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      inputs_embeds=inputs_embeds, **kwargs)
        if labels is not None and self.tempnet_config.fused_loss and not self._zero3_partitioned() \
                and self.fused_loss_reproduces_logits():
            result = self._fused_loss_forward(labels, **inputs)
        else:
            result = self._logits_forward(labels, logits_to_keep, **inputs)
        return result if return_dict is not False else result.to_tuple()

    def _logits_forward(self, labels, logits_to_keep, **inputs) -> TempNetCausalLMOutput:
        """The full-logits path: the base model's logits, tau from them, the objective's loss."""
        out = super().forward(logits_to_keep=logits_to_keep, return_dict=True, **inputs)
        logits = out.logits  # [B, L, V]
        tau = self.tempnet(logits.detach())  # [B, L, 1] float32
        terms = None
        if labels is not None:
            vocab = logits.shape[-1]
            labels = labels.to(logits.device)
            terms = self.tempnet_objective.loss(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                                tau[:, :-1].reshape(-1, 1))
        # With labels the loss already holds the graph: the returned logits / tau are then a plain tensor, so
        # training keeps no second float32 copy of the logits alive until backward.
        with torch.set_grad_enabled(torch.is_grad_enabled() and terms is None):
            scaled = logits.float() / tau  # [B, L, V]
        fields = {k: v for k, v in out.items() if k in TempNetCausalLMOutput.__dataclass_fields__}  # cache, ...
        fields.update(loss=None if terms is None else terms["loss"], logits=scaled)
        return TempNetCausalLMOutput(**fields, tau=tau, loss_terms=terms)

    def _fused_loss_forward(self, labels, **inputs) -> TempNetCausalLMOutput:
        """The backbone's hidden states, then LM head + head + loss fused by `linear_tempnet_dro_loss`."""
        embeds = inputs.get("inputs_embeds")
        base_trains = any(p.requires_grad for n, p in self.named_parameters() if not n.startswith(PREFIX)) or (
            embeds is not None and embeds.requires_grad)
        # a frozen base (freeze_base(): only the head trains) keeps no activations for a backward
        with torch.set_grad_enabled(torch.is_grad_enabled() and base_trains):
            out = self.base_model(return_dict=True, **inputs)
        hidden = out.last_hidden_state  # [B, L, d]
        batch, length, width = hidden.shape
        lm_head = self.get_output_embeddings()  # handles tied input/output embeddings
        labels = labels.to(hidden.device)
        # position t predicts token t + 1; the last position predicts nothing but still gets its tau
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # [B, L]
        objective = self.tempnet_objective
        terms = linear_tempnet_dro_loss(hidden.reshape(-1, width), lm_head.weight, targets.reshape(-1), self.tempnet,
                                        objective.rho, objective=objective, lm_head_bias=lm_head.bias,
                                        ignore_index=IGNORE_INDEX)
        tau = terms.pop("tau").reshape(batch, length, 1)  # [B, L, 1], detached
        fields = {k: v for k, v in out.items()
                  if k in TempNetCausalLMOutput.__dataclass_fields__ and k != "last_hidden_state"}  # cache, ...
        return TempNetCausalLMOutput(**fields, loss=terms["loss"], logits=None, tau=tau, loss_terms=terms)

    def fused_loss_reproduces_logits(self) -> bool:
        """Whether the fused loss sees exactly the logits of this family's own forward (checked once).

        The fused path computes z = last_hidden_state @ W^T (+ b). A family whose forward scales the hidden
        state before its LM head, or post-processes the head's output (Gemma 2's final_logit_softcapping, a
        logit scale), produces other logits: then training takes the full-logits path (said once in the log),
        so it never trains on logits that generation does not use. The verdict comes from one evaluation-mode
        forward over 8 tokens, comparing the family's logits with what its LM head received and returned, and that
        with the plain linear map of the head's weight and bias (a head module with its own logit scale differs).
        """
        return self.fused_loss_declined() is None

    def fused_loss_declined(self) -> str | None:
        """Why the fused loss would not see this family's own logits (see `fused_loss_reproduces_logits`), or None."""
        if "_fused_verdict" not in self.__dict__:
            base_forward = partial(super().forward, use_cache=False, return_dict=True)  # the family's own
            reason = self._fused_verdict = fused_logits_mismatch(self, base_forward)
            if reason is not None:
                logger.warning("%s: %s, so the fused loss is not used (full-logits path)", type(self).__name__, reason)
        return self._fused_verdict

    def _zero3_partitioned(self) -> bool:
        """True when DeepSpeed ZeRO-3 partitions the weights: the fused op reads the LM head's weight outside
        a module call, which ZeRO-3 does not gather, so the full-logits path serves that case."""
        return hasattr(self.get_output_embeddings().weight, "ds_id")

    @torch.no_grad()
    def sequence_tau(self, sequences: torch.LongTensor, prompt_attention_mask: torch.Tensor | None = None,
                     prompt_length: int | None = None) -> torch.Tensor:
        """tau used for each token after the prompt: [B, T - P] float32, by one forward over `sequences`.

        Args:
            sequences: [B, T] prompt (possibly left-padded) followed by generated tokens.
            prompt_attention_mask: [B, P] mask of the prompt (None: no padding).
            prompt_length: P; taken from the mask when omitted.
        """
        batch, total = sequences.shape
        if prompt_length is None:
            if prompt_attention_mask is None:
                raise ValueError("sequence_tau needs prompt_length or prompt_attention_mask")
            prompt_length = prompt_attention_mask.shape[1]
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(batch, prompt_length, dtype=torch.long, device=sequences.device)
        if prompt_attention_mask.shape[0] != batch:  # num_return_sequences > 1: rows grouped by prompt
            prompt_attention_mask = prompt_attention_mask.repeat_interleave(batch // prompt_attention_mask.shape[0], 0)
        new = torch.ones(batch, total - prompt_length, dtype=prompt_attention_mask.dtype, device=sequences.device)
        mask = torch.cat([prompt_attention_mask.to(sequences.device), new], dim=1)  # [B, T]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self(input_ids=sequences, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.tau[:, prompt_length - 1:total - 1, 0]

    def generate(self, *args, return_tau: bool = False, **kwargs):
        """GenerationMixin.generate; with return_tau=True the output (a dict-like GenerateOutput) also has
        "tau": [B, new tokens], the temperature used for each generated token (see `sequence_tau`)."""
        if not return_tau:
            return super().generate(*args, **kwargs)
        prompt = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
        if prompt is None:
            raise ValueError("generate(return_tau=True) needs the prompt ids (inputs_embeds alone are not supported)")
        kwargs["return_dict_in_generate"] = True
        out = super().generate(*args, **kwargs)
        out["tau"] = self.sequence_tau(out.sequences, kwargs.get("attention_mask"), prompt.shape[1])
        return out

    # ---- checkpoints ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, fresh_tempnet: bool = False,
                        tempnet_overrides: dict[str, Any] | None = None, **kwargs):
        """PreTrainedModel.from_pretrained that checks the checkpoint's `tempnet.*` weights first.

        A checkpoint without them (a plain base model), or with a head of another shape (another
        vocabulary, hidden size or objective), is an error unless `fresh_tempnet=True`, which starts a
        new head. `tempnet_overrides` updates the stored settings (e.g. {"rho": 8.5}). The released
        layout (no TempNet settings in config.json) loads with `RELEASED_TEMPNET`.
        """
        path = pretrained_model_name_or_path
        download = {k: kwargs[k] for k in DOWNLOAD_KEYS if k in kwargs}
        config = kwargs.get("config")
        if not isinstance(config, PreTrainedConfig):
            config_dict, _ = PreTrainedConfig.get_config_dict(config or path, **download)
            stored, vocab = config_dict.get("tempnet"), config_dict.get("vocab_size")
        else:
            stored, vocab = getattr(config, "tempnet", None), config.vocab_size
        found = {k[len(PREFIX):]: v for k, v in checkpoint_shapes(path, **download).items()}
        settings = resolve_settings(stored, found, tempnet_overrides or {})
        expected = head_shapes(settings, vocab)
        if not fresh_tempnet:
            check_head_shapes(path, found, expected, settings, vocab)
        if isinstance(config, PreTrainedConfig):
            config.tempnet = settings.to_dict()
        else:
            kwargs["tempnet"] = settings.to_dict()
        want_info = kwargs.pop("output_loading_info", False)
        if fresh_tempnet:  # the stored head (if any) is replaced: its missing or mismatched keys are expected
            mismatched = any(expected.get(k) not in (None, shape) for k, shape in found.items())
            kwargs["ignore_mismatched_sizes"] = kwargs.get("ignore_mismatched_sizes", False) or mismatched
            with quiet_loading_report():
                model, info = super().from_pretrained(path, *model_args, output_loading_info=True, **kwargs)
            check_base_loaded(path, info)  # size mismatches are ignored for the head only
            model.reset_tempnet()
        elif zero_dim_keys(found):  # the authors' Megatron export stores `scaler` 0-dim: copied in as [1] below
            kwargs["ignore_mismatched_sizes"] = True
            with quiet_loading_report():
                model, info = super().from_pretrained(path, *model_args, output_loading_info=True, **kwargs)
            check_base_loaded(path, info)
            load_head_tensors(model.tempnet, path, zero_dim_keys(found), **download)
            info["mismatched_keys"] = [k for k in info["mismatched_keys"]
                                       if (k[0] if isinstance(k, tuple) else k)[len(PREFIX):] not in found]
        else:
            model, info = super().from_pretrained(path, *model_args, output_loading_info=True, **kwargs)
        model.tempnet.float()  # the head computes in float32; keep its weights there in half-precision models
        model._settle_fused_loss()
        return (model, info) if want_info else model

    def _settle_fused_loss(self) -> None:
        """Decide `fused_loss_reproduces_logits` now (a fresh or loaded model), before any hook of the caller's
        sees the probe; ZeRO-3-partitioned weights cannot run it outside the engine (that path is never fused)."""
        if self.tempnet_config.fused_loss and not self._zero3_partitioned() and \
                self.get_output_embeddings().weight.device.type != "meta":
            self.fused_loss_reproduces_logits()


# ---- the classes of every causal-LM family (tempnet.integrations.families) ----------------------------

def tempnet_class_for(model_type: str) -> type[TempNetCausalLMMixin]:
    """The TempNet class of a causal-LM family: "qwen2" or "qwen2_tempnet" -> Qwen2TempNetForCausalLM.

    Derived from the family's own `*ForCausalLM` class (transformers' causal-LM auto mapping) on first use;
    a model_type that is not a causal LM is a ValueError.
    """
    return families.derive(model_type, TempNetCausalLMMixin, __name__)


families.install_lazy_types(tempnet_class_for)
LlamaTempNetForCausalLM = tempnet_class_for("llama")
GPT2TempNetForCausalLM = tempnet_class_for("gpt2")
GPTNeoXTempNetForCausalLM = tempnet_class_for("gpt_neox")
LlamaTempNetConfig = LlamaTempNetForCausalLM.config_class
GPT2TempNetConfig = GPT2TempNetForCausalLM.config_class
GPTNeoXTempNetConfig = GPTNeoXTempNetForCausalLM.config_class

#: The authors' class name, so their README snippet (`LLaMA_TempNet.from_pretrained(...)`) runs.
LLaMA_TempNet = LlamaTempNetForCausalLM


def __getattr__(name: str):
    """Any family's classes by name (e.g. `Qwen2TempNetForCausalLM`), made on first use (pickle finds them too)."""
    family = families.family_of_class_name(name)
    if family is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = tempnet_class_for(family)
    return cls.config_class if name.endswith("Config") else cls


def _split_settings(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TempNetConfig fields, the rest). Note: hidden_size here means TempNet's width."""
    names = set(TempNetConfig.__dataclass_fields__)
    return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}


def tempnet_model_from_config(base_config: PreTrainedConfig, **settings) -> TempNetCausalLMMixin:
    """A randomly initialised base model (from the config of any causal-LM family) with a head.

    settings: TempNetConfig fields (objective, rho, tau, tau_min, tau_max, hidden_size, dropout).
    """
    cls = tempnet_class_for(base_config.model_type)
    base_config = families.text_section(base_config, cls.config_class)  # (a multimodal family's text config)
    data = {k: v for k, v in base_config.to_dict().items() if k not in ("model_type", "transformers_version")}
    stored = getattr(base_config, "tempnet", None)
    tempnet = (TempNetConfig.from_dict(stored) if stored else TempNetConfig()).replace(**settings)
    data["tempnet"] = tempnet.to_dict()
    model = cls(cls.config_class(**data))
    model._settle_fused_loss()
    return model


def checkpoint_family(path, **download_kwargs) -> str:
    """The causal-LM family of a checkpoint's config.json; a ConfigError (a ValueError) for any other model."""
    config_dict, _ = PreTrainedConfig.get_config_dict(path, **download_kwargs)
    if "model_type" not in config_dict:
        raise ConfigError(f"config.json of {path} has no model_type")
    return families.check_causal_lm(config_dict["model_type"])


def tempnet_model_from_pretrained(path, fresh_tempnet: bool = False, dtype: torch.dtype | str | None = None,
                                  **kwargs) -> TempNetCausalLMMixin:
    """Load a base checkpoint (plain HF causal LM, or one with `tempnet.*` weights) as its wrapper class.

    kwargs that are TempNetConfig fields override the head's settings (hidden_size is TempNet's width);
    the rest go to `from_pretrained` (device_map, revision, ...).
    """
    settings, hf_kwargs = _split_settings(kwargs)
    cls = tempnet_class_for(checkpoint_family(path, **{k: hf_kwargs[k] for k in DOWNLOAD_KEYS if k in hf_kwargs}))
    if dtype is not None:
        hf_kwargs["dtype"] = dtype
    return cls.from_pretrained(path, fresh_tempnet=fresh_tempnet, tempnet_overrides=settings, **hf_kwargs)
