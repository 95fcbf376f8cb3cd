"""vLLM's LLaMA for checkpoints that also hold `tempnet.*` tensors (ours and the authors' released layout).

vLLM's weight loader refuses tensors the model has no parameter for ("There is no module or parameter named
'tempnet'"); this class leaves them out of it (the logits processor reads them from the checkpoint itself).
`tempnet.integrations.vllm.register` puts it in vLLM's ModelRegistry.
"""

from __future__ import annotations

from typing import Iterable

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM

from tempnet.integrations.head import PREFIX

__all__ = ["TempNetLlamaForCausalLM"]


class TempNetLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's LLaMA with the checkpoint's `tempnet.*` tensors skipped at load (identical for any other checkpoint)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights((name, w) for name, w in weights if not name.startswith(PREFIX))
