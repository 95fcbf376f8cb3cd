"""The READMEs hold together: every relative link resolves (file and heading), README.md stays a short first page
that links every folder README, and scripts/README.md names every script in scripts/."""

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: top-level folders that hold a user's runs or data, not the project's documentation
NOT_DOCS = {"runs", "results", "data", "build", "dist", "gpu_check_out"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _readmes() -> list[pathlib.Path]:
    """Every README*.md of the project, not walking into hidden folders (.git, .venv-serve) or a user's runs."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        top = pathlib.Path(folder) == ROOT
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules", "site-packages")
                   and not (top and d in NOT_DOCS)]
        found += [pathlib.Path(folder) / f for f in files if f.startswith("README") and f.endswith(".md")]
    return sorted(found)


def _prose(text: str) -> str:
    """The markdown outside fenced code blocks and inline code spans (where a link is text, not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-', repeats numbered."""
    seen: dict[str, int] = {}
    for line in _prose(text).splitlines():
        match = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).replace("`", "").lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def _links(path: pathlib.Path) -> list[str]:
    return LINK.findall(_prose(path.read_text()))


def test_every_relative_link_in_every_readme_resolves():
    broken = []
    for readme in _readmes():
        for target in _links(readme):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (readme.parent / file).resolve() if file else readme
            where = f"{readme.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no file {file}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_readme_is_a_short_first_page_that_links_every_folder_readme():
    assert len(README.read_text().splitlines()) < 400, "README.md is the newcomer's page: move details to a folder README"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _links(README) if not t.startswith("#")}
    missing = [str(p.relative_to(ROOT)) for p in _readmes() if p != README and p.resolve() not in linked]
    assert not missing, f"README.md's 'Where to go next' does not link {missing}"


def test_scripts_readme_names_every_script():
    text = (ROOT / "scripts" / "README.md").read_text()
    scripts = sorted(p.name for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh"))
    assert scripts, "no scripts found"
    missing = [name for name in scripts if f"`{name}`" not in text]
    assert not missing, f"scripts/README.md does not describe {missing}"


def test_anchor_rule_matches_github():
    """The slug rule the link check relies on, on headings of the kinds these READMEs use."""
    assert _anchors(README.read_text()) >= {"quick-start-fresh-machine-cpu-is-enough", "the-core-api", "where-to-go-next"}
    text = "# The fused LM head + TempNet + robust loss\n## AlpacaEval, LLaMA-2-Chat vs. a fixed tau 0.7\n## Tests\n## Tests\n"
    assert _anchors(text) == {"the-fused-lm-head--tempnet--robust-loss", "alpacaeval-llama-2-chat-vs-a-fixed-tau-07",
                              "tests", "tests-1"}
