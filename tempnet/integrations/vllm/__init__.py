"""Serve a TempNet model with vLLM through vLLM's own plugin points (no fork).

    processors.TempNetLogitsProcessor   the logits processor (`logits_processors=[...]` on `vllm.LLM`,
                                        `--logits-processors` on the server; `PROCESSOR` names it)
    models.TempNetLlamaForCausalLM      vLLM's LLaMA with the checkpoint's `tempnet.*` tensors left out of its loader
    register()                          the `vllm.general_plugins` entry point (pyproject.toml) that registers it
    serve_argv()                        vLLM server arguments of `tempnet serve`

This module imports no vLLM itself: vLLM loads general plugins in every process, the API server's included,
before anything else, so the model class is registered by name and imported by vLLM when it builds the model.
The TempNet is the served checkpoint's, or an exported file named by `hf_overrides={"tempnet_file": PATH}`.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from tempnet.errors import UserError
from tempnet.integrations.serving import TEMPNET_FILE_KEY

__all__ = ["PROCESSOR", "register", "serve_argv"]

#: What `--logits-processors` (or `logits_processors=[...]`) takes to name TempNet's processor.
PROCESSOR = "tempnet.integrations.vllm.processors:TempNetLogitsProcessor"
#: Architectures served by `models.TempNetLlamaForCausalLM`: ours (config.json of a checkpoint we save) and the
#: released layout's (the authors' class name, model_type "llama", weights that also hold `tempnet.*`).
ARCHITECTURES = ("LlamaTempNetForCausalLM", "LLaMA_TempNet")


def register() -> None:
    """Register our model_type ("llama_tempnet") with transformers' AutoConfig and `ARCHITECTURES` with vLLM's
    ModelRegistry; runs in every vLLM process before the model's config is read (safe to run again)."""
    from vllm import ModelRegistry

    import tempnet.integrations.hf  # noqa: F401  (registering our config classes is a side effect of importing it)

    for arch in ARCHITECTURES:
        ModelRegistry.register_model(arch, "tempnet.integrations.vllm.models:TempNetLlamaForCausalLM")


def serve_argv(checkpoint: str, vllm_args: Sequence[str], tempnet_file: str | None = None) -> list[str]:
    """vLLM OpenAI server arguments for `tempnet serve CHECKPOINT [vLLM server flags]`: the model, the processor,
    the TempNet file (merged into the user's own --hf-overrides, if any), then the user's flags unchanged."""
    argv = ["--model", checkpoint, "--logits-processors", PROCESSOR]
    if tempnet_file is None:
        return argv + list(vllm_args)
    overrides: dict[str, Any] = {}
    rest, args = [], iter(vllm_args)
    for arg in args:
        if arg == "--hf-overrides" or arg.startswith("--hf-overrides="):
            value = next(args, "{}") if arg == "--hf-overrides" else arg.split("=", 1)[1]
            try:
                overrides.update(json.loads(value))
            except json.JSONDecodeError as exc:
                raise UserError(f"--hf-overrides {value!r} is not a JSON object: {exc}") from None
        else:
            rest.append(arg)
    overrides[TEMPNET_FILE_KEY] = tempnet_file
    return argv + ["--hf-overrides", json.dumps(overrides)] + rest
