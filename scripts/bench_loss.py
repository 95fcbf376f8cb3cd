"""Peak memory and time of the LM loss with TempNet: plain CE vs the naive TempNet path vs the fused op.

Per vocabulary size, forward + backward of (hidden [N, d] and the LM head weight [V, d] both trained):
  ce      F.cross_entropy over the full logits h W^T (no TempNet: the floor every LM pays)
  naive   logits = h W^T, tau = TempNet(logits.detach()), dro_lm_loss(logits, y, tau, rho)
  fused   tempnet.ops.linear_tempnet_dro_loss(h, W, y, TempNet, rho) (chunks of tokens)
Each variant runs in its own process. peak_mem_mb is the extra peak over the memory held before the
step (inputs, weights, head): on CPU the process's resident high-water mark (VmHWM, reset through
/proc/self/clear_refs), on CUDA torch.cuda.max_memory_allocated. time_ms is the median of --repeats
steps after --warmup. Only ratios measured side by side are meaningful; absolute times depend on the
machine and its load.

    python scripts/bench_loss.py --json bench_loss.json                   # N 4096, d 1024, V 32000 and 50257
    python scripts/bench_loss.py --n 256 --d 64 --vocab 1000 --repeats 1  # a quick look
    python scripts/bench_loss.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("ce", "naive", "fused")
DTYPE_NAMES = ("float32", "float16", "bfloat16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="tokens per step")
    parser.add_argument("--d", type=int, default=1024, help="hidden size")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 50257])
    parser.add_argument("--tempnet-hidden", type=int, default=256, help="TempNet's width M")
    parser.add_argument("--rho", type=float, default=8.0)
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk of the fused op")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each child (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.n, args.d, args.tempnet_hidden, *args.vocab) < 2 or args.repeats < 1 or args.warmup < 0:
        parser.error("need --n, --d, --vocab, --tempnet-hidden >= 2, --repeats >= 1, --warmup >= 0")
    return args


# ---- one variant, inside its own process -------------------------------------------------------------

def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Extra peak memory (MB) of what runs between start() and stop(), over what was held at start()."""

    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _rss_kib("VmRSS") * 1024

    def stop(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_kib("VmHWM") * 1024
        return (peak - self.base) / 2 ** 20


def build_step(variant: str, args, vocab: int):
    """(step function doing forward + backward, the trained tensors)."""
    import torch
    import torch.nn.functional as F

    from tempnet.losses.lm import dro_lm_loss
    from tempnet.modules import TempNet
    from tempnet.ops import linear_tempnet_dro_loss

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    hidden = torch.randn(args.n, args.d, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, args.d, generator=gen) / args.d ** 0.5).to(device, dtype).requires_grad_()
    labels = torch.randint(0, vocab, (args.n,), generator=gen).to(device)
    labels[: args.n // 10] = -100  # e.g. a masked prompt
    head = TempNet(vocab, args.tempnet_hidden).to(device).train()
    trained = [hidden, weight, *head.parameters()]

    def step():
        if variant == "ce":
            logits = F.linear(hidden, weight)  # [N, V]
            loss = F.cross_entropy(logits.float(), labels, ignore_index=-100)
        elif variant == "naive":
            logits = F.linear(hidden, weight)  # [N, V]
            tau = head(logits.detach())  # [N, 1]
            loss = dro_lm_loss(logits, labels, tau, args.rho)
        else:
            loss = linear_tempnet_dro_loss(hidden, weight, labels, head, args.rho, chunk_size=args.chunk_size)["loss"]
        loss.backward()
        for t in trained:
            t.grad = None

    return step, device


def run_child(args) -> dict:
    import torch

    variant, vocab = args.child[0], int(args.child[1])
    if args.threads:
        torch.set_num_threads(args.threads)
    step, device = build_step(variant, args, vocab)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    meter = PeakMemory(device)
    meter.start()
    step()
    peak = meter.stop()
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return {"variant": variant, "vocab": vocab, "peak_mem_mb": round(peak, 1),
            "time_ms": round(statistics.median(times), 2)}


# ---- the driver ------------------------------------------------------------------------------------

def child_argv(args, variant: str, vocab: int) -> list[str]:
    argv = [sys.executable, __file__, "--child", variant, str(vocab), "--n", str(args.n), "--d", str(args.d),
            "--tempnet-hidden", str(args.tempnet_hidden), "--rho", str(args.rho), "--warmup", str(args.warmup),
            "--repeats", str(args.repeats), "--device", args.device, "--dtype", args.dtype, "--seed", str(args.seed)]
    if args.chunk_size:
        argv += ["--chunk-size", str(args.chunk_size)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def child_env(root: str) -> dict:
    """The repository on PYTHONPATH; glibc's malloc with a fixed mmap threshold, so that freed tensors go
    back to the OS at once and the resident high-water mark is the step's own (its default threshold
    grows with the sizes freed, after which freed memory stays resident and hides the next peak)."""
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "MALLOC_MMAP_THRESHOLD_": "131072"}


def ratios(row: dict) -> dict:
    """fused_vs_naive_mem, fused_vs_naive_time, fused_vs_ce_mem (None where a variant was not run)."""
    def ratio(a, b, key):
        return round(row[a][key] / row[b][key], 3) if a in row and b in row and row[b][key] > 0 else None

    return {"fused_vs_naive_mem": ratio("fused", "naive", "peak_mem_mb"),
            "fused_vs_naive_time": ratio("fused", "naive", "time_ms"),
            "fused_vs_ce_mem": ratio("fused", "ce", "peak_mem_mb"),
            "fused_vs_ce_time": ratio("fused", "ce", "time_ms")}


def markdown(rows: list[dict], variants) -> str:
    head = "| V | " + " | ".join(f"{v} MB | {v} ms" for v in variants) + \
           " | fused/naive mem | fused/naive time | fused/ce mem |"
    lines = [head, "|" + "---|" * (1 + 2 * len(variants) + 3)]
    for row in rows:
        cells = [str(row["vocab"])]
        for v in variants:
            cells += [f"{row[v]['peak_mem_mb']:.0f}", f"{row[v]['time_ms']:.0f}"]
        cells += [str(row[k]) for k in ("fused_vs_naive_mem", "fused_vs_naive_time", "fused_vs_ce_mem")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return {}
    rows = []
    root = str(Path(__file__).resolve().parents[1])
    for vocab in args.vocab:
        row = {"vocab": vocab, "n": args.n, "d": args.d}
        for variant in args.variants:
            done = subprocess.run(child_argv(args, variant, vocab), capture_output=True, text=True, env=child_env(root))
            if done.returncode != 0:
                raise RuntimeError(f"{variant} at V={vocab} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            row[variant] = {"peak_mem_mb": result["peak_mem_mb"], "time_ms": result["time_ms"]}
            print(f"V={vocab} {variant}: {row[variant]}", file=sys.stderr)
        row.update(ratios(row))
        rows.append(row)
    report = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "child")}, "results": rows}
    print(markdown(rows, args.variants))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
