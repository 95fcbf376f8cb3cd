"""The `tempnet` command: generate with TempNet or a decoding baseline, export and attach a TempNet.

    tempnet generate MODEL --prompt "How do you get water in the desert?" [--plot tau.png]
        MODEL's own TempNet when it has one; or --tempnet FILE (an exported TempNet), --tau T,
        --dynatemp T_MIN T_MAX, --edt T0 N THETA, --no-tempnet. Prints each response and the tau
        used for every generated token; --plot draws that as a bar chart (the paper's per-token figure).
    tempnet export CHECKPOINT OUT.safetensors [--dtype float16]
    tempnet attach BASE TEMPNET.safetensors OUT_DIR
    tempnet serve [--tempnet FILE] CHECKPOINT [vLLM server flags]
        vLLM's OpenAI-compatible server on CHECKPOINT with TempNet's logits processor
        (`tempnet.integrations.vllm`); every flag after CHECKPOINT goes to vLLM unchanged.

Every method other than the model's own TempNet runs as a logits processor on the untempered
model (`tempnet.integrations.decoding`), so all of them meet the same sampler.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from tempnet.errors import DataError, UserError, check_model_dir, check_model_path, run_cli
from tempnet.integrations.head import DTYPES



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tempnet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text and print the tau of every generated token")
    gen.add_argument("model", help="checkpoint directory or hub id (with or without tempnet.* weights)")
    gen.add_argument("--tokenizer", help="tokenizer path (default: the model's)")
    prompts = gen.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    prompts.add_argument("--prompt-file", type=Path, help="a text file with one prompt per line")
    method = gen.add_mutually_exclusive_group()
    method.add_argument("--tempnet", type=Path, metavar="FILE", help="an exported TempNet (tempnet export)")
    method.add_argument("--tau", type=float, help="a fixed temperature")
    method.add_argument("--dynatemp", type=float, nargs=2, metavar=("T_MIN", "T_MAX"),
                        help="llama.cpp entropy-based dynamic temperature")
    method.add_argument("--edt", type=float, nargs=3, metavar=("T0", "N", "THETA"), help="EDT: T = T0 * N^(THETA/H)")
    method.add_argument("--no-tempnet", action="store_true", help="the untempered model (tau = 1)")
    gen.add_argument("--dynatemp-exponent", type=float, default=1.0)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    gen.add_argument("--top-k", type=int, default=0, help="0 turns top-k off (transformers' default is 50)")
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--temperature", type=float, help="transformers' own temperature, applied on top")
    gen.add_argument("--num-beams", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--plot", type=Path, metavar="FILE.png", help="bar chart of tau per generated token")
    gen.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    _device_args(gen)

    exp = sub.add_parser("export", help="write a checkpoint's TempNet alone to a safetensors file")
    exp.add_argument("checkpoint")
    exp.add_argument("out", type=Path)
    exp.add_argument("--dtype", choices=sorted(DTYPES), help="store the weights in this dtype (default: as is)")

    att = sub.add_parser("attach", help="attach an exported TempNet to a base checkpoint and save the result")
    att.add_argument("base")
    att.add_argument("tempnet", type=Path)
    att.add_argument("out", type=Path)
    att.add_argument("--dtype", choices=sorted(DTYPES), help="load (and save) the base model in this dtype")

    srv = sub.add_parser("serve", help="serve CHECKPOINT with vLLM's OpenAI-compatible server, tempered by TempNet",
                         description="Start vLLM's OpenAI-compatible server on CHECKPOINT with TempNet's logits "
                                     "processor. Every flag after CHECKPOINT goes to vLLM's server unchanged "
                                     "(--port, --dtype, --max-model-len, --gpu-memory-utilization, ...).")
    srv.add_argument("--tempnet", type=Path, metavar="FILE",
                     help="serve this exported TempNet (tempnet export) instead of the checkpoint's; before CHECKPOINT")
    srv.add_argument("checkpoint", help="checkpoint directory or hub id: ours, or the released layout")
    srv.add_argument("vllm_args", nargs=argparse.REMAINDER, metavar="vLLM flags", help="passed to vLLM's server")
    return parser


def _device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32 on CPU, the checkpoint's on GPU")


# ---- generate ------------------------------------------------------------------------------------

def _has_tempnet(path: str) -> bool:
    from tempnet.integrations.head import checkpoint_shapes

    return bool(checkpoint_shapes(path))


def _load(args):
    """(model, processor or None, method name). The model returns untempered logits unless the method
    is its own TempNet."""
    from transformers import AutoModelForCausalLM

    from tempnet.integrations import decoding
    from tempnet.integrations.export import read_tempnet_file
    from tempnet.integrations.head import fits_vocab
    from tempnet.integrations.hf import checkpoint_family, tempnet_model_from_pretrained

    dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if args.device == "cpu" else "auto")
    own = _has_tempnet(args.model)
    baseline = args.no_tempnet or any(x is not None for x in (args.tempnet, args.tau, args.dynatemp, args.edt))
    if own:
        model = tempnet_model_from_pretrained(args.model, dtype=dtype)
        if baseline:
            model.reset_tempnet(objective="ce", tau=1.0)  # untempered logits
    else:
        checkpoint_family(args.model)  # a model that is not a causal LM: one error line
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    model.to(args.device).eval()

    if args.tempnet is not None:
        head, _, vocab = read_tempnet_file(args.tempnet)
        if not fits_vocab(head, model.config.vocab_size):
            raise DataError(f"--tempnet {args.tempnet} was built for vocabulary size {vocab} but {args.model} has "
                            f"vocabulary size {model.config.vocab_size}")
        return model, decoding.TempNetLogitsProcessor(head, record=True), "TempNet file"
    if args.tau is not None:
        return model, decoding.FixedTemperatureLogitsProcessor(args.tau, record=True), f"tau = {args.tau}"
    if args.dynatemp is not None:
        t_min, t_max = args.dynatemp
        processor = decoding.EntropyDynamicTemperatureLogitsProcessor(t_min, t_max, args.dynatemp_exponent, record=True)
        return model, processor, f"dynatemp [{t_min}, {t_max}]"
    if args.edt is not None:
        return model, decoding.EDTLogitsProcessor(*args.edt, record=True), "EDT"
    return model, None, ("TempNet" if own and not args.no_tempnet else "tau = 1")


def _generate_one(model, tokenizer, processor, method: str, prompt: str, args) -> dict:
    from transformers import LogitsProcessorList

    encoded = tokenizer(prompt, return_tensors="pt").to(args.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams,
                   pad_token_id=pad)
    if args.do_sample:
        options.update({k: v for k, v in dict(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature).items()
                        if v is not None})
    if processor is not None:
        processor.history.clear()
        options["logits_processor"] = LogitsProcessorList([processor])
    own = method == "TempNet"
    torch.manual_seed(args.seed)
    out = model.generate(**encoded, return_dict_in_generate=True, **options, **({"return_tau": True} if own else {}))
    prompt_len = encoded["input_ids"].shape[1]
    ids = out.sequences[0, prompt_len:].tolist()
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[:ids.index(eos) + 1]
    if own:
        tau = out["tau"][0, :len(ids)].tolist()
    elif processor is not None and args.num_beams == 1:
        tau = [float(step[0]) for step in processor.history[:len(ids)]]
    else:  # beams reorder rows between steps; no fixed temperature to report
        tau = [1.0] * len(ids) if method == "tau = 1" else None
    return {"prompt": prompt, "method": method, "response": tokenizer.decode(ids, skip_special_tokens=True),
            "token_ids": ids, "tokens": token_texts(tokenizer, ids), "pieces": tokenizer.convert_ids_to_tokens(ids),
            "tau": tau}


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each generated token as the text it adds to the response (not a byte-level or sentencepiece symbol
    such as 'Ġ.' or '▁the'): the decoded prefix up to it minus the decoded prefix before it, so multi-byte
    characters split over tokens come out whole on the token that completes them."""
    texts, previous = [], ""
    for end in range(1, len(ids) + 1):
        current = tokenizer.decode(ids[:end], skip_special_tokens=False)
        texts.append(current[len(previous):] if current.startswith(previous) else tokenizer.decode(ids[end - 1:end]))
        previous = current
    return texts


