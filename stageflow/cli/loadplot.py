"""A load-test report as a PNG: latency histogram beside latency over time.

Drawn with Pillow (already a dependency) rather than matplotlib, which would
add a large install for two plain charts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 1200, 480
PANEL = (60, 50, 40, 60)  # left, top, right, bottom margins inside each panel
OK_COLOUR = (40, 110, 200)
ERROR_COLOUR = (210, 50, 40)
MARK_COLOURS = {"p50": (30, 150, 60), "p99": (200, 120, 0)}


def _ticks(high: float, n: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high`."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(high / step) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"


class _Axes:
    """One chart area: data coordinates to pixels, axes and ticks."""

    def __init__(
        self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xmax: float, ymax: float
    ) -> None:
        self.draw = draw
        left, top, right, bottom = box
        self.x0, self.y0 = left + PANEL[0], bottom - PANEL[3]
        self.x1, self.y1 = right - PANEL[2], top + PANEL[1]
        self.xticks, self.yticks = _ticks(xmax), _ticks(ymax)
        self.xmax, self.ymax = self.xticks[-1], self.yticks[-1]

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.x0 + (self.x1 - self.x0) * x / self.xmax,
            self.y0 - (self.y0 - self.y1) * y / self.ymax,
        )

    def frame(self, title: str, xlabel: str, ylabel: str) -> None:
        d = self.draw
        d.line([(self.x0, self.y1), (self.x0, self.y0), (self.x1, self.y0)], fill="black")
        for x in self.xticks:
            px, _ = self.px(x, 0)
            d.line([(px, self.y0), (px, self.y0 + 4)], fill="black")
            d.text((px, self.y0 + 6), _label(x), fill="black", anchor="ma")
        for y in self.yticks:
            _, py = self.px(0, y)
            d.line([(self.x0 - 4, py), (self.x1, py)], fill=(225, 225, 225))
            d.text((self.x0 - 6, py), _label(y), fill="black", anchor="rm")
        d.text(((self.x0 + self.x1) / 2, self.y1 - 30), title, fill="black", anchor="ma")
        d.text(((self.x0 + self.x1) / 2, self.y0 + 24), xlabel, fill="black", anchor="ma")
        d.text((self.x0 - 50, self.y1 - 16), ylabel, fill="black")


def _histogram(
    axes_box: tuple[int, int, int, int], draw: ImageDraw.ImageDraw, report: Mapping[str, Any]
) -> None:
    latencies = [s["latency_ms"] for s in report["samples"] if s["code"] == "OK"]
    top = max(latencies, default=1.0)
    bins = max(5, min(40, int(math.sqrt(len(latencies))) + 1))
    width = top / bins or 1.0
    counts = [0] * bins
    for value in latencies:
        counts[min(int(value / width), bins - 1)] += 1
    axes = _Axes(draw, axes_box, top, max(counts, default=1))
    axes.frame("latency histogram (OK requests)", "latency (ms)", "requests")
    for i, count in enumerate(counts):
        if count:
            x0, y0 = axes.px(i * width, count)
            x1, y1 = axes.px((i + 1) * width, 0)
            draw.rectangle([x0 + 1, y0, x1 - 1, y1], fill=OK_COLOUR)
    for row, (name, colour) in enumerate(MARK_COLOURS.items()):
        value = report["latency_ms"].get(name)
        if value is not None and not math.isnan(value):
            x, _ = axes.px(value, 0)
            draw.line([(x, axes.y0), (x, axes.y1)], fill=colour, width=2)
            # One row per marker: p50 and p99 often sit close together.
            draw.text((x + 3, axes.y1 + 14 * row), f"{name} {value:.0f}", fill=colour)


def _over_time(
    axes_box: tuple[int, int, int, int],
    draw: ImageDraw.ImageDraw,
    samples: Sequence[Mapping[str, Any]],
) -> None:
    axes = _Axes(
        draw,
        axes_box,
        max((s["t_s"] for s in samples), default=1.0),
        max((s["latency_ms"] for s in samples), default=1.0),
    )
    axes.frame("latency over time (red: errors)", "send time (s)", "latency (ms)")
    for s in samples:
        x, y = axes.px(s["t_s"], s["latency_ms"])
        colour = OK_COLOUR if s["code"] == "OK" else ERROR_COLOUR
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """Write the two charts of a report to `path` (PNG)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    half = WIDTH // 2
    _histogram((0, 0, half, HEIGHT), draw, report)
    _over_time((half, 0, WIDTH, HEIGHT), draw, report["samples"])
    throughput = report["throughput_rps"]
    draw.text(
        (10, HEIGHT - 16),
        f"{report['ok']} OK, {sum(report['errors'].values())} errors, {throughput:.2f} req/s",
        fill="black",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
