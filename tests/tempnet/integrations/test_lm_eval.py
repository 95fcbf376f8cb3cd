"""lm-evaluation-harness runs a causal LM with its TempNet in place, on local tasks (no downloads)."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from tempnet.integrations.lm_eval import TempNetLM  # noqa: E402


def _manual_loglikelihood(model, tokenizer, context: str, continuation: str, divide_by_tau: bool) -> float:
    ctx = tokenizer(context)["input_ids"]
    full = tokenizer(context + continuation)["input_ids"]
    n_cont = len(full) - len(ctx)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([full]))
    logits = out.logits[0].double()
    if not divide_by_tau:
        logits = logits * out.tau[0].double()  # undo the division: the base model's logits
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[i - 1, full[i]].item() for i in range(len(full) - n_cont, len(full)))


def test_loglikelihood_uses_tempnet(tiny_llama_dir, tokenizer):
    lm = TempNetLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=2)
    context, continuation = "the cat sat on", " the mat"
    (got, _), = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    with_tau = _manual_loglikelihood(lm.model, tokenizer, context, continuation, divide_by_tau=True)
    without = _manual_loglikelihood(lm.model, tokenizer, context, continuation, divide_by_tau=False)
    assert got == pytest.approx(with_tau, rel=1e-4)
    assert abs(with_tau - without) > 1e-2  # TempNet changes the scores: it really is in place


def test_simple_evaluate_on_local_tasks(tiny_llama_dir, tmp_path):
    docs = [{"question": "where does the camel drink?", "choices": ["at the well", "on the mat"], "answer": 0},
            {"question": "who sat on the mat?", "choices": ["the sand", "the cat"], "answer": 1},
            {"question": "how do you find shade?", "choices": ["sun", "water"], "answer": 0}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "ppl.txt").write_text("the cat sat on the mat\nhow do you get water in the desert\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy_mc.yaml").write_text(f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    (tasks / "toy_ppl.yaml").write_text(f"""task: toy_ppl
dataset_path: text
dataset_kwargs:
  data_files:
    test: {tmp_path / 'ppl.txt'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    results = simple_evaluate(
        model="tempnet", model_args=f"pretrained={tiny_llama_dir},dtype=float32", tasks=["toy_mc", "toy_ppl"],
        device="cpu", batch_size=2, task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        bootstrap_iters=0)["results"]
    acc = results["toy_mc"]["acc,none"]
    assert acc in (0.0, 1 / 3, 2 / 3, 1.0)
    ppl = results["toy_ppl"]["word_perplexity,none"]
    bpb = results["toy_ppl"]["bits_per_byte,none"]
    assert math.isfinite(ppl) and ppl > 1.0 and bpb > 0
