"""The README's core-API example runs as written (so the first code a reader copies works)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_core_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    core = [b for b in blocks if "from tempnet import TempNet, PrototypeTempNet, dro_lm_loss" in b]
    assert len(core) == 1, "the README's core-API example is missing"
    scope: dict = {}
    exec(compile(core[0], "README.md", "exec"), scope)
    assert scope["tau"].shape == (8, 1) and scope["tempnet"].proj[0].weight.grad is not None
    assert set(scope["terms"]) == {"loss", "ce", "tau_mean", "tau_min", "tau_max"}
    assert scope["img"].shape == (256, 256) and bool(scope["loss_fn"].image_state.seen[:256].all())


# ---- the tiny reproduction's tables: every number is the committed run's -----------------------------------------
RESULTS = README.parent / "images" / "demo_results"


def _readme_tables() -> list[list[list[str]]]:
    """The markdown tables of the README section "The tiny reproduction", each a list of rows of cell texts (bold
    marks removed), header and separator lines left out."""
    text = README.read_text()
    start = text.index("## The tiny reproduction")
    section = text[start:text.index("\n## ", start + 1)]
    tables, rows = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip().replace("**", "") for c in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(rows[2:])
            rows = []
    return tables


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def test_tiny_reproduction_tables_are_the_committed_runs_numbers():
    """The README's ablation, tau and CLIP tables against images/demo_results/*.json, the results files of the run
    they come from, formatted as the demo prints them (perplexities and R@1 to 2 decimals, tau statistics to 3
    significant digits): a table edited by hand, or taken from another run, fails here."""
    import json

    lm, tau, clip = (json.loads((RESULTS / f"{name}.json").read_text()) for name in ("lm", "tau_entropy", "clip"))
    ablation, tau_rows, clip_rows = _readme_tables()[:3]

    assert [row[0].split(" (")[0] for row in ablation] == list(lm)
    for row in ablation:
        rec = lm[row[0].split(" (")[0]]
        assert row[1:] == [_fmt(rec[k], ".2f") for k in ("val_ppl", "val_ppl_tau", "true_entropy_ppl")], row

    fields = ("tau_mean", "tau_std", "tau_p5", "tau_p95", "spearman", "spearman_dro_optimal", "spearman_true_tau_star")
    by_row = {**tau["by_row"], "the truth's DRO-optimal tau": tau["source_tau_star"]}
    assert [row[0] for row in tau_rows] == list(by_row)
    for row in tau_rows:
        assert row[1:] == [_fmt(by_row[row[0]].get(f), ".3g") for f in fields], row

    assert [row[0] for row in clip_rows] == [loss for loss, rec in clip.items() if isinstance(rec, dict)]  # not "note"
    for row in clip_rows:
        assert row[1:] == [_fmt(clip[row[0]][k], ".2f") for k in ("img_r1", "txt_r1", "zeroshot_top1")], row
