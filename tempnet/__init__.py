"""TempNet: per-input softmax temperatures for large foundation models, trained by a DRO robust loss.

The core (this package's `modules`, `losses`, `ops`, `distributed`) needs only torch. The Hugging Face
classes are imported on first use, so `import tempnet` works without transformers installed.
"""

from tempnet import losses
from tempnet.losses import dro_lm_loss
from tempnet.modules import FixedTemperature, GlobalTemperature, PrototypeTempNet, TempNet
from tempnet.ops import linear_tempnet_dro_loss

__version__ = "0.1.0"

# Names served lazily from tempnet.integrations.hf (they import transformers).
_HF_NAMES = {
    "LlamaTempNetForCausalLM", "GPT2TempNetForCausalLM", "GPTNeoXTempNetForCausalLM", "LLaMA_TempNet",
    "TempNetLogitsProcessor", "TempNetConfig",
}


def __getattr__(name: str):
    if name in _HF_NAMES:
        from tempnet.integrations import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'tempnet' has no attribute {name!r}")


__all__ = ["TempNet", "PrototypeTempNet", "GlobalTemperature", "FixedTemperature", "dro_lm_loss", "linear_tempnet_dro_loss", "losses",
           *sorted(_HF_NAMES)]
