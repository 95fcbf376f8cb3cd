"""The hidden-state temperature head's training data (tempnet.integrations.hidden_head): the state at position t
is paired with token t + 1, the pairing Hugging Face's own causal-LM loss uses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def test_each_state_is_paired_with_the_next_token():
    from transformers import GPT2Config, GPT2LMHeadModel

    from tempnet.integrations.hidden_head import hidden_states_and_labels

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=40,
                                       bos_token_id=0, eos_token_id=1)).eval()
    docs = np.random.default_rng(0).integers(0, 40, size=(5, 9))
    h, y = hidden_states_and_labels(model, docs, batch=2)  # three forward batches, the last one short
    assert h.shape == (5 * 8, 16) and y.shape == (5 * 8,)
    logits = model.get_output_embeddings()(h)  # [P, V]: the frozen model's logits at each paired state
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(docs), labels=torch.as_tensor(docs))  # HF shifts the labels itself
        assert F.cross_entropy(logits, y).item() == pytest.approx(out.loss.item(), rel=1e-5)
        # position t of document i: the logits that predict docs[i, t + 1]
        assert torch.allclose(logits.reshape(5, 8, 40), out.logits[:, :-1], atol=1e-5)
    assert y.reshape(5, 8).tolist() == docs[:, 1:].tolist()
