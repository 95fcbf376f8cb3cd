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
from safetensors import SafetensorError

from tempnet.errors import DataError, UserError, check_model_dir

from tempnet.integrations.head import (DOWNLOAD_KEYS, PREFIX, build_head, check_head_shapes, checkpoint_shapes,
                                       fits_vocab, head_shapes, load_tempnet_file, read_checkpoint_tensors,
                                       released_state, resolve_settings, save_tempnet_file)
from tempnet.integrations.hf import TempNetCausalLMMixin, tempnet_model_from_pretrained

__all__ = ["export_tempnet", "attach_tempnet", "load_tempnet_file", "check_output_file", "read_tempnet_file"]


def export_tempnet(source: TempNetCausalLMMixin | str | os.PathLike, file: str | os.PathLike,
                   dtype: torch.dtype | None = None) -> None:
    """Write the TempNet of a wrapper model, or of a checkpoint (read without loading the LLM), to `file`.

    dtype: store the weights in this dtype (e.g. torch.float16 as the authors ship them); default as is.
    """
    check_output_file(file)
    if isinstance(source, TempNetCausalLMMixin):
        _write(source.tempnet, source.tempnet_config, source.config.vocab_size, file, dtype)
        return
    from transformers import PreTrainedConfig

    check_model_dir(source, "checkpoint")
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(source)
    except OSError as exc:  # not on the Hub and not cached, or no network
        raise UserError(f"cannot read the config of {source}: {str(exc).splitlines()[0]}") from None
    vocab = config_dict["vocab_size"]
    found = {k[len(PREFIX):]: v for k, v in checkpoint_shapes(source).items()}
    if not found:
        raise UserError(f"{source} holds no TempNet weights ({PREFIX}* tensors): export needs a checkpoint trained "
                        "with TempNet")
    settings = resolve_settings(config_dict.get("tempnet"), found, {})
    check_head_shapes(source, found, head_shapes(settings, vocab), settings, vocab)
    head = build_head(settings, vocab)
    state = {k[len(PREFIX):]: v for k, v in read_checkpoint_tensors(source).items()}
    head.load_state_dict(released_state(state))  # the released export's 0-dim scaler becomes [1]
    _write(head, settings, vocab, file, dtype)


def check_output_file(file: str | os.PathLike) -> None:
    """`file` may be written: it does not exist or is a regular file. A symlink, a directory or a
    special file (a FIFO, a device) is refused rather than replaced or written through: a wrong OUT
    argument must not clobber what the link points to."""
    path = os.fspath(file)
    if os.path.islink(path):
        raise UserError(f"{path} is a symbolic link: give the path of a regular file (e.g. its target)")
    if os.path.exists(path) and not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "a special file (not a regular file)"
        raise UserError(f"{path} is {kind}: give the path of a .safetensors file to write")


def _write(head, settings, vocab: int, file, dtype) -> None:
    try:
        save_tempnet_file(head, settings, vocab, file, dtype)
    except (OSError, SafetensorError) as exc:  # no such parent, a file where a directory should be, no space ...
        raise UserError(f"cannot write {file}: {exc}") from None


def read_tempnet_file(file: str | os.PathLike):
    """`load_tempnet_file`, with a file that is not a TempNet export a UserError naming it."""
    try:
        return load_tempnet_file(file)
    except (SafetensorError, ValueError) as exc:  # not safetensors, or no TempNet metadata
        raise UserError(f"{file} is not a TempNet export (tempnet export writes one): {exc}") from None


def attach_tempnet(base: str | os.PathLike, file: str | os.PathLike, **from_pretrained_kwargs) -> TempNetCausalLMMixin:
    """Load checkpoint `base` (a plain HF causal LM or a TempNet checkpoint) with the TempNet in `file`.

    The file's vocabulary size must match the base model's. kwargs go to `from_pretrained` (dtype,
    device_map, ...). Returns the wrapper model, in eval mode.
    """
    from transformers import PreTrainedConfig

    head, settings, vocab = read_tempnet_file(file)
    download = {k: v for k, v in from_pretrained_kwargs.items() if k in DOWNLOAD_KEYS}
    base_vocab = PreTrainedConfig.get_config_dict(base, **download)[0].get("vocab_size")
    if not fits_vocab(head, base_vocab):
        raise DataError(f"the TempNet in {file} was built for vocabulary size {vocab} but {base} has vocabulary "
                         f"size {base_vocab}")
    model = tempnet_model_from_pretrained(base, fresh_tempnet=True, **settings.to_dict(), **from_pretrained_kwargs)
    state = {k: v.to(model.tempnet.get_parameter(k).device) for k, v in head.state_dict().items()}
    model.tempnet.load_state_dict(state)
    return model.eval()
