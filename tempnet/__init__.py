"""TempNet: per-input softmax temperatures for large foundation models, trained by a DRO robust loss.

The core (this package's `modules`, `losses`, `ops`, `distributed`) needs only torch, the Hugging Face classes
transformers. Every name below is imported on first use (PEP 562), so `import tempnet` works without
transformers installed, and a tool that needs only a light module (`tempnet.errors`, `scripts/loss_compare.py`)
starts without importing torch.
"""

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_LAZY = {
    "losses": "tempnet.losses", "dro_lm_loss": "tempnet.losses",
    "FixedTemperature": "tempnet.modules", "GlobalTemperature": "tempnet.modules",
    "PrototypeTempNet": "tempnet.modules", "TempNet": "tempnet.modules",
    "linear_tempnet_dro_loss": "tempnet.ops",
    **{name: "tempnet.integrations.hf" for name in (
        "LlamaTempNetForCausalLM", "GPT2TempNetForCausalLM", "GPTNeoXTempNetForCausalLM", "LLaMA_TempNet",
        "TempNetLogitsProcessor", "TempNetConfig")},
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'tempnet' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    return module if module.__name__ == f"tempnet.{name}" else getattr(module, name)


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
