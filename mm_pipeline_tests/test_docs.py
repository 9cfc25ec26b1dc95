"""The README stays short and points at docs/; every relative link in README.md and docs/*.md resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

# [text](target) outside code; images too. Targets with a scheme (https:, mailto:) are not checked here.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _links(markdown: str) -> list[str]:
    prose = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return LINK.findall(prose)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in FENCE.sub("", markdown).splitlines() if line.startswith("#")}


def test_readme_is_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_has_the_test_command():
    # .ci/run runs `make test` as "the README's test command".
    assert re.search(r"^make test\b", README.read_text(), re.M), "README.md must show `make test`"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_docs_folder_has_an_index_linking_every_page():
    index = ROOT / "docs" / "README.md"
    assert index.is_file()
    linked = {Path(target.split("#", 1)[0]).name for target in _links(index.read_text())}
    missing = [page.name for page in DOCS if page.name != "README.md" and page.name not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # https:, mailto: ...
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
            broken.append(f"{target} (no heading with that anchor in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_link_parser_skips_code_and_reads_anchors(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) `[code](not-a-link.md)`\n")
    assert _links(page.read_text()) == ["#title", "missing.md"]
    assert _anchors(page.read_text()) == {"title"}
