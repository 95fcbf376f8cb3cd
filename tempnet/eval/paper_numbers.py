"""The numbers Qiu et al. (ICML 2024) report, written once, keyed like our results layout.

`PAPER[table][row][column]`: the table and row names are the `RESULTS_DIR` layout's (`llm/<row>/`,
`clip/<row>/`, `alpaca/<row>/`; see `tempnet.eval.tables`), the columns are lm-eval task names
(perplexity), "avg" (mean accuracy over the table's accuracy tasks), `<set>/img_r1` (IR@1),
`<set>/txt_r1` (TR@1), `<set>/zeroshot_top1` and "lc_win_rate", all in percent except perplexities.
Only numbers stated in the paper's text and headline results are here; every other cell of the paper's
tables is left out (printed empty) rather than guessed.
"""

from __future__ import annotations

__all__ = ["PAPER"]

PAPER: dict[str, dict[str, dict[str, float]]] = {
    # GPT-2 125M from scratch on OpenWebText2: tau = 1 vs TempNet (average accuracy, WikiText word perplexity).
    "gpt2": {
        "gpt2_scratch_baseline": {"avg": 31.44, "wikitext": 49.86},
        "gpt2_scratch_tempnet": {"avg": 32.24, "wikitext": 47.32},
    },
    # Ablation on the same setting (average accuracy): no TempNet / no DRO, DRO only, TempNet only, both.
    "ablation": {
        "ce": {"avg": 31.44},
        "dro": {"avg": 31.78},
        "tempnet_ce": {"avg": 31.76},
        "tempnet_dro": {"avg": 32.24},
    },
    # Frozen LLaMA-2 7B without / with a TempNet trained on top (average accuracy, LAMBADA perplexity).
    "llama2": {
        "llama2_7b": {"avg": 57.20, "lambada_openai": 4.01},
        "llama2_7b_tempnet": {"avg": 59.44, "lambada_openai": 3.21},
    },
    # AlpacaEval length-controlled win rate, LLaMA-2 7B Chat at fixed tau 0.7 vs with its TempNet.
    "alpaca": {
        "llama2_chat_7b_tau0.7": {"lc_win_rate": 5.35},
        "llama2_chat_7b_tempnet": {"lc_win_rate": 5.74},
    },
    # CLIP on CC3M (ResNet-50 + DistilBERT): Flickr30K IR@1 / TR@1 and ImageNet-1k zero-shot top-1.
    "clip": {
        "clip": {"flickr30k/img_r1": 40.98, "flickr30k/txt_r1": 50.90, "imagenet/zeroshot_top1": 36.27},
        "isogclr": {"flickr30k/img_r1": 44.36, "flickr30k/txt_r1": 60.20, "imagenet/zeroshot_top1": 40.72},
        "isogclr_tempnet": {"flickr30k/img_r1": 46.17, "flickr30k/txt_r1": 62.51, "imagenet/zeroshot_top1": 42.28},
    },
}
