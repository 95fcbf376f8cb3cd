"""Retrieval and zero-shot metrics against hand-made similarity matrices with known answers."""

import pytest
import torch

from tempnet.eval.retrieval import retrieval_metrics, retrieval_ranks
from tempnet.eval.zeroshot import class_embeddings, topk_accuracy

# 3 images; texts 0,1 -> image 0, text 2 -> image 1, texts 3,4 -> image 2
TXT2IMG = torch.tensor([0, 0, 1, 2, 2])
SIM = torch.tensor([
    # t0    t1    t2    t3    t4
    [0.9, 0.1, 0.8, 0.0, 0.0],   # image 0: best caption t0 at rank 0
    [0.5, 0.6, 0.2, 0.7, 0.1],   # image 1: its caption t2 below t0, t1, t3 -> rank 3
    [0.3, 0.9, 0.2, 0.4, 0.1],   # image 2: t1 (wrong) first, then t3 (right) -> rank 1
])


def test_ranks_by_hand():
    text_ranks, image_ranks = retrieval_ranks(SIM, TXT2IMG)
    assert text_ranks.tolist() == [0, 3, 1]
    # text -> image: columns. t0: img0 .9 top -> 0; t1: img2 .9 beats img0 .1 and img1 .6 -> 2;
    # t2: img0 .8 beats img1 .2, img2 .2 ties (counts against) -> 2; t3: img1 .7 > img2 .4 -> 1;
    # t4: img2 .1 tied with img1 .1 (counts against), above img0 0 -> 1
    assert image_ranks.tolist() == [0, 2, 2, 1, 1]


def test_metrics_by_hand():
    m = retrieval_metrics(SIM, TXT2IMG, ks=(1, 2, 3))
    assert m["txt_r1"] == pytest.approx(100 / 3)
    assert m["txt_r2"] == pytest.approx(200 / 3)
    assert m["txt_r3"] == pytest.approx(200 / 3)
    assert m["img_r1"] == pytest.approx(20.0)
    assert m["img_r2"] == pytest.approx(60.0)
    assert m["img_r3"] == pytest.approx(100.0)
    assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["img_r_mean"]) / 2)
    assert m["txt_r_mean"] == pytest.approx((100 / 3 + 400 / 3) / 3)


def test_identity_is_perfect_and_constant_is_not():
    perfect = retrieval_metrics(torch.eye(4), torch.arange(4))
    assert perfect["txt_r1"] == perfect["img_r1"] == perfect["r_mean"] == 100.0
    flat = retrieval_metrics(torch.ones(4, 4), torch.arange(4))  # ties count against the model
    assert flat["txt_r1"] == flat["img_r1"] == 0.0


def test_chunking_matches_one_block():
    g = torch.Generator().manual_seed(0)
    sim, t2i = torch.randn(7, 15, generator=g), torch.randint(0, 7, (15,), generator=g)
    t2i[:7] = torch.arange(7)  # every image has a caption
    a, b = retrieval_ranks(sim, t2i, chunk=2), retrieval_ranks(sim, t2i, chunk=100)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_retrieval_input_errors():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_ranks(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_ranks(torch.zeros(2, 2), torch.tensor([0, 2]))


def test_topk_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0],   # label 1: top-1
                           [0.5, 0.4, 0.6],   # label 1: third
                           [0.3, 0.3, 0.1],   # label 0: tied with class 1 -> second
                           [0.0, 0.2, 0.8]])  # label 2: top-1
    labels = torch.tensor([1, 1, 0, 2])
    assert topk_accuracy(logits, labels, ks=(1, 2, 3)) == {"zeroshot_top1": 50.0, "zeroshot_top2": 75.0,
                                                           "zeroshot_top3": 100.0}


def test_class_embeddings_average_templates():
    table = {"a cat": [1.0, 0.0], "the cat": [0.0, 1.0], "a dog": [-1.0, 0.0], "the dog": [-1.0, 0.0]}
    emb = class_embeddings(lambda texts: torch.tensor([table[t] for t in texts]), ["cat", "dog"], ["a {}", "the {}"])
    s = 2 ** -0.5
    assert torch.allclose(emb, torch.tensor([[s, s], [-1.0, 0.0]]))
