"""Training-step time of GPT-2 124M (CE, naive and fused TempNet loss) and of CLIP (plain clip vs isogclr_tempnet).

One model (GPT2Config defaults: 12 layers, 768 wide, V = 50257; random weights) with a TempNet
head, one AdamW; each timed step is forward + backward + optimizer step of:
  ce      the base GPT2LMHeadModel forward and its own cross-entropy (TempNet unused)
  naive   the wrapper with objective tempnet_dro and fused_loss off (full logits, TempNet over them)
  fused   the wrapper with objective tempnet_dro and fused_loss on (tempnet.ops.linear_tempnet_dro_loss)
  naive_checked  naive with tempnet.checks on: the value checks (NaN logits) every step, as before they
                 moved behind that switch (--with-checks adds it)
The variants take turns, --repeats rounds after --warmup; medians are reported, with TempNet's share
of the step time, (t_variant - t_ce) / t_variant, beside its share of the training FLOPs:
TempNet per token trains in about 2 * (2*V*M + 2*M*M) + 2*M*M FLOPs (forward, weight gradients, and
the input gradient of its second layer; its input is detached), the model in ~6 * params.
Only the ratios are meaningful; absolute times depend on the machine and its load.

    python scripts/bench_train_step.py --json bench_train_step.json
    python scripts/bench_train_step.py --n-layer 2 --n-embd 64 --vocab 1000 --seq-len 32 --repeats 1

--clip times what a CLIP user pays per step instead: the Bimodal-CL trainer's own step (ClipRun.step:
forward of both towers, the loss, backward, the optimizers) at the paper's towers (Bimodal-CL/configs/cc3m.yaml:
ResNet-50 image tower, 256-d projections, its loss settings; a DistilBERT-size text tower, 6 layers x 768,
built from its config with the offline open_clip tokenizer, 30 tokens; 224 px; random weights), for the plain
`clip` loss and for `isogclr_tempnet` (RGCL with both TempNets), on one fixed batch of the synthetic set,
taking turns. tempnet.num_prototypes is min(256, batch) (prototypes come from the first batch). Reported:
the ratio of the medians, TempNets' share of the isogclr_tempnet step's FLOPs (torch's FlopCounterMode:
matmuls and convolutions, forward and backward) and the goal, within max(5%, FLOP share + 2 points) of
clip. key=value arguments override the config (the test shrinks the towers that way).

    python scripts/bench_train_step.py --clip --batch-size 32 --json bench_clip_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tempnet.integrations.hf import tempnet_model_from_config

VARIANTS = ("ce", "naive", "fused")
CLIP_VARIANTS = ("clip", "isogclr_tempnet")
#: The paper's towers on top of Bimodal-CL/configs/cc3m.yaml, buildable offline (no pretrained download).
PAPER_TOWERS = ["model.image.pretrained=false", "model.text.name=distilbert", "model.text.pretrained=false",
                "model.text.tokenizer=open_clip", "model.text.config_overrides={vocab_size: 49408}",
                "model.image_size=224", "data.synthetic=true", "data.num_workers=0", "train.tensorboard=false",
                "eval.select_best="]
CC3M = Path(__file__).resolve().parents[1] / "Bimodal-CL" / "configs" / "cc3m.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    defaults = GPT2Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-layer", type=int, default=defaults.n_layer)
    parser.add_argument("--n-embd", type=int, default=defaults.n_embd)
    parser.add_argument("--n-head", type=int, default=defaults.n_head)
    parser.add_argument("--vocab", type=int, default=defaults.vocab_size)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences (default 2); --clip: pairs "
                        "(default 32)")
    parser.add_argument("--tempnet-hidden", type=int, default=256, help="TempNet's width M")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--with-checks", action="store_true",
                        help="also time naive_checked: the naive path with tempnet.checks on (value checks each step)")
    parser.add_argument("--clip", action="store_true", help="time the CLIP step (clip vs isogclr_tempnet) instead")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="--clip: overrides of the config")
    args = parser.parse_args(argv)
    if args.overrides and not args.clip:
        parser.error("key=value overrides are for --clip")
    if args.batch_size is None:
        args.batch_size = 32 if args.clip else 2
    if args.n_embd % args.n_head:
        parser.error(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")
    if min(args.seq_len, args.batch_size, args.repeats, args.vocab - 1) < 1 or args.warmup < 0:
        parser.error("need --seq-len, --batch-size, --repeats >= 1, --vocab >= 2, --warmup >= 0")
    return args


def build(args):
    torch.manual_seed(args.seed)
    last = args.vocab - 1  # GPT2Config's bos/eos (50256) must lie inside a shrunk vocabulary
    config = GPT2Config(vocab_size=args.vocab, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                        n_positions=max(1024, args.seq_len), bos_token_id=last, eos_token_id=last)
    model = tempnet_model_from_config(config, objective="tempnet_dro", rho=8.0, tau_min=0.5, tau_max=5.0,
                                      hidden_size=args.tempnet_hidden).to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)  # small: the weights stay what they were
    ids = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), device=args.device)
    return model, optimizer, ids


def make_step(model, optimizer, ids):
    from tempnet import checks

    def step(variant: str) -> None:
        with checks.checking(variant.endswith("_checked")):
            _step(variant.removesuffix("_checked"))

    def _step(variant: str) -> None:
        if variant == "ce":  # the base class's forward on the same weights: logits and HF's own CE, no TempNet
            loss = GPT2LMHeadModel.forward(model, input_ids=ids, labels=ids).loss
        else:
            model.use_fused_loss(variant == "fused")
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def flops_per_token(model, vocab: int, width: int) -> dict[str, float]:
    """Training FLOPs per token: the model ~6 * params, TempNet 2 * (2VM + 2MM) + 2MM."""
    base = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("tempnet."))
    tempnet = 2 * (2 * vocab * width + 2 * width * width) + 2 * width * width
    return {"model": 6.0 * base, "tempnet": float(tempnet), "base_params": base}


def clip_runs(args, root: Path) -> dict:
    """loss -> (the trainer's ClipRun at the paper's towers, one fixed batch of its loader)."""
    from tempnet.config import load_config
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import ClipRun

    precision = "fp32" if str(args.device) == "cpu" else "fp16"  # the paper's fp16 where there is a GPU
    runs = {}
    for loss in CLIP_VARIANTS:
        cfg = load_config(BimodalConfig, CC3M, [
            *PAPER_TOWERS, f"loss={loss}", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
            f"data.synthetic_pairs={args.batch_size}", f"tempnet.num_prototypes={min(256, args.batch_size)}",
            f"train.precision={precision}", *args.overrides])
        run = ClipRun(cfg, root / loss, torch.device(args.device))
        runs[loss] = (run, next(iter(run.loader)))
    return runs


def tempnet_flops_share(run, batch) -> float:
    """TempNets' share of one step's FLOPs: their forward + backward on features of the batch's shape, counted
    alone, over the whole step's count (FlopCounterMode's per-module split misattributes backward work)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as step:
        run.step(batch)
    features = [torch.nn.functional.normalize(torch.randn(batch[0].shape[0], run.cfg.model.embed_dim,
                                                          device=run.device), dim=-1) for _ in range(2)]
    with FlopCounterMode(display=False) as tempnets:
        sum(tau.sum() for tau in run.tempnets(*features)).backward()
    run.tempnets.zero_grad(set_to_none=True)
    return tempnets.get_total_flops() / step.get_total_flops()


