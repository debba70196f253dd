"""Markdown tables, as the evaluation reports and the benchmarks print them."""
from __future__ import annotations

from typing import List, Sequence


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """The lines of a Markdown table: header, separator, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
