"""Reading the Markdown docs as tests need them: a section by its heading, its first table, and
every relative link with the anchor GitHub makes for each heading."""

from __future__ import annotations

import re
from pathlib import Path

from harness.server import REPO_ROOT

HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def read(name: str) -> str:
    """A doc by its path from the repository root (`README.md`, `docs/api.md`)."""
    return (REPO_ROOT / name).read_text()


def markdown_docs() -> list[str]:
    """README.md, every docs/*.md and every other README.md of the checkout (hidden folders such as
    .venv left out), by path from the repository root."""
    readmes = [path for path in REPO_ROOT.rglob("README.md") if not any(part.startswith(".") for part in path.relative_to(REPO_ROOT).parts)]
    return sorted({str(path.relative_to(REPO_ROOT)) for path in [*readmes, *(REPO_ROOT / "docs").glob("*.md")]})


def _lines_outside_code(text: str) -> list[tuple[int, str]]:
    """(index, line) of each line outside fenced code: a `# comment` there is no heading."""
    lines, fenced = [], False
    for index, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((index, line))
    return lines


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every heading."""
    found = []
    for index, line in _lines_outside_code(text):
        match = HEADING.match(line)
        if match:
            found.append((index, len(match.group(1)), match.group(2)))
    return found


def section(name: str, title: str) -> str:
    """The text under the heading `title` (any level) in doc `name`, up to the next heading of the
    same or a higher level; the heading line included. Exactly one heading may have that title."""
    text = read(name)
    found = [(index, level) for index, level, heading in headings(text) if heading == title]
    assert len(found) == 1, f"{name}: {len(found)} headings {title!r}"
    start, level = found[0]
    lines = text.splitlines()
    end = next((index for index, other, _ in headings(text) if index > start and other <= level), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def table(text: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table in `text`, header and rule left out."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    assert rows, "no table"
    return rows


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a doc, with GitHub's -1, -2, ... for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for _, _, title in headings(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def relative_links(text: str) -> list[str]:
    """Every link target of a doc that is not a URL with a scheme (http:, mailto:), outside code."""
    targets = []
    for _, line in _lines_outside_code(text):
        line = re.sub(r"`[^`]*`", "", line)  # inline code holds no links
        for match in LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                targets.append(target)
    return targets


def broken_links(name: str) -> list[str]:
    """The relative links of doc `name` whose file or anchor does not exist."""
    broken = []
    here = (REPO_ROOT / name).parent
    for target in relative_links(read(name)):
        path, _, anchor = target.partition("#")
        file = (here / path).resolve() if path else REPO_ROOT / name
        if not file.exists():
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(target)
    return broken
