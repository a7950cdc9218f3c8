"""The README is the front door and docs/ the manual: every link between them lands on a file and a heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mytpe_events import EXT_ROUTES

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (a `# comment` there is no heading)."""
    return re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of `path`: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"(?m)^#{1,6} (.+)$", _prose(path))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_lands_on_a_file_and_a_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(_prose(page)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert broken == [], f"{page.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_page_says_what_was_added(page: Path) -> None:
    """A reader does not know what a section was added to."""
    assert "*added:*" not in page.read_text(encoding="utf-8").lower()


def test_the_readme_keeps_its_two_commands_and_maps_every_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"(?ms)^```bash\n(.*?)^```", readme)
    assert block is not None
    assert [line.split()[0] for line in block.group(1).splitlines() if not line.startswith(" ")] == [
        "scripts/run",
        "scripts/test",
    ]
    unmapped = [page.name for page in PAGES[1:] if f"](docs/{page.name})" not in readme]
    assert unmapped == []


def test_the_documented_routes_are_the_ones_the_tests_use() -> None:
    assert f"`{EXT_ROUTES}`" in (ROOT / "docs/configuration.md").read_text(encoding="utf-8")


def test_serve_documents_its_refusal_of_an_untested_uvicorn() -> None:
    """`serve` exits 3 under a uvicorn outside TESTED_UVICORN; commands.md says so and names the range."""
    from relay.http.server import TESTED_UVICORN

    (low_major, low_minor), (high_major, high_minor) = TESTED_UVICORN
    tested = f"uvicorn>={low_major}.{low_minor},<{high_major}.{high_minor}"
    commands = (ROOT / "docs/commands.md").read_text(encoding="utf-8")
    serve = commands.partition("## `mytpe-relay serve`")[2].partition("\n## ")[0]
    assert tested in serve and "TESTED_UVICORN" in serve, serve
    assert tested in (ROOT / "docs/development.md").read_text(encoding="utf-8")
    assert tested in (ROOT / "pyproject.toml").read_text(encoding="utf-8").replace('"', "")


def test_the_readmes_first_paragraph_says_what_a_2xx_means_with_the_spool_too() -> None:
    """The front door and the guarantee section below it say the same: durable in Kafka or in the spool."""
    intro = (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n")[1]
    assert "acks=all" in intro and "spool" in intro and "fsync" in intro, intro
