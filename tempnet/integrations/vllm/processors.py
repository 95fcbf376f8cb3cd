"""TempNet as a vLLM logits processor, in both of vLLM's interfaces.

    TempNetLogitsProcessor     the class to name: vLLM's V1 runner and Model Runner V2 each accept it and get
                               their own interface
    TempNetV1LogitsProcessor   `vllm.v1.sample.logits_processor.LogitsProcessor` (the V1 runner: vLLM's CPU backend)
    TempNetV2LogitsProcessor   `vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor` (Model Runner V2, the
                               default on GPUs since vLLM 0.32)

Every opted-in row of logits is divided by the tau TempNet predicts from that row (`tempnet.integrations.serving`);
a request is opted in unless its `extra_args` (`vllm_xargs` over HTTP) say {"tempnet": false}. Both runners apply
the processor before their temperature, min-p, top-k and top-p, so a client's `temperature` T samples from
softmax(z / (tau * T)) as `generate` does with our processors; both see it as not argmax-invariant, so greedy rows
are tempered too (same token; their log-probabilities are the tempered ones). The V1 runner applies it after the
allowed-token and bad-words masks and before repetition/frequency/presence penalties; Model Runner V2 after bias,
penalties, bad words and grammar (transformers' order).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from tempnet.integrations.serving import TEMPNET_FILE_KEY, ServingHead, request_wants_tempnet

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
except ImportError as exc:  # no vLLM, or one older than its V1 logits-processor interface
    found = getattr(sys.modules.get("vllm"), "__version__", None)
    raise ImportError("TempNet's vLLM plugin needs vLLM's V1 logits-processor interface (vllm.v1.sample."
                      "logits_processor.LogitsProcessor; tested with vLLM 0.32): "
                      + (f"vLLM {found} has no such interface" if found else f"vLLM does not import ({exc})")) from None
try:
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
except ImportError:  # a vLLM before Model Runner V2's interface: only the V1 runner exists there
    V2LogitsProcessor = None

__all__ = ["TempNetLogitsProcessor", "TempNetV1LogitsProcessor", "TempNetV2LogitsProcessor", "ENGINE_XARGS"]

#: Keys vLLM itself puts in a request's extra_args (its KV / encoder-cache transfer parameters).
ENGINE_XARGS = ("kv_transfer_params", "ec_transfer_params")


def _wants(sampling_params) -> bool:
    return request_wants_tempnet({k: v for k, v in (sampling_params.extra_args or {}).items()
                                  if k not in ENGINE_XARGS})


def _served_head(vllm_config, device) -> ServingHead:
    """The served model's TempNet (or the file its hf_overrides name), on vLLM's device."""
    model_config = vllm_config.model_config
    hf_config = model_config.hf_config
    return ServingHead.load(model_config.model, model_config.get_vocab_size(), getattr(hf_config, "tempnet", None),
                            getattr(hf_config, TEMPNET_FILE_KEY, None), device)


class TempNetV1LogitsProcessor(V1LogitsProcessor):
    """The V1 runner's interface: rows are persistent-batch indices, kept up to date by `update_state`."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        _wants(sampling_params)  # a ValueError here becomes the request's HTTP 400

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.serving = _served_head(vllm_config, device)
        self.rows: set[int] = set()  # persistent-batch indices of the tempered requests

    def is_argmax_invariant(self) -> bool:
        # False, although any tau > 0 keeps the argmax: vLLM applies argmax-invariant processors after its
        # temperature and to sampled rows only, and TempNet must read the untempered logits of every row.
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            self.rows.discard(index)
        for index, params, _, _ in batch_update.added:
            (self.rows.add if _wants(params) else self.rows.discard)(index)
        for a, b, direction in batch_update.moved:
            a_on, b_on = a in self.rows, b in self.rows
            self.rows.discard(a)
            self.rows.discard(b)
            if a_on:
                self.rows.add(b)
            if b_on and direction == MoveDirectionality.SWAP:
                self.rows.add(a)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = sorted(i for i in self.rows if i < logits.shape[0])
        if not rows:
            return logits
        if len(rows) == logits.shape[0]:
            return self.serving.temper(logits)[0]
        index = torch.tensor(rows, device=logits.device)
        logits[index] = self.serving.temper(logits[index])[0]
        return logits


if V2LogitsProcessor is not None:
    class TempNetV2LogitsProcessor(V2LogitsProcessor):
        """Model Runner V2's interface: rows map to request slots through `ctx.expanded_idx_mapping`."""

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            _wants(sampling_params)

        def __init__(self, vllm_config, req_states):
            self.serving = _served_head(vllm_config, req_states.device)
            self.on_host = np.zeros(req_states.max_num_reqs, dtype=bool)  # slot -> tempered, to skip whole steps
            self.on_device = torch.zeros(req_states.max_num_reqs, dtype=torch.bool, device=req_states.device)
            self._staged = False

        def add_request(self, req_idx: int, sampling_params) -> bool:
            self.on_host[req_idx] = _wants(sampling_params)
            self._staged = True
            return bool(self.on_host[req_idx])

        def apply_staged_writes(self) -> None:
            if self._staged:
                self.on_device.copy_(torch.from_numpy(self.on_host), non_blocking=False)
                self._staged = False

        def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
            if not self.on_host[ctx.idx_mapping_np].any():
                return logits
            tempered, _ = self.serving.temper(logits)
            rows = self.on_device[ctx.expanded_idx_mapping.long()].unsqueeze(-1)  # [R, 1]
            return torch.where(rows, tempered, logits)

    class TempNetLogitsProcessor(TempNetV1LogitsProcessor, TempNetV2LogitsProcessor):
        """One name for both runners: vLLM builds it as (vllm_config, device, is_pin_memory) in the V1 runner and
        as (vllm_config, req_states) in Model Runner V2, and calls apply(logits) or apply(logits, ctx)."""

        def __init__(self, vllm_config, *args):
            self.v2 = len(args) == 1
            (TempNetV2LogitsProcessor if self.v2 else TempNetV1LogitsProcessor).__init__(self, vllm_config, *args)

        def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
            if self.v2:
                return TempNetV2LogitsProcessor.apply(self, logits, ctx)
            return TempNetV1LogitsProcessor.apply(self, logits)
else:
    TempNetV2LogitsProcessor = None
    TempNetLogitsProcessor = TempNetV1LogitsProcessor
