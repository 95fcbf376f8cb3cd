"""The fused loss's one precondition: it computes z = last_hidden_state @ W^T (+ b), so it trains on a family's own
logits only where that family's forward feeds its backbone's output to a plain linear LM head and returns the head's
output unchanged (not Gemma 2's final_logit_softcapping, a logit multiplier, a scaled hidden state)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fused_logits_mismatch"]


@torch.no_grad()
def fused_logits_mismatch(model, base_forward) -> str | None:
    """Why `model`'s fused loss would not see the logits of its family's own forward (`base_forward`, called
    with input_ids), or None: one evaluation-mode forward over 8 tokens, hooks on the backbone and the LM head."""
    seen: dict[str, torch.Tensor] = {}
    lm_head = model.get_output_embeddings()
    hooks = [model.base_model.register_forward_hook(lambda m, a, out: seen.update(hidden=out[0])),  # (None: no
             lm_head.register_forward_hook(lambda m, a, out: seen.update(head_in=a[0], head_out=out))]  # change)
    was_training = model.training
    ids = torch.arange(8, device=lm_head.weight.device).remainder(model.config.vocab_size)[None]  # [1, 8]
    try:
        model.eval()
        logits = base_forward(input_ids=ids).logits  # [1, 8, V]
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if "head_in" not in seen or "hidden" not in seen:
        return "the family's forward does not call its LM head module on its backbone's output"
    if not torch.equal(seen["head_in"], seen["hidden"]):
        return "the family's forward changes the backbone's last hidden state before its LM head"
    linear = F.linear(seen["head_in"], lm_head.weight, getattr(lm_head, "bias", None))  # what the fused op computes
    if not torch.equal(seen["head_out"], linear):
        return "the family's LM head is not the plain linear map of its weight and bias (e.g. its own logit scale)"
    if not torch.equal(logits, seen["head_out"].to(logits.dtype)):
        return ("the family's forward post-processes its LM head's output (e.g. Gemma 2's final_logit_softcapping "
                "or a logit multiplier)")
    return None

