"""tempnet.train.clip_eval's wiring, with a stub encoder of chosen similarities: which way is image -> text
and text -> image, the dataset order restored, the prompt templates averaged per class. Expected numbers
are computed here by explicit loops in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tempnet.train.clip_eval import evaluate_retrieval, evaluate_zeroshot


class StubEncoder(nn.Module):
    """encode_image returns the "image" itself (a vector); encode_text looks up a table by the stub token id."""

    def __init__(self, text_table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(text_table.clone(), requires_grad=False)

    def encode_image(self, images):
        return images

    def encode_text(self, ids, mask):
        assert mask.shape == ids.shape
        return self.table[ids[:, 0]]


class StubTokenizer:
    """text -> (its index in `texts` [B, 1], mask [B, 1])."""

    def __init__(self, texts: list[str]):
        self.index = {t: i for i, t in enumerate(texts)}

    def __call__(self, texts):
        ids = torch.tensor([[self.index[t]] for t in texts])
        return ids, torch.ones_like(ids)


class VectorSet(Dataset):
    """Items (vector, second) in a given order: second is the dataset index (retrieval) or a label."""

    def __init__(self, vectors, seconds, order):
        self.vectors, self.seconds, self.order = vectors, seconds, order

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        j = self.order[i]
        return self.vectors[j], self.seconds[j]


class StubSplit:
    """The three things evaluate_retrieval reads of a RetrievalSet; its images come back shuffled."""

    def __init__(self, images, texts, txt2img, order):
        self.texts, self.txt2img = texts, txt2img
        self._images, self._order = images, order

    def image_dataset(self, transform):
        return VectorSet(self._images, torch.arange(len(self._images)), self._order)


def _recalls(sim: torch.Tensor, txt2img: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """TR@k (image -> its captions) and IR@k (text -> its image) by loops; no ties in sim."""
    n_img, n_txt = sim.shape
    tr = []
    for i in range(n_img):
        best = max(sim[i, t] for t in range(n_txt) if txt2img[t] == i)
        tr.append(sum(1 for t in range(n_txt) if sim[i, t] > best))
    ir = [sum(1 for i in range(n_img) if sim[i, t] > sim[txt2img[t], t]) for t in range(n_txt)]
    out = {}
    for k in ks:
        out[f"txt_r{k}"] = 100.0 * sum(r < k for r in tr) / n_img
        out[f"img_r{k}"] = 100.0 * sum(r < k for r in ir) / n_txt
    return out


def test_retrieval_directions_and_order():
    torch.manual_seed(0)
    n_img, n_txt = 7, 14
    txt2img = [t // 2 for t in range(n_txt)]  # two captions per image
    sim = torch.randn(n_img, n_txt, dtype=torch.float64)
    sim[torch.tensor(txt2img), torch.arange(n_txt)] += 1.0  # better than chance, not perfect
    images = torch.eye(n_img, dtype=torch.float64)  # image i . text t = sim[i, t]
    texts = [f"caption {t}" for t in range(n_txt)]
    model = StubEncoder(sim.t().contiguous())
    split = StubSplit(images, texts, torch.tensor(txt2img), order=[3, 0, 6, 1, 5, 2, 4])
    got = evaluate_retrieval(model, StubTokenizer(texts), split, transform=None, batch_size=3)
    want = _recalls(sim, txt2img)
    assert want["txt_r1"] != want["img_r1"]  # the two directions are told apart
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["r_mean"] == pytest.approx(sum(want.values()) / 6)


def test_zeroshot_averages_the_templates_per_class():
    templates = ["a {}.", "the {}!"]
    classes = ["cat", "dog", "fish"]
    texts = [t.format(c) for c in classes for t in templates]
    # per class two prompt embeddings of different lengths: the classifier is the mean of the *normalised*
    # ones; the first template alone classifies some images differently
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0],   # cat
                          [0.0, 1.0, 0.1], [0.0, 0.0, 1.0],     # dog
                          [1.0, 1.0, 1.0], [-1.0, 0.0, 3.0]], dtype=torch.float64)  # fish
    torch.manual_seed(1)
    images = F.normalize(torch.randn(40, 3, dtype=torch.float64), dim=-1)
    weights = []
    for c in range(3):
        e = [table[2 * c + j] / table[2 * c + j].norm() for j in range(2)]
        mean = (e[0] + e[1]) / 2
        weights.append(mean / mean.norm())
    labels = []
    for x in images:  # each image labelled by its best class under the correct classifier, for half of them
        labels.append(max(range(3), key=lambda c: float(x @ weights[c])))
    labels = torch.tensor(labels)
    labels[::2] = (labels[::2] + 1) % 3  # the other half wrong: accuracy 50 %
    expected = 100.0 * sum(max(range(3), key=lambda c: float(x @ weights[c])) == int(y)
                           for x, y in zip(images, labels)) / len(labels)
    first_only = 100.0 * sum(max(range(3), key=lambda c: float(x @ table[2 * c])) == int(y)
                             for x, y in zip(images, labels)) / len(labels)
    assert expected == 50.0 and first_only != expected  # the ensemble is what decides
    dataset = VectorSet(images, labels, order=list(range(39, -1, -1)))
    got = evaluate_zeroshot(StubEncoder(table), StubTokenizer(texts), dataset, classes, templates, batch_size=7)
    assert got == {"zeroshot_top1": pytest.approx(expected)}
