"""What the benchmark scripts share: their sections of docs/benchmarks.md, the
machine line, and small statistics formatting.

Several scripts write one report. Each owns the text between its own markers,

    <!-- begin: bench/serving.py -->
    ...
    <!-- end: bench/serving.py -->

and `write_section` replaces only that, so `make bench-serving` never clobbers
what `bench/backends.py` measured (a run can take ten minutes; nobody should
have to rerun the other one to keep its figures). Pure functions apart from
`write_section` and `machine`; no torch, no grpc.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path


def begin_marker(name: str) -> str:
    return f"<!-- begin: {name} -->"


def end_marker(name: str) -> str:
    return f"<!-- end: {name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with section `name` set to `body`; appended when it has no such section.

    Everything outside the section is kept byte for byte. A section whose
    begin marker has no end marker after it is an error, never a guess: a
    half-marked file would otherwise lose whatever follows the begin marker.
    """
    begin, end = begin_marker(name), end_marker(name)
    if begin in body or end in body:
        raise ValueError(f"the body of section {name!r} contains its own marker")
    block = f"{begin}\n{body.strip(chr(10))}\n{end}"
    start = text.find(begin)
    if start < 0:
        if end in text:
            raise ValueError(f"section {name!r}: an end marker without a begin marker")
        head = text.rstrip("\n")
        return f"{head}\n\n{block}\n" if head else f"{block}\n"
    stop = text.find(end, start)
    if stop < 0:
        raise ValueError(f"section {name!r}: a begin marker without an end marker")
    if text.find(begin, start + len(begin)) >= 0:
        raise ValueError(f"section {name!r} appears twice")
    return text[:start] + block + text[stop + len(end) :]


def write_section(path: Path, name: str, body: str) -> None:
    """Replace section `name` of the file at `path` (created when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, name, body), encoding="utf-8")


def machine() -> str:
    """CPU model, cores and hardware threads, OS: the line every figure cites."""
    info: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    model = info.get("Model name") or platform.processor() or "unknown CPU"
    cores = info.get("Core(s) per socket", "?")
    sockets = info.get("Socket(s)", "1")
    per_core = info.get("Thread(s) per core", "?")
    logical = os.cpu_count() or 0
    if cores.isdigit() and sockets.isdigit():
        cores = str(int(cores) * int(sockets))
    return (
        f"{model}, {cores} cores × {per_core} thread(s) per core = {logical} logical CPUs, "
        f"{platform.system()} {platform.machine()}"
    )


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt_ms(value: float) -> str:
    """Milliseconds for a table: one decimal below 100, none above; "–" when unknown."""
    if math.isnan(value):
        return "–"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def fmt_ratio(value: float) -> str:
    """Two decimals; three significant digits below 0.1, where two decimals say 0.00×."""
    if math.isnan(value) or math.isinf(value):
        return "–"
    return f"{value:.2f}×" if abs(value) >= 0.1 or value == 0 else f"{value:.3g}×"


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    """A markdown table; every column from index `right` on is right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = [f"| {' | '.join(header)} |", f"|{'|'.join(align)}|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row has {len(row)} cells, header {len(header)}")
        lines.append(f"| {' | '.join(row)} |")
    return lines
