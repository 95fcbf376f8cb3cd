"""Helpers shared by the whole suite (imported by tests/conftest.py, which puts tests/ on sys.path).

free_port, read_jsonl, OFFLINE_ENV, load_module (a script loaded by path: the experiment folders
have hyphens, so they are not packages), run (a subprocess from the repository root) and the
launcher command prefixes, always through this interpreter (`sys.executable -m ...`), never a
name found on PATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The environment of every subprocess: no hub access, quiet tokenizers, unbuffered output, one thread.
OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def torchrun(nproc: int) -> list[str]:
    """`torchrun --nproc_per_node N` on a free port, as this interpreter's module."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port())]


def deepspeed_launcher(nproc: int) -> list[str]:
    """The `deepspeed --num_gpus N` launcher (it adds --local_rank=N to the script's argv)."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
            "--master_port", str(free_port())]


def accelerate_launch(nproc: int, *options: str) -> list[str]:
    """`accelerate launch` with N processes (options: e.g. --config_file PATH)."""
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "--num_processes", str(nproc),
            "--main_process_port", str(free_port())]


def free_port() -> int:
    """A free TCP port, so concurrent multi-process tests do not collide on the launchers' default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-empty line of a JSONL file, parsed."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_module(name: str, path: str | Path):
    """The Python file at `path` as module `name` (cached in sys.modules: dataclasses look their module up)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def run(cmd: list, timeout: int = 400, env: dict | None = None, cwd: str | Path = REPO) -> subprocess.CompletedProcess:
    """Run cmd (from the repository root, offline); raise with the output's tail if it fails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**OFFLINE_ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stdout[-3000:] + "\n---- stderr ----\n" + proc.stderr[-6000:]
        raise AssertionError(f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n{tail}")
    return proc


def lm_eval_by_hand(model, tokenizer, mc_docs: list[dict], ppl_lines: list[str], apply_tempnet: bool = True):
    """(acc, word_perplexity) of a causal LM with a temperature head, computed here as lm-eval 0.4 defines them.

    acc: a question is right when its `answer` choice has the highest log-likelihood of " " + choice after the
    question. word_perplexity: exp(-sum of log-likelihoods / number of words) over the lines, each scored as
    lm-eval's rolling windows do: the tokenizer's own encoding after the prefix token (BOS). Logits divided
    by tau when `apply_tempnet`, the base model's otherwise.
    """
    import math

    import torch

    def logprobs(ids):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]))
        logits = out.logits[0].double() * (1.0 if apply_tempnet else out.tau[0].double())
        return torch.log_softmax(logits, dim=-1)

    def loglikelihood(context, continuation):
        ctx, full = tokenizer(context)["input_ids"], tokenizer(context + continuation)["input_ids"]
        logp = logprobs(full)
        return sum(logp[i - 1, full[i]].item() for i in range(len(ctx), len(full)))

    right = 0
    for doc in mc_docs:
        scores = [loglikelihood(doc["question"], " " + choice) for choice in doc["choices"]]
        right += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    total, words = 0.0, 0
    for line in ppl_lines:
        ids = [tokenizer.bos_token_id] + tokenizer(line)["input_ids"]
        logp = logprobs(ids)
        total += sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)))
        words += len(line.split())
    return right / len(mc_docs), math.exp(-total / words)


#: Vocabulary of the test tokenizer: > ~290, so a sentencepiece model with byte fallback fits.
SP_VOCAB = 320
_WORDS = "the a cat dog sat on mat water desert how do you get in find shade sun sand camel drink well".split()


def train_llama_tokenizer(root: Path):
    """A LLaMA tokenizer (sentencepiece BPE, byte fallback, SP_VOCAB pieces, pad 0 bos 1 eos 2 unk 3) trained on a
    seeded word soup in `root`; returned with its pad token set."""
    import random

    import sentencepiece as spm
    from transformers import LlamaTokenizer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(400)))
    spm.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "tokenizer"),
                                   vocab_size=SP_VOCAB, model_type="bpe", byte_fallback=True, pad_id=0, bos_id=1,
                                   eos_id=2, unk_id=3, character_coverage=1.0, minloglevel=2)
    tokenizer = LlamaTokenizer.from_pretrained(root, add_bos_token=True)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def local_tasks(root: Path) -> Path:
    """lm-eval task YAMLs over local files (absolute paths): toy_mc (multiple choice: acc, acc_norm) and
    toy_ppl (rolling log-likelihood: word_perplexity). Returns the directory for --include_path."""
    root.mkdir(parents=True, exist_ok=True)
    docs = [{"question": "where does the camel drink?", "choices": ["at the well", "on the mat"], "answer": 0},
            {"question": "who sat on the mat?", "choices": ["the sand", "the cat"], "answer": 1},
            {"question": "how do you find shade?", "choices": ["sun", "water"], "answer": 0},
            {"question": "what is in the desert?", "choices": ["sand", "a well of water"], "answer": 0}]
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "ppl.txt").write_text("the cat sat on the mat\nhow do you get water in the desert\nfind shade\n")
    tasks = root / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "toy_mc.yaml").write_text(f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (tasks / "toy_ppl.yaml").write_text(f"""task: toy_ppl
dataset_path: text
dataset_kwargs:
  data_files:
    test: {root / 'ppl.txt'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    return tasks


class ActivationDtypes:
    """Every module's output dtype during a block, by module class name (a global forward hook): the
    mixed-precision tests check what autocast did, not only that the numbers are finite."""

    def __init__(self, training_only: bool = False):
        self.seen: dict[str, set] = {}
        self.training_only = training_only
        """Record only forwards with gradients on (the training step's), not no-grad probes or evaluation."""

    def _hook(self, module, args, output):
        import torch

        if self.training_only and not torch.is_grad_enabled():
            return
        outputs = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) \
            else [output]
        for t in outputs:
            if torch.is_tensor(t) and t.is_floating_point():
                self.seen.setdefault(type(module).__name__, set()).add(t.dtype)

    def __enter__(self):
        import torch

        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def record_indices(monkeypatch, dataset_class) -> list[int]:
    """The indices a run reads from `dataset_class`, in order (num_workers=0: the main process reads them)."""
    seen: list[int] = []
    original = dataset_class.__getitem__

    def getitem(self, index):
        seen.append(int(index))
        return original(self, index)

    monkeypatch.setattr(dataset_class, "__getitem__", getitem)
    return seen


def order_agreement(a: list[int], b: list[int]) -> float:
    """The fraction of positions where two orders hold the same index (about 1 / n for independent
    permutations of n, 1 for the same order)."""
    assert len(a) == len(b) and a, (len(a), len(b))
    return sum(x == y for x, y in zip(a, b)) / len(a)
