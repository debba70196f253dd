"""Markdown tables, as the evaluation reports and the benchmarks print them."""
from __future__ import annotations

from typing import List, Optional, Sequence


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """The lines of a Markdown table: header, separator, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def save_lines(lines: Sequence[str], path: Optional[str]) -> None:
    """Writes `lines` to `path` (a benchmark's --out), if one is given."""
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


def print_and_save(lines: Sequence[str], path: Optional[str] = None) -> None:
    """Prints `lines` and writes them to `path`, if one is given."""
    print("\n".join(lines), flush=True)
    save_lines(lines, path)
