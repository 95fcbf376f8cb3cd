"""Evaluate a Bimodal-CL checkpoint on a CLIP_benchmark / DataComp task list.

    python scripts/eval_clip_benchmark.py --checkpoint runs/cc12m/checkpoint-best \
        --tasks Bimodal-CL/tasks/clip_benchmark.yaml --output results/clip_benchmark/isogclr_tempnet

Writes OUTPUT/eval_results.jsonl (one line per task: {"key", "dataset", "task", "metrics"}, the metrics
CLIP_benchmark's with DataComp's "main_metric") and OUTPUT/eval_average.json (the mean of the main
metrics), and prints them. The tasks file is a YAML list of {key, dataset, root, task, ...} (see
tempnet.eval.clip_benchmark); $VARIABLES in root / json are expanded. make_tables.py reads the results
from RESULTS_DIR/clip_benchmark/<row>/.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from tempnet.errors import ConfigError, run_cli


def load_tasks(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--tasks: no such file: {path}")
    tasks = yaml.safe_load(path.read_text())
    tasks = tasks.get("tasks") if isinstance(tasks, dict) else tasks
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) and t.get("dataset") for t in tasks):
        raise ConfigError(f"{path} must hold a non-empty list of tasks, each with a dataset")
    return [{**t, **{k: os.path.expandvars(str(t[k])) for k in ("root", "json") if k in t}} for t in tasks]


def load_model(checkpoint: str | Path, device: torch.device):
    """(DualEncoder with the checkpoint's weights, its tokenizer, image size) from a checkpoint-<step> folder."""
    from tempnet.config import load_config
    from tempnet.train import checkpoint as ckpt
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import build_model

    path = Path(checkpoint)
    if not (path / "model.safetensors").is_file() or not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"--checkpoint: no model.safetensors and config.yaml in {path}")
    cfg = load_config(BimodalConfig, path / "config.yaml", [])
    m = cfg.model
    m = replace(m, image=replace(m.image, pretrained=False), text=replace(m.text, pretrained=False))
    model, tokenizer = build_model(m, device)
    model.load_state_dict(ckpt.load_weights(path / "model.safetensors", device))
    return model, tokenizer, m.image_size


def main(argv=None) -> dict:
    from tempnet.data.image_transforms import center_crop_transform
    from tempnet.eval.clip_benchmark import ClipBenchmarkModel, PackedTokenizer, average, run_task, write_results

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a Bimodal-CL checkpoint-<step> folder")
    p.add_argument("--tasks", required=True, help="YAML list of tasks")
    p.add_argument("--output", required=True, help="folder for eval_results.jsonl and eval_average.json")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--amp", action="store_true", help="autocast (CUDA)")
    args = p.parse_args(argv)
    tasks = load_tasks(args.tasks)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, size = load_model(args.checkpoint, device)
    adapter, packed, transform = ClipBenchmarkModel(model), PackedTokenizer(tokenizer), center_crop_transform(size)
    records = []
    for task in tasks:
        record = run_task(adapter, packed, task, transform, device, args.batch_size, args.num_workers, args.amp)
        records.append(record)
        print(f"{record['key']}: main_metric={record['metrics']['main_metric']:.4f}", flush=True)
    path = write_results(records, args.output)
    print(f"average over {len(records)} tasks: {average(records):.4f} -> {path}", flush=True)
    return {"records": records, "average": average(records)}


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
