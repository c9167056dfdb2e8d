"""The docs site's shape: the README stays short and links the pages, the mkdocs nav lists every
page, every `docs/PAGE.md#anchor` cited in the code or the tests names a real heading, and every
module (and name) a page cites exists.
(`mkdocs build --strict` in .ci/run checks the links inside the pages.)"""

import re
from pathlib import Path

import yaml
from markdown.extensions.toc import slugify

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CITE = re.compile(r"docs/([a-z_]+\.md)(?:#([a-z0-9-]+))?")
HEADING = re.compile(r"^#{1,6} (.+?)(?: \{#([\w-]+)\})?\s*$", re.M)


def anchors(page: Path) -> set[str]:
    """The ids mkdocs gives the page's headings: an explicit {#id}, else the slug of the text."""
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # no headings inside code blocks
    return {explicit or slugify(re.sub(r"[`*]", "", title), "-") for title, explicit in HEADING.findall(text)}


def nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_readme_is_short_and_every_page_is_linked_from_it_or_the_home_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    from_readme = set(re.findall(r"\]\(docs/([a-z_]+\.md)", readme))
    from_home = set(re.findall(r"\]\(([a-z_]+\.md)", (DOCS / "index.md").read_text()))
    pages = {p.name for p in DOCS.glob("*.md")}
    assert from_readme <= pages, from_readme - pages
    assert pages - {"index.md"} <= from_readme | from_home, pages - from_readme - from_home


def test_nav_lists_every_page():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = nav_pages(config["nav"])
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))
    assert config["strict"] is True


def test_cited_anchors_exist():
    cited = [(p, page, anchor) for folder in ("transdiff_cli", "tests", "benchmarks", "examples")
             for p in sorted((REPO / folder).rglob("*.py")) for page, anchor in CITE.findall(p.read_text())]
    assert len(cited) >= 10  # the code does cite the docs
    missing = [f"{p.name}: docs/{page}#{anchor}" for p, page, anchor in cited
               if not (DOCS / page).is_file() or (anchor and anchor not in anchors(DOCS / page))]
    assert not missing, missing
    assert "rectified-flow" in anchors(DOCS / "architecture.md")  # a slug and
    assert "recipes" in anchors(DOCS / "architecture.md")  # an explicit {#id} are both found
    assert "no-such-heading" not in anchors(DOCS / "architecture.md")


def test_no_design_section_references_left():
    """The design notes live in docs/architecture.md now, not in a file outside the repository."""
    stale = [p.name for folder in ("transdiff_cli", "tests", "benchmarks")
             for p in (REPO / folder).rglob("*.py") if "DESIGN \u00a7" in p.read_text()]
    assert not stale


CODE_CITE = re.compile(r"`((?:transdiff_cli/)?(?:core|commands)/[\w/]+\.py)(?::(\w+))?")


def test_cited_code_exists():
    """Every `core/PATH.py` (or `core/PATH.py:name`) a page cites is a file that defines that name, so
    the architecture page stays true as modules move."""
    missing = []
    for page in [*DOCS.glob("*.md"), REPO / "README.md"]:
        for path, name in CODE_CITE.findall(page.read_text()):
            file = REPO / (path if path.startswith("transdiff_cli/") else f"transdiff_cli/{path}")
            if not file.is_file():
                missing.append(f"{page.name}: {path}")
            elif name and not re.search(rf"^\s*(?:def|class) {name}\b|^{name}\s*[:=]", file.read_text(), re.M):
                missing.append(f"{page.name}: {path}:{name}")
    assert not missing, missing
