"""The README and docs/: links resolve, the README stays a map, docs/metrics.md is current."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", REPO / "bench" / "README.md", *(REPO / "docs").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code."""
    return _CODE.sub("", _FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the headings of a markdown page (``## The job contract`` -> ``the-job-contract``)."""
    seen: dict[str, int] = {}
    out = set()
    for title in _HEADING.findall(_FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(text: str) -> list[str]:
    """Relative link targets of a markdown page (``path``, ``path#anchor``, ``#anchor``)."""
    return [t for t in _LINK.findall(_prose(text)) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_anchors_follow_github():
    text = "# Title\n## The job contract\n## tune: the CPU-small sweep\n## a\n## a\n```\n# not a heading\n```\n"
    assert anchors(text) == {"title", "the-job-contract", "tune-the-cpu-small-sweep", "a", "a-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif (
            anchor
            and dest.suffix == ".md"
            and anchor not in anchors(dest.read_text(encoding="utf-8"))
        ):
            problems.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(REPO)}")
    assert not problems, f"{page.relative_to(REPO)}: " + "; ".join(problems)


def test_docs_exist_and_are_listed():
    index = (REPO / "docs" / "index.md").read_text(encoding="utf-8")
    for job in ("render", "prepare", "train", "tune", "separate", "evaluate", "classify", "demo"):
        assert (REPO / "docs" / f"{job}.md").exists()
    listed = {Path(t.partition("#")[0]).name for t in links(index)}
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert pages <= listed, f"docs/index.md does not list {sorted(pages - listed)}"


def test_readme_is_a_map():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_metrics_page_is_generated_from_the_schema():
    spec = importlib.util.spec_from_file_location(
        "metrics_doc", REPO / "scripts" / "metrics_doc.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render(module.load_schema())
    assert (REPO / "docs" / "metrics.md").read_text(encoding="utf-8") == expected, (
        "docs/metrics.md is out of date: run .venv/bin/python scripts/metrics_doc.py"
    )
