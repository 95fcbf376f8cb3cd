"""The standard CLIP evaluation suite (CLIP_benchmark, as DataComp runs it) for our dual encoders.

    model, tokenizer = ClipBenchmarkModel(dual_encoder, text_tokenizer), ...tokenize
    record = run_task(model, task, transform, device)       # one {"key", "dataset", "metrics"} line
    write_results(records, OUT)                             # OUT/eval_results.jsonl + OUT/eval_average.json

The model exposes `encode_image(images)` and `encode_text(tokens)` as open_clip models do: our text
tower takes ids and a mask, so the tokenizer packs both into one tensor [B, 2, L] that encode_text
unpacks. The metrics are CLIP_benchmark's own (`clip_benchmark.metrics.zeroshot_classification` /
`zeroshot_retrieval.evaluate`). A task is {key, task, dataset, root, ...}:

    dataset: a CLIP_benchmark name (cifar10, imagenet1k, flickr30k, mscoco_captions, wds/..., built by
             clip_benchmark.datasets.builder.build_dataset from root, never downloaded unless download: true),
             or a local set: "folder" (an image folder, classnames.json / templates.json beside the class
             folders, as tempnet.data.zeroshot_sets) or "retrieval_json" (a Karpathy-style JSON list, root = its
             image folder, json = the file).
    task:    zeroshot_classification | zeroshot_retrieval (default: CLIP_benchmark's default for the name).

Each record's metrics hold CLIP_benchmark's values and "main_metric", DataComp's: acc1 for classification
(mean_per_class_recall or mean_average_precision where the task says `main_metric:`), and for retrieval
mean_recall@1 = the mean of image and text retrieval recall@1. The average is over the tasks' main metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tempnet.errors import ConfigError, DataError, user_message

__all__ = ["ClipBenchmarkModel", "PackedTokenizer", "RetrievalPairs", "run_task", "write_results", "average",
           "TASKS", "classification_metrics"]

TASKS = ("zeroshot_classification", "zeroshot_retrieval")


class PackedTokenizer:
    """list[str] -> [B, 2, L] (input ids, attention mask): one tensor, as CLIP_benchmark expects."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, texts) -> torch.Tensor:
        ids, mask = self.tokenizer(list(texts))
        return torch.stack([ids, mask.to(ids.dtype)], dim=1)


class ClipBenchmarkModel(nn.Module):
    """An open_clip-like face of a DualEncoder: encode_image(images [B, 3, H, W]), encode_text(tokens [B, 2, L])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens[:, 0], tokens[:, 1])


class RetrievalPairs(Dataset):
    """A tempnet RetrievalSet as CLIP_benchmark's retrieval sets: item i -> (image [3, H, W], [captions])."""

    def __init__(self, split, transform: Callable):
        from tempnet.data.image_text import load_image

        self.split, self.transform, self.load = split, transform, load_image
        self.captions = [[] for _ in split.images]
        for text, image in zip(split.texts, split.txt2img.tolist()):
            self.captions[image].append(text)

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, i):
        where = f"entry {i} of {self.split.ann_file}"
        return self.transform(self.load(self.split.image_root / self.split.images[i], where)), self.captions[i]


def _dataset(task: dict, transform: Callable):
    """(dataset, collate_fn, classnames, templates) of a task."""
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn, image_captions_collate_fn

    name, root = task["dataset"], task.get("root", "")
    if name == "folder":
        from tempnet.data.zeroshot_sets import build_zeroshot_set

        try:
            dataset, names, templates = build_zeroshot_set("folder", root, transform, task.get("templates") or [])
        except FileNotFoundError as exc:  # no such folder, or no class folder in it
            raise DataError(f"task {task['key']!r}: {user_message(exc)}") from None
        dataset.classes = names
        return dataset, None, names, [t.replace("{}", "{c}") for t in templates]  # CLIP_benchmark fills {c}
    if name == "retrieval_json":
        from tempnet.data.image_text import RetrievalSet

        if not task.get("json"):
            raise ConfigError(f"task {task['key']!r}: dataset retrieval_json needs json: PATH")
        return RetrievalPairs(RetrievalSet(task["json"], root), transform), image_captions_collate_fn, None, None
    if not Path(root).exists() and not task.get("download", False):
        raise FileNotFoundError(f"task {task['key']!r}: the data folder of {name} does not exist: {root}")
    try:
        dataset = build_dataset(name, root=root, transform=transform, split=task.get("split", "test"),
                                download=task.get("download", False), annotation_file=task.get("annotation_file"),
                                task=task["task"])
    except ValueError as exc:
        if str(exc).startswith("Unsupported dataset"):
            raise ConfigError(f"task {task['key']!r}: dataset {name!r} is neither folder, retrieval_json nor one of "
                              f"CLIP_benchmark's{_nearest_name(name)}") from None
        raise DataError(f"task {task['key']!r}: cannot load {name} from {root}: {_first_line(exc)}") from None
    except (RuntimeError, OSError, AssertionError) as exc:  # each torchvision / webdataset set says it its own way
        raise DataError(f"task {task['key']!r}: cannot load {name} from {root}: {_first_line(exc)}") from None
    if len(dataset) == 0:
        raise DataError(f"task {task['key']!r}: {name} in {root} holds no samples of split {task.get('split', 'test')}")
    return dataset, get_dataset_collate_fn(name), getattr(dataset, "classes", None), getattr(dataset, "templates", None)


