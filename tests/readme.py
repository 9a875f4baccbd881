"""The README's pages as tests read them: a section's fenced blocks, its command lines."""
import re

from tests.conftest import ROOT


def section(title: str) -> str:
    """The text of the README section headed `## title` (up to the next `## ` heading)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def blocks(text: str, language: str) -> list:
    """The fenced ```language blocks of a text, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list:
    """The command lines of a bash block (comments and blank lines dropped)."""
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
