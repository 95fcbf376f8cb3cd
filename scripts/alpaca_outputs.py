"""Write AlpacaEval model outputs for a chat model with its TempNet, or for the same model at a fixed tau.

    python scripts/alpaca_outputs.py --model runs/llama2_chat_7b/final --instructions alpaca_eval.json \
        --row llama2_chat_7b_tempnet                     # tau from the model's TempNet
    python scripts/alpaca_outputs.py --model runs/llama2_chat_7b/final --instructions alpaca_eval.json \
        --row llama2_chat_7b_tau0.7 --tau 0.7            # the same weights at a fixed tau (the paper's baseline)

writes RESULTS_DIR/alpaca/<row>/model_outputs.json, `[{"instruction", "output", "generator"}]` (plus
"dataset" when the instruction file has it): what `alpaca_eval --model_outputs FILE` reads. Score it with
`alpaca_eval --model_outputs RESULTS_DIR/alpaca/<row>/model_outputs.json --reference_outputs REF.json`
(needs an OpenAI key for the GPT-4 annotator); then `python scripts/make_tables.py RESULTS_DIR`.

Instructions: a JSON list of {"instruction", optional "input"} records (AlpacaEval's eval set, or
Alpaca data), or JSONL of the same. The prompt is the instruction (plus "\\n\\n" + input) as one user
turn, through `tokenizer.apply_chat_template` when the tokenizer has a chat template; otherwise
LLaMA-2-Chat's format `[INST] prompt [/INST]` after the BOS token (`--prompt-format llama2`), or the
bare prompt (`--prompt-format plain`). Decoding: sampling with top-p 0.9 (no top-k, transformers'
own temperature 1) by default, or `--greedy`; the temperature is TempNet's (the model's forward divides
the logits by tau) or `--tau` (`FixedTemperatureLogitsProcessor` on the raw logits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tempnet.integrations.decoding import FixedTemperatureLogitsProcessor
from tempnet.integrations.head import DTYPES
from tempnet.integrations.hf import tempnet_model_from_pretrained
from tempnet.modules import FixedTemperature

LLAMA2_CHAT = "[INST] {prompt} [/INST]"
PROMPT_FORMATS = ("auto", "chat_template", "llama2", "plain")


def read_instructions(path: str | Path) -> list[dict]:
    """Records with a non-empty "instruction" (and optional "input", "dataset") from a JSON list or JSONL."""
    path = Path(path)
    text = path.read_text()
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is neither a JSON list nor JSONL: {e}") from e
    if isinstance(records, dict):
        raise ValueError(f"{path} holds one JSON object; expected a list of {{'instruction': ...}} records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
            raise ValueError(f"record {i} of {path} has no non-empty 'instruction' string: {str(rec)[:200]}")
        if rec.get("input") is not None and not isinstance(rec["input"], str):
            raise ValueError(f"record {i} of {path}: 'input' must be a string, got {type(rec['input']).__name__}")
    if not records:
        raise ValueError(f"{path} holds no instructions")
    return records


def user_prompt(record: dict) -> str:
    """The instruction, plus its input after a blank line (Alpaca-style records)."""
    extra = (record.get("input") or "").strip()
    return record["instruction"] + (f"\n\n{extra}" if extra else "")


def encode_prompt(tokenizer, prompt: str, prompt_format: str = "auto") -> list[int]:
    """Token ids of one user turn: the tokenizer's chat template, or LLaMA-2-Chat's [INST] format, or plain."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if prompt_format == "chat_template" and not has_template:
        raise ValueError("prompt_format='chat_template' but the tokenizer has no chat template")
    if prompt_format in ("auto", "chat_template") and has_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes its own BOS
    text = prompt if prompt_format == "plain" else LLAMA2_CHAT.format(prompt=prompt)
    return tokenizer(text)["input_ids"]


@torch.no_grad()
def generate_outputs(model, tokenizer, prompts: list[str], tau: float | None = None, prompt_format: str = "auto",
                     max_new_tokens: int = 1024, batch_size: int = 8, greedy: bool = False, top_p: float = 0.9,
                     seed: int = 0) -> list[str]:
    """One response per prompt. tau None: the model's TempNet; else the raw logits divided by tau."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    processors, head = [], model.tempnet
    if tau is not None:
        processors = [FixedTemperatureLogitsProcessor(tau)]
        model.tempnet = FixedTemperature(1.0)  # the raw logits; restored below
    # transformers' own temperature stays 1 (a released generation_config.json may set 0.6): tau is the only one
    sampling = {} if greedy else {"top_p": top_p, "top_k": 0, "temperature": 1.0}
    torch.manual_seed(seed)
    outputs = []
    try:
        for start in range(0, len(prompts), batch_size):
            ids = [encode_prompt(tokenizer, p, prompt_format) for p in prompts[start:start + batch_size]]
            width = max(map(len, ids))
            batch = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # left padding
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
            out = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, logits_processor=processors, do_sample=not greedy, **sampling)
            outputs += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, width:]]
    finally:
        model.tempnet = head
    return outputs


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory or hub name (with its TempNet)")
    p.add_argument("--instructions", required=True, help="JSON list or JSONL of {'instruction', 'input'?}")
    p.add_argument("--row", required=True, help="results row name; also the generator name")
    p.add_argument("--results-dir", default="results", help="writes RESULTS_DIR/alpaca/ROW/model_outputs.json")
    p.add_argument("--tau", type=float, help="a fixed temperature instead of the TempNet (the paper's baseline: 0.7)")
    p.add_argument("--generator", help="generator name in the outputs (default: the row name)")
    p.add_argument("--tokenizer", help="tokenizer (default: the model's)")
    p.add_argument("--prompt-format", default="auto", choices=PROMPT_FORMATS)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of top-p sampling")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="only the first N instructions (smoke runs)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="a device, or 'auto' for device_map='auto' (models that need several GPUs)")
    args = p.parse_args(argv)
    if args.tau is not None and not args.tau > 0:
        p.error(f"--tau must be positive, got {args.tau}")

    from transformers import AutoTokenizer

    records = read_instructions(args.instructions)[:args.limit]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    placement = {"device_map": "auto"} if args.device == "auto" else {}
    model = tempnet_model_from_pretrained(args.model, dtype=DTYPES[args.dtype], **placement).eval()
    if args.device != "auto":
        model.to(args.device)
    texts = generate_outputs(model, tokenizer, [user_prompt(r) for r in records], tau=args.tau,
                             prompt_format=args.prompt_format, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, greedy=args.greedy, top_p=args.top_p, seed=args.seed)
    generator = args.generator or args.row
    outputs = [{"instruction": r["instruction"], "output": text, "generator": generator,
                **({"dataset": r["dataset"]} if "dataset" in r else {})} for r, text in zip(records, texts)]
    out = Path(args.results_dir) / "alpaca" / args.row / "model_outputs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(outputs, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(outputs)} outputs of {generator} to {out}")
    return out


if __name__ == "__main__":
    from tempnet.errors import run_cli

    sys.exit(run_cli(main))
