"""Move a trained TempNet between checkpoints: export it alone, attach it to a base model again.

The LLaMA-2 setting trains a TempNet on a frozen LLM; what is worth shipping is the TempNet alone
(a few MB), which `export_tempnet` writes to one safetensors file (weights + settings + vocabulary
size as metadata). `attach_tempnet` loads a base checkpoint as its TempNet wrapper class with that
head, ready for `generate` or `save_pretrained`; `TempNetLogitsProcessor(load_tempnet_file(f)[0])`
uses it with any model instead.
"""

from __future__ import annotations

import os

import torch

from tempnet.integrations.head import (DOWNLOAD_KEYS, PREFIX, build_head, check_head_shapes, checkpoint_shapes,
                                       head_shapes, load_tempnet_file, read_checkpoint_tensors,
                                       released_state, resolve_settings, save_tempnet_file)
from tempnet.integrations.hf import TempNetCausalLMMixin, tempnet_model_from_pretrained

__all__ = ["export_tempnet", "attach_tempnet", "load_tempnet_file"]


def export_tempnet(source: TempNetCausalLMMixin | str | os.PathLike, file: str | os.PathLike,
                   dtype: torch.dtype | None = None) -> None:
    """Write the TempNet of a wrapper model, or of a checkpoint (read without loading the LLM), to `file`.

    dtype: store the weights in this dtype (e.g. torch.float16 as the authors ship them); default as is.
    """
    if isinstance(source, TempNetCausalLMMixin):
        save_tempnet_file(source.tempnet, source.tempnet_config, source.config.vocab_size, file, dtype)
        return
    from transformers import PreTrainedConfig

    config_dict, _ = PreTrainedConfig.get_config_dict(source)
    vocab = config_dict["vocab_size"]
    found = {k[len(PREFIX):]: v for k, v in checkpoint_shapes(source).items()}
    settings = resolve_settings(config_dict.get("tempnet"), found, {})
    check_head_shapes(source, found, head_shapes(settings, vocab), settings, vocab)
    head = build_head(settings, vocab)
    state = {k[len(PREFIX):]: v for k, v in read_checkpoint_tensors(source).items()}
    head.load_state_dict(released_state(state))  # the released export's 0-dim scaler becomes [1]
    save_tempnet_file(head, settings, vocab, file, dtype)


def attach_tempnet(base: str | os.PathLike, file: str | os.PathLike, **from_pretrained_kwargs) -> TempNetCausalLMMixin:
    """Load checkpoint `base` (a plain HF causal LM or a TempNet checkpoint) with the TempNet in `file`.

    The file's vocabulary size must match the base model's. kwargs go to `from_pretrained` (dtype,
    device_map, ...). Returns the wrapper model, in eval mode.
    """
    from transformers import PreTrainedConfig

    head, settings, vocab = load_tempnet_file(file)
    download = {k: v for k, v in from_pretrained_kwargs.items() if k in DOWNLOAD_KEYS}
    base_vocab = PreTrainedConfig.get_config_dict(base, **download)[0].get("vocab_size")
    if settings.objective.startswith("tempnet") and base_vocab != vocab:
        raise ValueError(f"the TempNet in {file} was built for vocabulary size {vocab} but {base} has vocabulary "
                         f"size {base_vocab}")
    model = tempnet_model_from_pretrained(base, fresh_tempnet=True, **settings.to_dict(), **from_pretrained_kwargs)
    state = {k: v.to(model.tempnet.get_parameter(k).device) for k, v in head.state_dict().items()}
    model.tempnet.load_state_dict(state)
    return model.eval()
