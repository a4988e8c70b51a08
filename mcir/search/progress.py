"""The search's progress: a bar with the best so far (tqdm when installed, else an in-place bar), or lines.

Every recorded trial also gets one line above the bar (``[k/N] PIPELINE: KiB, µs, %``), so a
log keeps what was tried; the bar's tail is the best so far relative to the fp32 library::

    [7/24] prune(...),quantize(bits=4): 9.1 KiB, 0.41 µs, 98.22%
    search  29%|███       | 7/24 [00:31<01:16] best 22.1x smaller, 3.1x faster, 98.22%
"""

from __future__ import annotations

import shutil
from typing import Any

MODES = ("auto", "bar", "lines")


def trial_line(done: int, total: int, row: dict[str, Any]) -> str:
    """One recorded trial as a line: its pipeline and measurements, or its error."""
    if row["status"] == "ok":
        what = f"{row['weight_bytes'] / 1024:.1f} KiB, {row['latency_us']:.2f} µs, {100 * row['accuracy']:.2f}%"
        what += "" if row["feasible"] else " (infeasible)"
    else:
        what = f"failed: {str(row.get('error'))[:80]}"
    return f"[{done}/{total}] {row['pipeline']}: {what}"


def best_text(best: dict[str, Any] | None, base: dict[str, Any]) -> str:
    """The best feasible trial so far, as ratios to the fp32 library."""
    if best is None:
        return "best: none feasible yet"
    return (
        f"best {base['weight_bytes'] / best['weight_bytes']:.1f}x smaller, "
        f"{base['latency_us'] / best['latency_us']:.1f}x faster, {100 * best['accuracy']:.2f}%"
    )


class Progress:
    """Shows ``done`` of ``total`` recorded trials and the best so far on ``log``.

    ``mode``: ``bar`` (tqdm, else a bar redrawn in place with ``\\r``), ``lines`` (one line per
    trial ending with the best so far: for logs and pipes) or ``auto`` (a bar on a terminal).
    """

    def __init__(self, total: int, done: int, base: dict[str, Any], log: Any, mode: str = "auto") -> None:
        if mode not in MODES:
            from mcir.errors import McirError

            raise McirError(f"progress {mode!r}: expected {', '.join(MODES)}")
        if mode == "auto":
            mode = "bar" if getattr(log, "isatty", lambda: False)() else "lines"
        self.total, self.done, self.base, self.log, self.mode = total, done, base, log, mode
        self.tqdm = None
        if mode == "bar" and done < total:
            try:
                from tqdm import tqdm
            except ImportError:
                self._draw(None)
            else:
                self.tqdm = tqdm(total=total, initial=done, file=log, desc="search", unit="trial", dynamic_ncols=True)

    def update(self, row: dict[str, Any], best: dict[str, Any] | None) -> None:
        """One more trial recorded (``row``, a search.json row); ``best`` is the best feasible trial so far."""
        self.done += 1
        line = trial_line(self.done, self.total, row)
        if self.mode == "lines":
            print(f"{line} | {best_text(best, self.base)}", file=self.log, flush=True)
        elif self.tqdm is not None:
            self.tqdm.write(line, file=self.log)
            self.tqdm.set_postfix_str(best_text(best, self.base), refresh=False)
            self.tqdm.update(1)
        else:
            print("\r\033[K" + line, file=self.log)  # the line replaces the bar, which is drawn again below it
            self._draw(best)

    def _draw(self, best: dict[str, Any] | None) -> None:
        width = max(10, min(30, shutil.get_terminal_size().columns - 80))
        filled = round(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        print(f"\rsearch [{bar}] {self.done}/{self.total} {best_text(best, self.base)}", end="", file=self.log)
        self.log.flush()

    def close(self) -> None:
        """End the bar (its last state stays on screen)."""
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.mode == "bar" and self.done:
            print(file=self.log)