def clip_main(args) -> dict:
    import tempfile

    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        runs = clip_runs(args, Path(tmp))
        times = {v: [] for v in CLIP_VARIANTS}
        for round_ in range(args.warmup + args.repeats):
            for variant, (run, batch) in runs.items():
                sync()
                t0 = time.perf_counter()
                run.step(batch)
                sync()
                if round_ >= args.warmup:
                    times[variant].append((time.perf_counter() - t0) * 1000)
        share = tempnet_flops_share(*runs["isogclr_tempnet"])
        model = runs["clip"][0].model
        cfg = runs["clip"][0].cfg
    step_ms = {v: round(statistics.median(t), 1) for v, t in times.items()}
    ratio = step_ms["isogclr_tempnet"] / step_ms["clip"]
    goal = max(0.05, share + 0.02)
    report = {
        "config": {k: getattr(args, k) for k in ("batch_size", "warmup", "repeats", "device", "seed", "overrides")},
        "towers": {"image": cfg.model.image.name, "text": cfg.model.text.name, "image_size": cfg.model.image_size,
                   "precision": cfg.train.precision, "num_prototypes": runs["isogclr_tempnet"][0].cfg.tempnet.num_prototypes,
                   "params": sum(p.numel() for p in model.parameters())},
        "step_ms": step_ms,
        "ratio": round(ratio, 4),
        "tempnet_flops_share": round(share, 6),
        "goal": round(goal, 4),
        "within_goal": ratio - 1 <= goal,
    }
    print(f"CLIP step: {cfg.model.image.name} + {cfg.model.text.name} ({report['towers']['params'] / 1e6:.1f}M params), "
          f"{cfg.model.image_size} px, batch {args.batch_size}, {cfg.train.precision}, {args.device}")
    print("| loss | step ms (median) | vs clip | TempNets' share of FLOPs | goal |")
    print("|---|---|---|---|---|")
    print(f"| clip | {step_ms['clip']:.0f} | 1.000 | - | - |")
    print(f"| isogclr_tempnet | {step_ms['isogclr_tempnet']:.0f} | {ratio:.3f} | {share:.4%} | <= {1 + goal:.3f} "
          f"({'met' if report['within_goal'] else 'missed'}) |")
    return report


