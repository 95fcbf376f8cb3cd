"""Output tokens/s of vLLM with TempNet's logits processor against vLLM without it, same model, prompts and sampling.

    python scripts/bench_serving.py --model LLM-Opt/TempNet-LLaMA2-Chat-7B-v0.1                  # a GPU
    python scripts/bench_serving.py --model BASE_DIR --tempnet TEMPNET.safetensors --json out.json
    python scripts/bench_serving.py --model DIR --random-llama --dtype float32 --enforce-eager \
        --kv-cache-memory-bytes 268435456 --max-model-len 256                # a CPU: a random 32k-vocabulary LLaMA

One process, both engines alive at once (each warmed up), then `--repeats` rounds, each a timed batch on the
baseline and one on the plugin, of `--prompts` requests (seeded random token ids, `--prompt-tokens` each) of exactly `--max-tokens` new
tokens (ignore_eos; no tokenizer is loaded). The ratio is the median over rounds of plugin / baseline tokens/s
(alternating batches, so a change in the machine's load meets both); each engine's best batch is printed. `--random-llama` first writes a
random LLaMA with a random TempNet in our checkpoint layout to --model (hidden 512, 4 layers, vocabulary 32000,
TempNet width 256: LLaMA-2's vocabulary and TempNet at a size a CPU runs).
Prints both rates, their ratio and the FLOP bound of that ratio: TempNet's multiply-adds per token (V x M +
M x M + M) against the model's linear layers (attention projections, MLP, LM head; attention over the context
not counted), so bound = model / (model + TempNet): 0.9987 for a 7B LLaMA with V 32000, M 256.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from tempnet.errors import UserError, check_model_path, run_cli

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a TempNet checkpoint (ours or the released layout), or a "
                                                       "plain one with --tempnet")
    parser.add_argument("--tempnet", type=Path, metavar="FILE", help="an exported TempNet to serve with --model")
    parser.add_argument("--random-llama", action="store_true", help="first write a random LLaMA + TempNet to --model")
    parser.add_argument("--prompts", type=int, default=64, help="requests per batch")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per request (exactly: ignore_eos)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of one timed batch per engine")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--kv-cache-memory-bytes", type=int, help="the KV cache's size (instead of a memory fraction)")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.max_tokens < 1 or args.repeats < 1:
        parser.error("--prompts, --max-tokens and --repeats must be >= 1")
    return args


def flop_bound(config: dict, tempnet_hidden: int) -> dict:
    """Multiply-adds per generated token of the model's linear layers and of TempNet, and the ratio bound."""
    text = config.get("text_config", config)
    h, layers, inter, vocab = (text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"],
                               text["vocab_size"])
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or h // heads
    kv = text.get("num_key_value_heads") or heads
    per_layer = 2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * inter  # q, o; k, v; gate, up, down
    model = layers * per_layer + h * vocab
    tempnet = vocab * tempnet_hidden + tempnet_hidden * tempnet_hidden + tempnet_hidden
    return {"model_macs_per_token": model, "tempnet_macs_per_token": tempnet, "ratio_bound": model / (model + tempnet)}


def write_random_llama(path: Path) -> None:
    """A random LLaMA (hidden 512, 4 layers, 8 heads of 64, vocabulary 32000) with a random TempNet (M 256)."""
    import torch
    from transformers import LlamaConfig

    from tempnet.integrations.hf import tempnet_model_from_config

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512)
    tempnet_model_from_config(config, hidden_size=256, tau_min=0.01, tau_max=1.2).save_pretrained(path)


def _engine(args, with_tempnet: bool):
    from vllm import LLM

    from tempnet.integrations.vllm import PROCESSOR
    from tempnet.integrations.serving import TEMPNET_FILE_KEY

    options = dict(dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed,
                   enforce_eager=args.enforce_eager, max_model_len=args.max_model_len, skip_tokenizer_init=True,
                   kv_cache_memory_bytes=args.kv_cache_memory_bytes)
    if with_tempnet:
        options["logits_processors"] = [PROCESSOR]
        if args.tempnet is not None:
            options["hf_overrides"] = {TEMPNET_FILE_KEY: str(args.tempnet)}
    return LLM(model=args.model, **options)


def _batch(llm, prompts, params) -> dict:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def measure(args, vocab: int) -> tuple[dict, dict, list[float]]:
    """(baseline, plugin, per-round ratios): both engines alive at once, their timed batches alternating, so a
    change in the machine's load meets both; each engine's best batch, and each round's plugin/baseline ratio."""
    import torch
    from vllm import SamplingParams

    ids = torch.randint(3, vocab, (args.prompts, args.prompt_tokens), generator=torch.Generator().manual_seed(args.seed))
    prompts = [{"prompt_token_ids": row} for row in ids.tolist()]
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, ignore_eos=True, seed=args.seed,
                            detokenize=False)
    engines = {}
    try:
        for name, with_tempnet in (("baseline", False), ("plugin", True)):
            engines[name] = _engine(args, with_tempnet)
            engines[name].generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False),
                                   use_tqdm=False)  # warm-up
        rounds = [{name: _batch(llm, prompts, params) for name, llm in engines.items()} for _ in range(args.repeats)]
    finally:
        for llm in engines.values():
            llm.llm_engine.engine_core.shutdown()
        engines.clear()
        gc.collect()
    best = {name: max((r[name] for r in rounds), key=lambda b: b["tokens_per_s"]) for name in ("baseline", "plugin")}
    ratios = [r["plugin"]["tokens_per_s"] / r["baseline"]["tokens_per_s"] for r in rounds]
    return best["baseline"], best["plugin"], ratios


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import PreTrainedConfig

    from tempnet.integrations.serving import ServingHead

    if args.random_llama:
        if Path(args.model).exists():
            raise UserError(f"--random-llama writes a new model to --model, but {args.model} exists")
        write_random_llama(Path(args.model))
    check_model_path(args.model, "--model")
    if args.tempnet is not None and not args.tempnet.is_file():
        raise FileNotFoundError(f"--tempnet: no such file: {args.tempnet}")
    config, _ = PreTrainedConfig.get_config_dict(args.model)
    head = ServingHead.load(args.model, config["vocab_size"], config.get("tempnet"), args.tempnet)
    if not hasattr(head.head, "hidden_size"):
        raise UserError(f"{head.source} holds no TempNet network (objective {head.settings.objective!r})")
    baseline, plugin, ratios = measure(args, config["vocab_size"])
    result = {"model": args.model, "tempnet": head.source, "prompts": args.prompts, "max_tokens": args.max_tokens,
              "temperature": args.temperature, "baseline": baseline, "tempnet_plugin": plugin,
              "ratio": statistics.median(ratios), "round_ratios": ratios,
              **flop_bound(config, head.head.hidden_size)}
    print(f"vLLM without the plugin: {baseline['tokens_per_s']:.1f} output tokens/s "
          f"({baseline['tokens']} tokens in {baseline['seconds']:.2f} s)")
    print(f"vLLM with TempNet:       {plugin['tokens_per_s']:.1f} output tokens/s "
          f"({plugin['tokens']} tokens in {plugin['seconds']:.2f} s)")
    print(f"ratio {result['ratio']:.3f} (median of {len(ratios)} rounds); FLOP bound {result['ratio_bound']:.4f} (TempNet "
          f"{result['tempnet_macs_per_token'] / 1e6:.3g} M multiply-adds per token against "
          f"{result['model_macs_per_token'] / 1e6:.3g} M for the model)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    sys.exit(run_cli(main))
