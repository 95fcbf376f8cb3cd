"""The paper's prototype rule (tempnet.modules.TempNetPair.init_from_first_batch): the first batch sets each
TempNet's prototypes from the other modality, once; "projections" copies what `projections()` returns instead."""

import pytest
import torch

from tempnet.modules import TempNetPair


@pytest.mark.parametrize("prototype_init", TempNetPair.PROTOTYPE_INITS)
def test_first_batch_sets_the_prototypes_once(prototype_init):
    torch.manual_seed(0)
    pair = TempNetPair(embed_dim=4, num_prototypes=3, dropout=0.0, prototype_init=prototype_init)
    image, text = torch.randn(5, 4), torch.randn(5, 4)
    raw_image, raw_text = 3 * torch.randn(5, 4), 3 * torch.randn(5, 4)
    calls = []
    projections = lambda: calls.append(1) or (raw_image, raw_text)  # noqa: E731
    pair.init_from_first_batch(image, text, projections)
    src_image, src_text = (raw_image, raw_text) if prototype_init == "projections" else (image, text)
    assert bool(pair.initialised) and len(calls) == (prototype_init == "projections")
    assert torch.equal(pair.image.prototypes.data, src_text[:3])  # image TempNet <- texts
    assert torch.equal(pair.text.prototypes.data, src_image[:3])
    pair.init_from_first_batch(torch.randn(5, 4), torch.randn(5, 4), projections)  # a later batch: no change
    assert torch.equal(pair.image.prototypes.data, src_text[:3]) and len(calls) <= 1


def test_unknown_prototype_init():
    with pytest.raises(ValueError, match="prototype_init must be one of"):
        TempNetPair(4, prototype_init="random")