def lm_main(args) -> dict:
    model, optimizer, ids = build(args)
    step = make_step(model, optimizer, ids)
    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else (lambda: None)
    variants = VARIANTS + (("naive_checked",) if args.with_checks else ())
    times = {v: [] for v in variants}
    for round_ in range(args.warmup + args.repeats):
        for variant in variants:
            sync()
            t0 = time.perf_counter()
            step(variant)
            sync()
            if round_ >= args.warmup:
                times[variant].append((time.perf_counter() - t0) * 1000)
    step_ms = {v: round(statistics.median(t), 2) for v, t in times.items()}
    flops = flops_per_token(model, args.vocab, args.tempnet_hidden)
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "base_params": flops["base_params"],
        "step_ms": step_ms,
        "tempnet_time_share": {v: round((step_ms[v] - step_ms["ce"]) / step_ms[v], 4) for v in variants if v != "ce"},
        "tempnet_flops_share": round(flops["tempnet"] / (flops["model"] + flops["tempnet"]), 4),
        "ratios": {"naive_vs_ce": round(step_ms["naive"] / step_ms["ce"], 3),
                   "fused_vs_ce": round(step_ms["fused"] / step_ms["ce"], 3),
                   "fused_vs_naive": round(step_ms["fused"] / step_ms["naive"], 3)},
    }
    if args.with_checks:
        report["ratios"]["naive_checked_vs_naive"] = round(step_ms["naive_checked"] / step_ms["naive"], 3)
    print(f"GPT-2 {flops['base_params'] / 1e6:.1f}M params, V={args.vocab}, batch {args.batch_size} x {args.seq_len}, "
          f"TempNet M={args.tempnet_hidden}, {args.device}")
    print("| variant | step ms (median) | vs ce | TempNet share of step time | TempNet share of FLOPs |")
    print("|---|---|---|---|---|")
    for v in variants:
        share = "-" if v == "ce" else f"{report['tempnet_time_share'][v]:.1%}"
        flop = "-" if v == "ce" else f"{report['tempnet_flops_share']:.1%}"
        print(f"| {v} | {step_ms[v]:.0f} | {step_ms[v] / step_ms['ce']:.3f} | {share} | {flop} |")
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = clip_main(args) if args.clip else lm_main(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    from tempnet.errors import run_cli

    run_cli(main)
