"""The documentation holds together: every relative link in README.md, CONTRIBUTING.md,
CHANGELOG.md and docs/*.md points at a file or folder that exists, every ``#anchor`` at a
heading of its target (GitHub's anchors: lowercase, punctuation removed, spaces to '-', a
repeated heading numbered), and the README stays a front door of 150 lines at most."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.M)


def documents(root: Path = ROOT) -> list[Path]:
    return [root / name for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")
            if (root / name).is_file()] + sorted((root / "docs").glob("*.md"))


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are code."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the text as rendered (code spans keep their text, links
    their label), lowercased, everything but letters, digits, '_', '-' and spaces removed,
    spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in ``path``; a repeated one gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(paths: list[Path], root: Path = ROOT) -> list[str]:
    """'file: target (why)' for each relative link that does not resolve."""
    problems = []
    for path in paths:
        prose = _prose(path.read_text())
        for target in LINK.findall(prose) + REFERENCE.findall(prose):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.is_file() and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
                problems.append(f"{where} (no such heading in {dest.name})")
            elif anchor and not (dest.is_file() and dest.suffix == ".md"):
                problems.append(f"{where} (an anchor into something other than a Markdown file)")
    return problems


def test_every_relative_link_resolves():
    docs = documents()
    assert {"README.md", "CONTRIBUTING.md"} <= {p.name for p in docs} and len(docs) > 5
    assert broken_links(docs) == []


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the details to docs/"


def test_the_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Title\n\n## On a Ray cluster\n\n## Set-up (a fresh machine, Python 3.11)\n\n"
        "[ok](docs/a.md) [ok](#on-a-ray-cluster) [ok](#set-up-a-fresh-machine-python-311)\n"
        "[gone](docs/missing.md) [gone](docs/a.md#nowhere) [web](https://example.org/x.md)\n"
        "`[code](not/a/link.md)`\n\n```python\nx = y[0](z)\n```\n")
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## `search.cost` and \"latency\"\n\n## A\n\n"
                                            "[ok](a.md#searchcost-and-latency) [ok](#a-1) [up](../README.md)\n")
    found = broken_links(documents(tmp_path), tmp_path)
    assert found == ["README.md: docs/missing.md (no such file)",
                     "README.md: docs/a.md#nowhere (no such heading in a.md)"]


def test_github_anchors():
    assert slug("What a first run leaves, and where to look") == "what-a-first-run-leaves-and-where-to-look"
    assert slug('"Failed to connect"') == "failed-to-connect"
    assert slug("The README's cluster session, line by line") == "the-readmes-cluster-session-line-by-line"
    assert slug("Two paths: in memory or streamed") == "two-paths-in-memory-or-streamed"
    assert slug("Latency of `retrain.latency_repeats`") == "latency-of-retrainlatency_repeats"
