"""Speed of every contrastive loss against open_clip's ClipLoss on the same batch (forward + backward).

Variants, each one training step's loss work on a global batch of B L2-normalised pairs of width d:
  open_clip        open_clip.loss.ClipLoss (logit scale 1 / 0.01), the reference
  clip, cyclip     tempnet's ClipLoss, CyClipLoss (tau 0.01)
  sogclr, isogclr  tempnet's SogCLRLoss, ISogCLRLoss (per-sample state of 4B samples, ids revisited)
  rgcl             RobustGCLoss with given temperatures (gradient to features and taus)
  rgcl_tempnet     RobustGCLoss + both PrototypeTempNets (train mode: dropout on), their backward included
  tempnets         both PrototypeTempNets alone, forward + backward of sum(tau) (rgcl_tempnet's TempNet share)
The variants take turns within each round, in an order rotated every round (machines are noisy), for
`--warmup` untimed and `--repeats` timed rounds. Reported: the median time of each, and the median over
rounds of its time divided by open_clip's time in the same round.

    python scripts/bench_contrastive.py --batch 1024 --dim 256 --device cpu --repeats 30 --json OUT.json

With --num-samples N1 N2 ... it measures the per-sample state instead (web scale): for each state size N,
the step time of the robust loss (rgcl, the TempNet loss) and iSogCLR with ids drawn uniformly from [0, N)
(every step touches cold rows), their ratio to the smallest N's (the goal: flat), the bytes per sample and
in all, the same for N = 4e8 by arithmetic, and the time of a checkpoint save (torch.save of the state) of
the largest N. --state-on-host keeps the state in host memory (loss_args.state_on_host).

    python scripts/bench_contrastive.py --num-samples 10000 1000000 100000000 --batch 1024 --save-dir /tmp/s
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tempnet.losses import ClipLoss, CyClipLoss, ISogCLRLoss, RobustGCLoss, SogCLRLoss
from tempnet.modules import PrototypeTempNet

REFERENCE = "open_clip"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024, help="global batch B")
    parser.add_argument("--dim", type=int, default=256, help="feature width d")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--prototypes", type=int, default=256, help="TempNet prototypes M (at most B)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--num-samples", type=int, nargs="+", help="measure the per-sample state at these sizes N")
    parser.add_argument("--state-on-host", action="store_true", help="with --num-samples: the state in host memory")
    parser.add_argument("--save-dir", help="with --num-samples: time a save of the largest state into this folder")
    args = parser.parse_args(argv)
    if args.num_samples and min(args.num_samples) < args.batch:
        parser.error("--num-samples: every N must be at least --batch")
    if args.batch < 2 or args.dim < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need --batch >= 2, --dim >= 1, --repeats >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    args.prototypes = min(args.prototypes, args.batch)
    return args


def build_variants(args) -> tuple[dict, tuple[PrototypeTempNet, PrototypeTempNet]]:
    """({name: step(image_leaf, text_leaf, ids) running one forward and backward}, (image TempNet, text TempNet))."""
    import open_clip  # an optional dependency: only the benchmark needs it

    dev, n = torch.device(args.device), args.batch
    reference = open_clip.loss.ClipLoss()
    scale = torch.tensor(100.0, device=dev)
    image_tempnet = PrototypeTempNet(args.dim, args.prototypes).to(dev).train()
    text_tempnet = PrototypeTempNet(args.dim, args.prototypes).to(dev).train()
    g = torch.Generator().manual_seed(args.seed)
    tau_i = (0.005 + 0.045 * torch.rand(n, generator=g)).to(dev)
    tau_t = (0.005 + 0.045 * torch.rand(n, generator=g)).to(dev)
    losses = {"clip": ClipLoss(0.01), "cyclip": CyClipLoss(0.01), "sogclr": SogCLRLoss(4 * n),
              "isogclr": ISogCLRLoss(4 * n), "rgcl": RobustGCLoss(4 * n), "rgcl_tempnet": RobustGCLoss(4 * n)}
    losses = {k: v.to(dev) for k, v in losses.items()}

    def plain(fn):
        return lambda I, T, ids: fn(I, T, ids, ids)["loss"].backward()

    def rgcl(I, T, ids):
        a, b = tau_i.clone().requires_grad_(), tau_t.clone().requires_grad_()
        losses["rgcl"](I, T, ids, ids, tau_image=a, tau_text=b)["loss"].backward()

    def rgcl_tempnet(I, T, ids):
        image_tempnet.zero_grad(set_to_none=True)
        text_tempnet.zero_grad(set_to_none=True)
        out = losses["rgcl_tempnet"](I, T, ids, ids, tau_image=image_tempnet(I.detach()),
                                     tau_text=text_tempnet(T.detach()))
        out["loss"].backward()

    def tempnets(I, T, ids):
        image_tempnet.zero_grad(set_to_none=True)
        text_tempnet.zero_grad(set_to_none=True)
        (image_tempnet(I.detach()).sum() + text_tempnet(T.detach()).sum()).backward()

    return {REFERENCE: lambda I, T, ids: reference(I, T, scale).backward(),
            **{k: plain(losses[k]) for k in ("clip", "cyclip", "sogclr", "isogclr")},
            "rgcl": rgcl, "rgcl_tempnet": rgcl_tempnet, "tempnets": tempnets}, (image_tempnet, text_tempnet)


def run(args) -> dict:
    torch.manual_seed(args.seed)
    dev, n = torch.device(args.device), args.batch
    image = F.normalize(torch.randn(n, args.dim), dim=1)
    text = F.normalize(image + torch.randn(n, args.dim), dim=1)
    image, text = image.to(dev), text.to(dev)
    variants, (image_tempnet, text_tempnet) = build_variants(args)
    image_tempnet.init_prototypes(text[:args.prototypes])
    text_tempnet.init_prototypes(image[:args.prototypes])
    names = list(variants)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = {k: [] for k in names}
    for round_ in range(args.warmup + args.repeats):
        ids = ((torch.arange(n) + round_ * (n // 2)) % (4 * n)).to(dev)  # half the ids revisit the last round's
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            I, T = image.clone().requires_grad_(), text.clone().requires_grad_()
            sync()
            tic = time.perf_counter()
            variants[name](I, T, ids)
            sync()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - tic)
    ref = times[REFERENCE]
    results = {name: {"median_ms": 1e3 * statistics.median(t),
                      "ratio": statistics.median(a / b for a, b in zip(t, ref))} for name, t in times.items()}
    return {"config": {"batch": n, "dim": args.dim, "device": str(dev), "repeats": args.repeats,
                       "warmup": args.warmup, "prototypes": args.prototypes, "threads": torch.get_num_threads(),
                       "torch": torch.__version__},
            "reference": REFERENCE, "results": results}


WEB_SCALE = 400_000_000  # LAION-400M


def run_state_sweep(args) -> dict:
    """Step time and memory of the per-sample state against its size N (see the module docstring)."""
    from tempnet.losses.sample_state import state_bytes_per_sample

    torch.manual_seed(args.seed)
    dev, n = torch.device(args.device), args.batch
    image = F.normalize(torch.randn(n, args.dim), dim=1).to(dev)
    text = F.normalize(image + 0.5 * torch.randn(n, args.dim, device=dev), dim=1)
    tau = torch.full((n,), 0.02, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sizes = sorted(args.num_samples)
    losses = {size: {"rgcl": RobustGCLoss(size, state_on_host=args.state_on_host).to(dev),
                     "isogclr": ISogCLRLoss(size, state_on_host=args.state_on_host).to(dev)} for size in sizes}
    cells = [(size, name) for size in sizes for name in ("rgcl", "isogclr")]
    times = {cell: [] for cell in cells}
    g = torch.Generator().manual_seed(args.seed)
    for round_ in range(args.warmup + args.repeats):
        shift = round_ % len(cells)  # the sizes take turns, in an order rotated every round (noisy machines)
        for size, name in cells[shift:] + cells[:shift]:
            ids = torch.randint(size, (n,), generator=g).to(dev)
            I, T = image.clone().requires_grad_(), text.clone().requires_grad_()
            taus = {"tau_image": tau.clone().requires_grad_(), "tau_text": tau.clone().requires_grad_()} \
                if name == "rgcl" else {}
            sync()
            tic = time.perf_counter()
            losses[size][name](I, T, ids, ids, **taus)["loss"].backward()
            sync()
            if round_ >= args.warmup:
                times[size, name].append(time.perf_counter() - tic)
    rows = {str(size): {name: {"median_ms": 1e3 * statistics.median(times[size, name]),
                               "bytes_per_sample": state_bytes_per_sample(losses[size][name]),
                               "state_gb": state_bytes_per_sample(losses[size][name]) * size / 1e9}
                        for name in ("rgcl", "isogclr")} for size in sizes}
    biggest = (sizes[-1], losses[sizes[-1]])
    base = rows[str(min(args.num_samples))]
    for row in rows.values():
        for name, cell in row.items():
            cell["ratio_to_smallest_n"] = cell["median_ms"] / base[name]["median_ms"]
    report = {"config": {"batch": n, "dim": args.dim, "device": str(dev), "repeats": args.repeats,
                         "warmup": args.warmup, "state_on_host": args.state_on_host,
                         "threads": torch.get_num_threads(), "torch": torch.__version__},
              "num_samples": rows,
              "web_scale": {name: {"num_samples": WEB_SCALE, "state_gb": cell["bytes_per_sample"] * WEB_SCALE / 1e9,
                                   "gpu_gb": 0.0 if args.state_on_host else cell["bytes_per_sample"] * WEB_SCALE / 1e9}
                            for name, cell in base.items()}}
    if args.save_dir:
        size, losses = biggest
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        path = Path(args.save_dir) / "criterion.pt"
        tic = time.perf_counter()
        torch.save(losses["rgcl"].state_dict(), path)
        seconds = time.perf_counter() - tic
        report["save"] = {"loss": "rgcl", "num_samples": size, "bytes": path.stat().st_size, "seconds": seconds,
                          "gb_per_s": path.stat().st_size / 1e9 / seconds}
        path.unlink()
    return report


def state_markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"B={c['batch']}, d={c['dim']}, {c['device']}, state on {'host' if c['state_on_host'] else 'device'}, "
             f"median of {c['repeats']} rounds", "",
             "| N | loss | bytes / sample | state GB | median ms | x smallest N |", "|---:|---|---:|---:|---:|---:|"]
    for size, row in report["num_samples"].items():
        lines += [f"| {int(size):.0e} | {k} | {v['bytes_per_sample']} | {v['state_gb']:.3f} | {v['median_ms']:.2f} | "
                  f"{v['ratio_to_smallest_n']:.2f} |" for k, v in row.items()]
    lines += [f"| {WEB_SCALE:.0e} | {k} (arithmetic) | | {v['state_gb']:.1f} (GPU {v['gpu_gb']:.1f}) | | |"
              for k, v in report["web_scale"].items()]
    if "save" in report:
        s = report["save"]
        lines += ["", f"save of the {s['loss']} state, N={s['num_samples']:.0e}: {s['bytes'] / 1e9:.2f} GB in "
                      f"{s['seconds']:.2f} s ({s['gb_per_s']:.2f} GB/s)"]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"B={c['batch']}, d={c['dim']}, {c['device']}, {c['threads']} thread(s), median of {c['repeats']} rounds",
             "", "| variant | median ms | x open_clip ClipLoss |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['median_ms']:.2f} | {v['ratio']:.2f} |" for k, v in report["results"].items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = run_state_sweep(args) if args.num_samples else run(args)
    print(state_markdown(report) if args.num_samples else markdown(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    from tempnet.errors import run_cli

    run_cli(main)
