"""The benchmark report's pure parts: shared-file sections and the figures' text.

The measurements themselves are too slow for the suite; `bench/serving.py
--quick` is their smoke run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.report import (
    begin_marker,
    end_marker,
    fmt_ms,
    fmt_ratio,
    replace_section,
    table,
    write_section,
)
from bench.serving import (
    QUICK,
    BatchRow,
    JobSample,
    LocalSample,
    Pipeline,
    batching_lines,
    cache_lines,
    overhead_lines,
)

OTHER = "bench/backends.py"
MINE = "bench/serving.py"


def test_replacing_one_section_keeps_the_other_byte_for_byte() -> None:
    other = f"{begin_marker(OTHER)}\n# torch vs ort\n| a | 1.5× |\n{end_marker(OTHER)}\n"
    text = replace_section(other, MINE, "# serving\nold")
    assert text.startswith(other)
    text = replace_section(text, MINE, "# serving\nnew")
    assert text.startswith(other)
    assert "new" in text and "old" not in text
    assert text.count(begin_marker(MINE)) == 1 and text.count(end_marker(MINE)) == 1
    # and the other way round: the first section rewritten, the second untouched
    again = replace_section(text, OTHER, "# torch vs ort\nrerun")
    assert again.endswith(text[text.index(begin_marker(MINE)) :])
    assert "1.5×" not in again


def test_replacing_is_idempotent_and_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    write_section(path, MINE, "body")
    first = path.read_text()
    write_section(path, MINE, "body")
    assert path.read_text() == first == f"{begin_marker(MINE)}\nbody\n{end_marker(MINE)}\n"


@pytest.mark.parametrize(
    "text",
    [
        f"{begin_marker(MINE)}\nno end",
        f"no begin\n{end_marker(MINE)}",
        f"{begin_marker(MINE)}\n{end_marker(MINE)}\n{begin_marker(MINE)}\n{end_marker(MINE)}",
    ],
)
def test_half_marked_files_are_refused_not_truncated(text: str) -> None:
    with pytest.raises(ValueError, match="section"):
        replace_section(text, MINE, "body")


def test_formatting_of_numbers_and_tables() -> None:
    assert fmt_ms(12.345) == "12.3"
    assert fmt_ms(1234.5) == "1234" or fmt_ms(1234.5) == "1235"
    assert fmt_ms(math.nan) == "–"
    assert fmt_ratio(1.2345) == "1.23×"
    assert fmt_ratio(math.inf) == "–"
    assert fmt_ratio(0.00094) == "0.00094×"
    lines = table(["what", "ms"], [["a", "1.0"]])
    assert lines == ["| what | ms |", "|---|---:|", "| a | 1.0 |"]
    with pytest.raises(ValueError):
        table(["what", "ms"], [["a"]])


def _job(wall: float, compute: float, store: float, *, hits: bool = False) -> JobSample:
    timing = {
        "queue_ms": 1.0,
        "load_inputs_ms": 10.0,
        "compute_ms": compute,
        "store_output_ms": store,
        "total_ms": 11.0 + compute + store,
    }
    stages = ("base", "refine", "upscale")
    return JobSample(
        job_id="j",
        wall_ms=wall,
        stages={s: dict(timing) for s in stages},
        cache_hits=dict.fromkeys(stages, hits),
        outputs=dict.fromkeys(stages, "x"),
        final_sha256="f",
        requests={},
    )


def _pipeline(wall: float, compute: float = 100.0) -> Pipeline:
    local = LocalSample(
        total_ms=300.0,
        stages={"base": 100.0, "refine": 100.0, "upscale": 100.0},
        png_ms={"base": 5.0, "refine": 5.0, "upscale": 50.0},
        final_sha256="f",
    )
    return Pipeline(
        service=[_job(wall, compute, 40.0)],
        local=[local],
        resubmit=[_job(15.0, 0.0, 0.0, hits=True)],
        rerun_last=[_job(wall / 3, 100.0, 40.0)],
        identical=[True],
        params_equal=[True],
        rerun_reused=[True],
    )


def test_overhead_verdict_ratio_and_the_part_that_explains_it() -> None:
    missed = "\n".join(overhead_lines(_pipeline(wall=400.0), QUICK, threads=2))
    assert "**NOT met**, **1.33×**" in missed
    assert "per round: 1.33×" in missed and "compute noise removed): **1.33×**" in missed
    # 3 × 40 ms storing is the largest of the parts: the reason given is the store's.
    assert "The largest part: store output" in missed
    assert "Why the goal is missed" in missed and "PNG-encoded" in missed
    met = "\n".join(overhead_lines(_pipeline(wall=320.0), QUICK, threads=2))
    assert "**met**, **1.07×**" in met and "Why the goal" not in met
    assert "Met on the measured ratio" not in met
    # Faster compute in the services hides what they add around it: said, not hidden.
    masked = "\n".join(overhead_lines(_pipeline(wall=320.0, compute=80.0), QUICK, 2))
    assert "**met**, **1.07×**" in masked and "compute noise removed): **1.27×**" in masked
    assert "Met on the measured ratio, but with compute held equal" in masked


def test_cache_and_batching_figures() -> None:
    cache = "\n".join(cache_lines(_pipeline(wall=600.0)))
    assert "| same job again: 3 cache hits | 15.0 | 0.025× |" in cache
    assert "Every stage a cache hit on resubmit: **yes**" in cache
    report = {"throughput_rps": 2.0, "latency_ms": {"p50": 4000.0}}
    batched = {**report, "throughput_rps": 3.0, "server_ms": {"compute_ms": {"median": 900.0}}}
    rows = [BatchRow(64, off=[report], on=[batched])]
    text = "\n".join(batching_lines(rows, QUICK, threads=2))
    assert "**met**: 64 px 1.50× (met)" in text
    rows = [BatchRow(128, off=[report], on=[{**batched, "throughput_rps": 2.2}])]
    assert "**NOT met**: 128 px 1.10× (NOT met)" in "\n".join(batching_lines(rows, QUICK, 2))
