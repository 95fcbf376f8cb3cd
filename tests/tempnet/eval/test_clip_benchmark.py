"""The CLIP_benchmark adapter (tempnet.eval.clip_benchmark, scripts/eval_clip_benchmark.py): CLIP_benchmark's
own zero-shot classification and retrieval run on tiny local sets with a random debug-size dual encoder, and
agree with our evaluators on the same model and images; make_tables reads the DataComp-style results."""

import json

import pytest
import torch

from helpers import REPO, load_module
from tempnet.config import load_config, save_config
from tempnet.data.image_text import RetrievalSet
from tempnet.data.image_transforms import center_crop_transform
from tempnet.data.synthetic_image_text import make_synthetic_image_text
from tempnet.data.zeroshot_sets import build_zeroshot_set
from tempnet.eval.clip_benchmark import ClipBenchmarkModel, PackedTokenizer, average, run_task
from tempnet.eval.tables import build_tables, to_markdown
from tempnet.train import checkpoint as ckpt
from tempnet.train.clip_config import BimodalConfig
from tempnet.train.clip_eval import evaluate_retrieval, evaluate_zeroshot
from tempnet.train.clip_trainer import build_model

pytest.importorskip("clip_benchmark")
DEBUG = REPO / "Bimodal-CL" / "configs" / "debug.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipbench")
    make_synthetic_image_text(root / "data", num_train=2)
    cfg = load_config(BimodalConfig, DEBUG, ["data.synthetic=false"])
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg.model, torch.device("cpu"))
    model.eval()
    tasks = [{"key": "shapes", "dataset": "folder", "root": str(root / "data" / "zeroshot")},
             {"key": "shapes_retrieval", "dataset": "retrieval_json", "root": str(root / "data"),
              "json": str(root / "data" / "retrieval.json")}]
    return root, cfg, model, tokenizer, tasks


def test_classification_and_retrieval_agree_with_our_evaluators(setup):
    root, cfg, model, tokenizer, tasks = setup
    transform = center_crop_transform(cfg.model.image_size)
    adapter, packed = ClipBenchmarkModel(model), PackedTokenizer(tokenizer)
    cls = run_task(adapter, packed, tasks[0], transform, torch.device("cpu"))
    ret = run_task(adapter, packed, tasks[1], transform, torch.device("cpu"))
    assert cls["task"] == "zeroshot_classification" and ret["task"] == "zeroshot_retrieval"
    dataset, names, templates = build_zeroshot_set("folder", root / "data" / "zeroshot", transform)
    ours = evaluate_zeroshot(model, tokenizer, dataset, names, templates, 64, 0)
    assert 100 * cls["metrics"]["acc1"] == pytest.approx(ours["zeroshot_top1"], abs=1e-6)
    assert cls["metrics"]["main_metric"] == cls["metrics"]["acc1"]
    ours = evaluate_retrieval(model, tokenizer, RetrievalSet(root / "data" / "retrieval.json", root / "data"),
                              transform, 64, 0)
    m = ret["metrics"]
    assert 100 * m["image_retrieval_recall@1"] == pytest.approx(ours["img_r1"], abs=1e-6)
    assert 100 * m["text_retrieval_recall@5"] == pytest.approx(ours["txt_r5"], abs=1e-6)
    assert m["main_metric"] == pytest.approx((m["image_retrieval_recall@1"] + m["text_retrieval_recall@1"]) / 2)


def test_script_writes_datacomp_results_and_make_tables_reads_them(setup, tmp_path, capsys):
    root, cfg, model, tokenizer, tasks = setup
    checkpoint = tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    ckpt.save_weights(model.state_dict(), checkpoint / "model.safetensors")
    save_config(cfg, checkpoint / "config.yaml")
    (tmp_path / "tasks.yaml").write_text(json.dumps(tasks))  # JSON is YAML
    out = tmp_path / "results" / "clip_benchmark" / "isogclr_tempnet"
    script = load_module("eval_clip_benchmark", REPO / "scripts" / "eval_clip_benchmark.py")
    result = script.main(["--checkpoint", str(checkpoint), "--tasks", str(tmp_path / "tasks.yaml"),
                          "--output", str(out), "--num-workers", "0"])
    lines = [json.loads(x) for x in (out / "eval_results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in lines] == ["shapes", "shapes_retrieval"] and lines == result["records"]
    assert json.loads((out / "eval_average.json").read_text())["average"] == pytest.approx(average(lines))
    assert average(lines) == pytest.approx(sum(r["metrics"]["main_metric"] for r in lines) / 2)
    [table] = [t for t in build_tables(tmp_path / "results") if t.key == "clip_benchmark"]
    row = table.rows[0]
    assert row.name == "isogclr_tempnet" and [c.key for c in table.columns] == ["shapes", "shapes_retrieval", "avg"]
    assert row.cells["avg"].value == pytest.approx(100 * average(lines))
    assert "| isogclr_tempnet |" in to_markdown([table])
    with pytest.raises(SystemExit) as exc:
        script.cli(["--checkpoint", str(tmp_path / "missing"), "--tasks", str(tmp_path / "tasks.yaml"),
                    "--output", str(out)])
    assert exc.value.code == 2
