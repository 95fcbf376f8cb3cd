"""Tiny random configs for any causal-LM family of transformers (for the family sweep).

`tiny_config(model_type)` starts from the family's defaults and shrinks every size key it has (hidden width,
layers, heads, experts, vocabulary, positions); `None` plus the reason when the family cannot be made tiny
that way (its config cannot be built, the model stays above `MAX_PARAMS`, or the family's own model, without
TempNet, fails on it: then there is nothing for the wrapper to reproduce).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from tempnet.integrations import families

VOCAB = 160
MAX_PARAMS = 400_000

#: Config keys of the same meaning across families, and their tiny values.
SIZES = {
    ("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "n_embed", "hidden_dim", "model_dim"): 32,
    ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers"): 2,
    ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads", "encoder_attention_heads"): 2,
    ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num", "num_key_value_groups"): 1,
    ("head_dim", "kv_channels", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "qk_head_dim",
     "attention_head_dim", "head_size"): 16,
    ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size", "moe_intermediate_size",
     "shared_expert_intermediate_size", "decoder_ffn_dim", "encoder_ffn_dim", "expert_ffn_hidden_size",
     "moe_ffn_hidden_size", "ff_dim"): 64,
    ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "n_experts"): 4,
    ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "moe_k"): 2,
    ("vocab_size",): VOCAB,
    ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"): 128,
    ("q_lora_rank", "kv_lora_rank"): 16,
    ("sliding_window",): 8,
    ("n_group", "topk_group", "num_expert_group", "topk_groups"): 1,
    ("rotary_dim", "rotary_emb_base_dim"): 8,
    ("pad_token_id",): 0, ("bos_token_id",): 1, ("eos_token_id",): 2,
}


def _names(config_cls) -> set[str]:
    fields = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    return fields | set(getattr(config_cls, "attribute_map", {}) or {})


def _tiny_kwargs(config_cls) -> dict:
    names = _names(config_cls)
    return {key: value for keys, value in SIZES.items() for key in keys if key in names}


def tiny_config(model_type: str):
    """(config, None) with every size key shrunk, or (None, reason) when that does not make it tiny."""
    config_cls = CONFIG_MAPPING[model_type]
    kwargs = _tiny_kwargs(config_cls)
    for name, sub in (getattr(config_cls, "sub_configs", None) or {}).items():
        sub_cls = getattr(sub, "config_class", sub)
        if isinstance(sub_cls, type):
            kwargs[name] = _tiny_kwargs(sub_cls)
    try:
        config = config_cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 (the reason is reported)
        return None, f"config does not build with tiny sizes ({type(exc).__name__}: {str(exc)[:80]})"
    # the causal LM of a multimodal family is built from the text section alone (transformers' rule, as the wrapper's)
    own = config if isinstance(config, families.config_class(model_type)) else config.get_text_config()
    try:
        with torch.device("meta"):  # sized without memory: a family with an unshrunk size key stays large
            count = parameter_count(MODEL_FOR_CAUSAL_LM_MAPPING[config_cls](own))
    except Exception as exc:  # noqa: BLE001
        return None, f"model does not build with tiny sizes ({type(exc).__name__}: {str(exc)[:80]})"
    if count > MAX_PARAMS:
        return None, f"{count:,} parameters with every known size key shrunk (> {MAX_PARAMS:,})"
    try:  # the family's own model, without TempNet, must run and backpropagate on this config
        ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
        MODEL_FOR_CAUSAL_LM_MAPPING[config_cls](own).eval()(input_ids=ids, labels=ids).loss.backward()
    except Exception as exc:  # noqa: BLE001
        return None, f"the family's own model fails on the tiny config ({type(exc).__name__}: {str(exc)[:80]})"
    return config, None


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
