"""A one-GPU check of everything that has only run on CPUs, in under 8 minutes, with one JSON summary.

    bash scripts/gpu_check.sh [--out gpu_check_out]      # on a machine with CUDA: run every check
    python scripts/gpu_check.py --dry-run                # anywhere: check every command exists, run none
    python scripts/gpu_check.py --list                   # print the commands

The checks (each a subprocess from the repository root, its output in OUT/<name>.log):
  pytest_gpu             the CUDA-marked tests (`pytest -m gpu`)
  llm_fp16, llm_bf16     GPT_2/configs/debug.yaml, 6 steps with the fused TempNet loss (the default head)
  clip_fp16, clip_bf16   Bimodal-CL/configs/debug.yaml with isogclr_tempnet, one epoch (10 steps + evaluation)
  generate_released      a tiny LlamaForCausalLM + TempNet in the released checkpoint layout (fp16 weights,
                         model_type "llama", no TempNet settings), loaded with LLaMA_TempNet.from_pretrained
                         in fp16 and sampled with generate(return_tau=True)
  bench_loss             scripts/bench_loss.py at N 4096, d 1024, V 32000, bfloat16
  bench_contrastive      scripts/bench_contrastive.py at B 4096, d 256
  serving_vllm           tests/serving (vLLM with TempNet's plugin: offline, the OpenAI server, Model Runner V2 end
                         to end, scripts/bench_serving.py) in the serving environment: $TEMPNET_SERVE_PYTHON, else
                         .venv-serve/bin/python (the official `vllm` wheel, see tempnet/integrations/vllm/README.md), else this Python
OUT/summary.json: per check name, command, status (passed | failed | timeout | skipped (over budget)),
seconds, key numbers (the last logged loss and tau of a trainer, the benchmark's times, the test counts).
Each check has its own time limit, and none runs past the 8-minute budget of the whole.

Without CUDA (or with --dry-run) nothing runs: each command's interpreter module or script, every file it
names, every --flag (against the command's --help) and every key=value override (loaded into the
trainer's config class) is checked; the exit status is 0 when all exist, 1 otherwise (each problem
printed). --root DIR checks the commands against another checkout (the tests use a copy with a file removed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import re
import runpy
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BUDGET_S = 8 * 60
#: the trainer folders whose key=value overrides the dry run loads into a config class
CONFIG_CLASSES = {"GPT_2/train.py": ("tempnet.train.lm_config", "LMTrainConfig"),
                  "Bimodal-CL/train.py": ("tempnet.train.clip_config", "BimodalConfig")}
FILE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".sh")


@dataclass
class Check:
    name: str
    argv: list[str]
    timeout: int
    outputs: list[str] = field(default_factory=list)  # argv entries that are written by the check, not read


def checks(out: Path) -> list[Check]:
    """Every check, its command (paths relative to the repository root) and its time limit in seconds."""
    out = Path(out)
    llm = ["train.max_steps=6", "train.save_every=6", "train.progress_bar=false", "tempnet.fused_loss=true"]
    clip = ["loss=isogclr_tempnet", "train.epochs=1", "train.progress_bar=false"]
    found = []
    for precision in ("fp16", "bf16"):
        found.append(Check(f"llm_{precision}", [PY, "GPT_2/train.py", "--config", "GPT_2/configs/debug.yaml",
                                                "--output-dir", str(out / f"llm_{precision}"),
                                                f"train.precision={precision}", *llm], 90, [str(out / f"llm_{precision}")]))
    for precision in ("fp16", "bf16"):
        found.append(Check(f"clip_{precision}", [PY, "Bimodal-CL/train.py", "--config", "Bimodal-CL/configs/debug.yaml",
                                                 "--output-dir", str(out / f"clip_{precision}"),
                                                 f"train.precision={precision}", *clip], 90, [str(out / f"clip_{precision}")]))
    return [
        Check("pytest_gpu", [PY, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p", "no:cacheprovider"], 180),
        *found,
        Check("generate_released", [PY, "scripts/gpu_check.py", "--generate-released", str(out / "released"),
                                    "--device", "cuda"], 60, [str(out / "released")]),
        Check("bench_loss", [PY, "scripts/bench_loss.py", "--device", "cuda", "--dtype", "bfloat16", "--n", "4096",
                             "--d", "1024", "--vocab", "32000", "--repeats", "3", "--json", str(out / "bench_loss.json")],
              90, [str(out / "bench_loss.json")]),
        Check("bench_contrastive", [PY, "scripts/bench_contrastive.py", "--device", "cuda", "--batch", "4096", "--dim",
                                    "256", "--prototypes", "256", "--repeats", "10", "--warmup", "2", "--json",
                                    str(out / "bench_contrastive.json")], 60, [str(out / "bench_contrastive.json")]),
        Check("serving_vllm", [PY, "scripts/gpu_check.py", "--serving-tests"], 300),
    ]


# ---- the dry run ---------------------------------------------------------------------------------

def _entry(argv: list[str]) -> tuple[str, str]:
    """("module", name) for `python -m name ...`, else ("script", path)."""
    return ("module", argv[2]) if argv[1] == "-m" else ("script", argv[1])


def _help_text(argv: list[str], root: Path) -> str:
    """The entry point's --help: a module's from a subprocess, a script's in this process (run as __main__
    with argv [script, --help]; most imports are then shared, which keeps the dry run short)."""
    kind, name = _entry(argv)
    if kind == "module":
        proc = subprocess.run([PY, "-m", name, "--help"], cwd=root, capture_output=True, text=True, timeout=120)
        return proc.stdout + proc.stderr if proc.returncode == 0 else ""
    buffer, saved_argv = io.StringIO(), sys.argv
    sys.argv = [str(root / name), "--help"]
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(str(root / name), run_name="__main__")
    except SystemExit as exc:
        return buffer.getvalue() if exc.code in (0, None) else ""
    finally:
        sys.argv = saved_argv
    return ""


def _config_problems(check: Check, root: Path) -> list[str]:
    """Load the check's key=value overrides into its trainer's config class (unknown keys, bad values)."""
    script = _entry(check.argv)[1]
    if script not in CONFIG_CLASSES:
        return []
    module, cls = CONFIG_CLASSES[script]
    from tempnet.config import load_config

    config = check.argv[check.argv.index("--config") + 1]
    overrides = [a for a in check.argv if re.fullmatch(r"[\w.]+=.*", a)]
    try:
        load_config(getattr(importlib.import_module(module), cls), root / config, overrides)
    except Exception as exc:  # any failure to load is a problem to report, the dry run goes on
        return [f"{check.name}: the overrides do not load into {cls}: {exc}"]
    return []


def dry_run(all_checks: list[Check], root: Path) -> list[str]:
    """Every problem found (an empty list when every command would start)."""
    problems = []
    for check in all_checks:
        kind, name = _entry(check.argv)
        if kind == "module" and importlib.util.find_spec(name) is None:
            problems.append(f"{check.name}: module {name} is not importable")
        for arg in check.argv[1:]:
            if arg.endswith(FILE_SUFFIXES) and arg not in check.outputs and not (root / arg).is_file():
                problems.append(f"{check.name}: {arg} does not exist under {root}")
        problems += _config_problems(check, root)
    runnable = {_entry(c.argv): c.argv for c in all_checks
                if _entry(c.argv)[0] == "module" or (root / _entry(c.argv)[1]).is_file()}
    helps = {entry: _help_text(argv, root) for entry, argv in runnable.items()}  # one --help per entry point
    for check in all_checks:
        entry = _entry(check.argv)
        if entry not in helps:
            continue
        if not helps[entry]:
            problems.append(f"{check.name}: `{' '.join(entry[1:])} --help` failed")
            continue
        for flag in (a for a in check.argv[2:] if re.fullmatch(r"--?[a-zA-Z][\w-]*", a)):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[entry]):
                problems.append(f"{check.name}: {entry[1]} does not accept {flag}")
    return problems


# ---- the real run --------------------------------------------------------------------------------

def _last_metrics(path: Path, keys: tuple[str, ...]) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {"steps": len(rows), **{k: rows[-1][k] for k in keys if rows and k in rows[-1]}}


def key_numbers(check: Check, log: str) -> dict:
    """What the summary keeps of a check's result."""
    if check.name in ("pytest_gpu", "serving_vllm"):
        return {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", log)}
    if check.name.startswith("llm_"):
        return _last_metrics(Path(check.outputs[0]) / "metrics.jsonl", ("loss", "ce", "tau_mean", "grad_norm"))
    if check.name.startswith("clip_"):
        numbers = _last_metrics(Path(check.outputs[0]) / "metrics.jsonl", ("loss", "tau_image", "tau_text", "grad_norm"))
        evaluation = Path(check.outputs[0]) / "eval.json"
        if evaluation.is_file():
            numbers["r_mean"] = json.loads(evaluation.read_text()).get("r_mean")
        return numbers
    if check.name == "generate_released":
        lines = [line for line in log.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}
    if not check.outputs or not Path(check.outputs[0]).is_file():
        return {}
    report = Path(check.outputs[0])
    data = json.loads(report.read_text())
    if check.name == "bench_loss":
        return {f"V{r['vocab']}_{v}": r[v] for r in data["results"] for v in ("ce", "naive", "fused") if v in r}
    return {k: round(v["median_ms"], 3) for k, v in data["results"].items()}


def run_checks(all_checks: list[Check], out: Path, root: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    summary, started = [], time.time()
    for check in all_checks:
        t0 = time.time()
        left = int(BUDGET_S - (t0 - started))
        if left < 10:  # the whole check stays inside its budget: what does not fit is reported, not run
            summary.append({"name": check.name, "command": " ".join(check.argv), "status": "skipped (over budget)",
                            "seconds": 0.0, "numbers": {}})
            continue
        print(f"== {check.name}: {' '.join(check.argv)}", flush=True)
        try:
            proc = subprocess.run(check.argv, cwd=root, capture_output=True, text=True,
                                  timeout=min(check.timeout, left))
            status, log = ("passed" if proc.returncode == 0 else "failed"), proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            status = "timeout"
            log = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr))
        (out / f"{check.name}.log").write_text(log)
        record = {"name": check.name, "command": " ".join(check.argv), "status": status,
                  "seconds": round(time.time() - t0, 1)}
        try:
            record["numbers"] = key_numbers(check, log)
        except (OSError, ValueError, KeyError) as exc:
            record["numbers"] = {"error": str(exc)}
        summary.append(record)
        print(f"   {status} in {record['seconds']} s: {json.dumps(record['numbers'])}", flush=True)
    total = time.time() - started
    print(f"total {total:.0f} s (budget {BUDGET_S} s)")
    return summary