def _nearest_name(name: str) -> str:
    """"; did you mean X?" among the names CLIP_benchmark ships templates or collections for (no list of every
    name exists: its builder is a chain of ifs)."""
    import difflib
    from importlib import resources

    from clip_benchmark.datasets.builder import dataset_collection

    templates = resources.files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json"
    known = {"folder", "retrieval_json", *json.loads(templates.read_text()),
             *(n for names in dataset_collection.values() for n in names)}
    near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _classification(model, loader, tokenizer, classnames, templates, device, amp) -> dict:
    """CLIP_benchmark's zeroshot_classification.evaluate for single-label sets: its classifier and logits, the
    same acc1 / acc5 / mean_per_class_recall. (Its accuracy() calls float() on a 1-element array, an error
    under NumPy >= 2.3, so the three numbers are computed here.)"""
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

    classifier = zero_shot_classifier(model, tokenizer, classnames, templates, device.type, amp=amp)
    logits, target = run_classification(model, classifier, loader, device.type, amp=amp)
    if target.dim() == 2:
        raise ConfigError("multi-label sets (mean_average_precision) are not supported by this adapter")
    return classification_metrics(logits, target)


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict:
    """acc1, acc5 (NaN with fewer than 5 classes) and mean_per_class_recall (the mean over the classes present
    in `target` of the share of that class's samples predicted right) of logits [N, C] and labels [N]."""
    from sklearn.metrics import balanced_accuracy_score

    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # [N, k]
    hit = top == target[:, None]
    acc5 = hit.any(dim=1).float().mean().item() if logits.shape[1] >= 5 else float("nan")
    return {"acc1": hit[:, 0].float().mean().item(), "acc5": acc5,
            "mean_per_class_recall": float(balanced_accuracy_score(target, logits.argmax(dim=1)))}


def _main_metric(task: dict, metrics: dict) -> float:
    if task["task"] == "zeroshot_retrieval":
        return (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return metrics[task.get("main_metric", "acc1")]


def run_task(model: ClipBenchmarkModel, tokenizer: PackedTokenizer, task: dict, transform: Callable,
             device: torch.device, batch_size: int = 64, num_workers: int = 0, amp: bool = False) -> dict:
    """One task with CLIP_benchmark's metrics: {"key", "dataset", "task", "metrics": {..., "main_metric"}}."""
    from clip_benchmark.datasets.builder import get_dataset_default_task
    from clip_benchmark.metrics import zeroshot_retrieval

    task = {"key": task.get("key") or task["dataset"], **task}
    task.setdefault("task", "zeroshot_classification" if task["dataset"] == "folder" else
                    "zeroshot_retrieval" if task["dataset"] == "retrieval_json" else
                    get_dataset_default_task(task["dataset"]))
    if task["task"] not in TASKS:
        raise ConfigError(f"task {task['key']!r}: task must be one of {TASKS}, got {task['task']!r}")
    dataset, collate, classnames, templates = _dataset(task, transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    model.eval()
    if task["task"] == "zeroshot_classification":
        metrics = _classification(model, loader, tokenizer, classnames, templates, device, amp)
    else:
        metrics = zeroshot_retrieval.evaluate(model, loader, tokenizer, device.type, amp=amp, recall_k_list=[1, 5, 10])
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["main_metric"] = float(_main_metric(task, metrics))
    return {"key": task["key"], "dataset": task["dataset"], "task": task["task"], "metrics": metrics}


def average(records: list[dict]) -> float:
    """DataComp's average: the mean of the tasks' main metrics (NaN ones left out)."""
    values = [r["metrics"]["main_metric"] for r in records if not math.isnan(r["metrics"]["main_metric"])]
    return sum(values) / len(values) if values else float("nan")


def write_results(records: list[dict], out: str | Path) -> Path:
    """OUT/eval_results.jsonl (one task a line, as DataComp's) and OUT/eval_average.json; returns the jsonl."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval_results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "eval_average.json").write_text(json.dumps({"average": average(records), "tasks": len(records)}) + "\n")
    return path
