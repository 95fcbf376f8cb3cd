"""Generation speed with and without TempNet on the same model: tokens/s and their ratio.

Three runs of greedy `generate` (KV cache on, a fixed number of new tokens) over the same weights:
  plain      the base HF class (no TempNet)
  wrapper    the TempNet wrapper (logits / TempNet(logits) inside forward)
  processor  the base class + TempNetLogitsProcessor with the same TempNet
They take turns, `--repeats` timed rounds after `--warmup`; the median of each is reported.

    python scripts/bench_generation.py --preset llama-small                  # random weights, CPU
    python scripts/bench_generation.py --model CHECKPOINT --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LogitsProcessorList, PreTrainedModel

from tempnet.integrations.decoding import TempNetLogitsProcessor
from tempnet.integrations.head import DTYPES
from tempnet.integrations.hf import (TempNetCausalLMMixin, tempnet_model_from_config,
                                     tempnet_model_from_pretrained)

PRESETS = {  # LLaMA shapes with LLaMA's 32000-token vocabulary, random weights
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "llama-small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a checkpoint with or without tempnet.* weights (fresh TempNet if none)")
    source.add_argument("--preset", choices=sorted(PRESETS), default="llama-small")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_wrapper(args) -> TempNetCausalLMMixin:
    dtype = DTYPES[args.dtype]
    if args.model:
        try:
            model = tempnet_model_from_pretrained(args.model, dtype=dtype)
        except ValueError:  # a plain base checkpoint: time it with a fresh TempNet
            model = tempnet_model_from_pretrained(args.model, dtype=dtype, fresh_tempnet=True)
    else:
        config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **PRESETS[args.preset])
        with torch.device(args.device):
            model = tempnet_model_from_config(config).to(dtype)
    return model.to(args.device).eval()


def untempered_twin(model: TempNetCausalLMMixin) -> PreTrainedModel:
    """The wrapper's base HF class with a copy of its weights (no TempNet)."""
    base_cls = next(c for c in type(model).__mro__[1:]
                    if issubclass(c, PreTrainedModel) and not issubclass(c, TempNetCausalLMMixin))
    config_cls = next(c for c in type(model.config).__mro__[1:] if c.model_type)
    config = config_cls(**{k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "tempnet")})
    with torch.device(model.device):
        twin = base_cls(config).to(model.dtype)
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tempnet.")})
    return twin.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def _seconds(model, prompt: torch.Tensor, args, **generate_kwargs) -> float:
    """Wall time of one greedy generate of exactly args.new_tokens tokens."""
    model.generation_config.eos_token_id = None  # no early stop
    _sync(args.device)
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                         do_sample=False, pad_token_id=0, **generate_kwargs)
    _sync(args.device)
    assert out.shape[1] == prompt.shape[1] + args.new_tokens
    return time.perf_counter() - start


def tokens_per_second(runs: dict, prompt: torch.Tensor, args) -> dict[str, float]:
    """Median tokens/s of each run; the runs take turns, so changes in machine load hit them alike."""
    times, names = {name: [] for name in runs}, list(runs)
    for i in range(args.warmup + args.repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order: no run always goes first
            model, kwargs = runs[name]
            seconds = _seconds(model, prompt, args, **kwargs)
            if i >= args.warmup:
                times[name].append(seconds)
    return {name: prompt.shape[0] * args.new_tokens / statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = load_wrapper(args)
    plain = untempered_twin(model)
    prompt = torch.randint(3, model.config.vocab_size, (args.batch_size, args.prompt_length), device=args.device)
    processor = TempNetLogitsProcessor(model.tempnet)
    results = tokens_per_second({
        "plain": (plain, {}),
        "wrapper": (model, {}),
        "processor": (plain, {"logits_processor": LogitsProcessorList([processor])}),
    }, prompt, args)
    params = sum(p.numel() for p in plain.parameters())
    head = sum(p.numel() for p in model.tempnet.parameters())
    print(f"model: {args.model or args.preset} ({params / 1e6:.1f}M parameters, vocabulary {model.config.vocab_size}, "
          f"TempNet {head / 1e6:.2f}M), {args.device}, {args.dtype}, batch {args.batch_size}, "
          f"prompt {args.prompt_length}, {args.new_tokens} new tokens, median of {args.repeats}")
    for name, rate in results.items():
        print(f"  {name:<10} {rate:10.1f} tokens/s   ratio to plain {rate / results['plain']:.3f}")
    return results


if __name__ == "__main__":
    from tempnet.errors import run_cli

    run_cli(main)