# ---- the generation check's own process ----------------------------------------------------------

def generate_released(path: Path, device: str) -> dict:
    """Write a tiny checkpoint in the released layout (a LlamaForCausalLM state dict and tempnet.* weights,
    all fp16, one safetensors file, model_type "llama"), load it with LLaMA_TempNet.from_pretrained in fp16
    and sample 24 tokens with their taus. Raises if a dtype or a tau is not what the release implies."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from tempnet.integrations.hf import LLaMA_TempNet

    vocab, hidden = 512, 256  # the released TempNets are 256 wide
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    torch.manual_seed(0)
    state = {k: v.half() for k, v in LlamaForCausalLM(config).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state.update({"tempnet.proj.0.weight": torch.randn(hidden, vocab, generator=g) * 0.5,
                  "tempnet.proj.0.bias": torch.randn(hidden, generator=g) * 0.1,
                  "tempnet.proj.3.weight": torch.randn(hidden, hidden, generator=g) * 0.3,
                  "tempnet.proj.3.bias": torch.randn(hidden, generator=g) * 0.1,
                  "tempnet.scaler": torch.tensor([0.3]), "tempnet.last.weight": torch.randn(1, hidden, generator=g),
                  "tempnet.last.bias": torch.tensor([0.2])})
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in state.items()}, path / "model.safetensors", metadata={"format": "pt"})
    stored = {k: v for k, v in config.to_dict().items() if k not in ("dtype", "transformers_version")}
    (path / "config.json").write_text(json.dumps({**stored, "architectures": ["LLaMA_TempNet"], "model_type": "llama",
                                                  "torch_dtype": "float16"}))
    t0 = time.time()
    model = LLaMA_TempNet.from_pretrained(path, dtype=torch.float16).to(device).eval()
    prompt = torch.randint(3, vocab, (2, 8), generator=g).to(device)
    torch.manual_seed(0)
    out = model.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=True, top_k=0, return_tau=True)
    tau = out["tau"].float()
    cfg = model.tempnet_config
    numbers = {"new_tokens": int(out.sequences.shape[1] - prompt.shape[1]), "tau_min": float(tau.min()),
               "tau_max": float(tau.max()), "lm_head_dtype": str(model.lm_head.weight.dtype),
               "tempnet_dtypes": sorted({str(p.dtype) for p in model.tempnet.parameters()}),
               "seconds": round(time.time() - t0, 2)}
    if numbers["new_tokens"] != 24 or model.lm_head.weight.dtype != torch.float16 or not torch.isfinite(tau).all() \
            or not cfg.tau_min <= numbers["tau_min"] <= numbers["tau_max"] <= cfg.tau_max:
        raise RuntimeError(f"generation with the released layout went wrong: {numbers}")
    return numbers


def serving_python() -> str:
    """The interpreter of the serving environment (vLLM pins its own torch, so it usually has one of its own)."""
    import os

    found = os.environ.get("TEMPNET_SERVE_PYTHON") or REPO / ".venv-serve" / "bin" / "python"
    return str(found) if Path(found).exists() else PY


def serving_tests() -> int:
    """The serving_vllm check's own process: tests/serving in the serving environment; 1 if it has no vLLM."""
    python = serving_python()
    has_vllm = subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0
    if not has_vllm:
        print(f"serving_vllm: {python} has no vllm; make the serving environment: python -m venv .venv-serve && "
              ".venv-serve/bin/pip install vllm 'lm-eval[api]==0.4.13' pytest && .venv-serve/bin/pip install "
              "--no-deps --config-settings editable_mode=compat -e .")
        return 1
    return subprocess.run([python, "-m", "pytest", "tests/serving", "-q", "-p", "no:cacheprovider"], cwd=REPO).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="where the runs, logs and summary go")
    p.add_argument("--dry-run", action="store_true", help="check that every command exists, run none")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these checks")
    p.add_argument("--root", type=Path, default=REPO, help="the checkout the commands run in")
    p.add_argument("--generate-released", type=Path, metavar="DIR",
                   help="(the generate_released check's own process) write, load and sample the released layout")
    p.add_argument("--device", default="cuda", help="the device of --generate-released")
    p.add_argument("--serving-tests", action="store_true", help="(the serving_vllm check's own process) run them")
    args = p.parse_args(argv)
    if args.serving_tests:
        return serving_tests()
    if args.generate_released:
        print(json.dumps(generate_released(args.generate_released, args.device)))
        return 0
    out = args.out if args.out.is_absolute() else args.root / args.out
    selected = [c for c in checks(out) if not args.only or c.name in args.only]
    if args.only and len(selected) != len(set(args.only)):
        p.error(f"--only: unknown check in {args.only}; the checks: {[c.name for c in checks(out)]}")
    if args.list:
        for c in selected:
            print(f"{c.name}: {' '.join(c.argv)}")
        return 0
    import torch

    if args.dry_run or not torch.cuda.is_available():
        if not args.dry_run:
            print("gpu_check: this needs a CUDA GPU; none here, so only a dry run (every command checked, none run)")
        problems = dry_run(selected, args.root)
        for c in selected:
            print(f"{'ok' if not any(x.startswith(c.name + ':') for x in problems) else 'BAD'} {c.name}: "
                  f"{' '.join(c.argv)}")
        for problem in problems:
            print(f"problem: {problem}")
        print(f"dry run: {len(selected)} commands, {len(problems)} problems")
        return 1 if problems else 0
    summary = run_checks(selected, out, args.root)
    (out / "summary.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0), "checks": summary},
                                                 indent=2) + "\n")
    print(f"summary: {out / 'summary.json'}")
    return 0 if all(r["status"] == "passed" for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