def plot_tau(result: dict, path: Path) -> None:
    """Bar chart of tau per generated token (matplotlib, Agg backend), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau, tokens = result["tau"], result["tokens"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(tau)), 3.5))
    ax.bar(range(len(tau)), tau, color="tab:blue")
    ax.set_xticks(range(len(tau)), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize=7)
    ax.set_ylabel("tau")
    ax.set_title(f"{result['method']}: tau per generated token")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def _print_text(result: dict, index: int) -> None:
    print(f"=== prompt {index + 1} ({result['method']}) ===")
    print(result["prompt"])
    print("--- response ---")
    print(result["response"])
    if result["tau"] is not None:
        print("--- tau per generated token ---")
        for i, (token, tau) in enumerate(zip(result["tokens"], result["tau"]), start=1):
            print(f"{i:4d}  {token!r:<20} {tau:.4f}")  # the token's text, quoted so spaces show


def cmd_generate(args) -> int:
    from transformers import AutoTokenizer

    if args.prompt_file is not None and not args.prompt_file.is_file():
        raise FileNotFoundError(f"--prompt-file: no such file: {args.prompt_file}")
    prompts = args.prompt or [line for line in args.prompt_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"no prompts in {args.prompt_file}")
    check_model_dir(args.model, "model")
    if args.tokenizer:
        check_model_path(args.tokenizer, "--tokenizer")
    if args.tempnet is not None and not args.tempnet.is_file():
        raise FileNotFoundError(f"--tempnet: no such file: {args.tempnet}")
    model, processor, method = _load(args)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    results = [_generate_one(model, tokenizer, processor, method, p, args) for p in prompts]
    if args.plot:
        if any(r["tau"] is None for r in results):
            raise UserError("--plot needs a per-token tau (not available with beam search and a processor)")
        for i, result in enumerate(results):
            plot_tau(result, args.plot if i == 0 else args.plot.with_name(f"{args.plot.stem}-{i + 1}.png"))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for i, result in enumerate(results):
            _print_text(result, i)
    return 0


# ---- export / attach -------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from tempnet.integrations.export import export_tempnet

    export_tempnet(args.checkpoint, args.out, DTYPES[args.dtype] if args.dtype else None)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_attach(args) -> int:
    from transformers import AutoTokenizer

    from tempnet.integrations.export import attach_tempnet

    check_model_dir(args.base, "base")
    if not args.tempnet.is_file():
        raise FileNotFoundError(f"tempnet: no such file: {args.tempnet}")
    kwargs = {"dtype": DTYPES[args.dtype]} if args.dtype else {}
    if args.out.exists() and not args.out.is_dir() or args.out.is_symlink():
        raise UserError(f"OUT_DIR {args.out} exists and is not a directory: give a directory to write the model to")
    model = attach_tempnet(args.base, args.tempnet, **kwargs)
    model.save_pretrained(args.out)
    try:
        AutoTokenizer.from_pretrained(args.base).save_pretrained(args.out)
    except (OSError, ValueError) as err:  # a base without tokenizer files is still a valid model
        print(f"note: no tokenizer copied from {args.base} ({err})", file=sys.stderr)
    print(f"wrote {args.out}: {type(model).__name__} with the TempNet of {args.tempnet}")
    return 0


# ---- serve -----------------------------------------------------------------------------------------

def cmd_serve(args) -> int:
    """Check the checkpoint's TempNet and vLLM here (one `error:` line), then become vLLM's OpenAI server."""
    import os

    from transformers import PreTrainedConfig

    from tempnet.integrations.serving import ServingHead

    check_model_path(args.checkpoint, "checkpoint")
    if args.tempnet is not None and not args.tempnet.is_file():
        raise FileNotFoundError(f"--tempnet: no such file: {args.tempnet}")
    try:
        config, _ = PreTrainedConfig.get_config_dict(args.checkpoint)
    except OSError as exc:  # no config.json, not on the Hub, or no network
        raise UserError(f"cannot read the config of {args.checkpoint}: {str(exc).splitlines()[0]}") from None
    ServingHead.load(args.checkpoint, config["vocab_size"], config.get("tempnet"), args.tempnet)
    try:
        from tempnet.integrations.vllm import processors, serve_argv  # noqa: F401  (the plugin imports here)
    except ImportError as exc:
        raise UserError(f"{exc}; see tempnet/integrations/vllm/README.md for the environment that serves") from None
    server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
              *serve_argv(args.checkpoint, args.vllm_args, None if args.tempnet is None else str(args.tempnet))]
    sys.stdout.flush()
    os.execv(sys.executable, server)  # this process becomes the server (its signals, its exit status)


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"generate": cmd_generate, "export": cmd_export, "attach": cmd_attach, "serve": cmd_serve}
    return commands[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """The `tempnet` command: a user error (missing file, bad path) prints `error: ...` and exits with 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
