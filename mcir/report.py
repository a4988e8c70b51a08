"""Formatting for people: aligned tables and human units (bytes, counts, seconds)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_count(n: float) -> str:
    """3_280_000 -> '3.28 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


def human_seconds(s: float) -> str:
    """0.00123 -> '1.23 ms'."""
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def format_table(head: list[str], rows: list[list[str]], align: str = "") -> str:
    """An aligned text table; ``align`` has one 'l' or 'r' per column (default: first left, rest right)."""
    cols = len(head)
    align = (align or "l" + "r" * (cols - 1)).ljust(cols, "r")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(cols)]

    def line(cells: list[str]) -> str:
        parts = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(r) for r in rows)])
