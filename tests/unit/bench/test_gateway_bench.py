"""The gateway benchmark's own arithmetic and request shape."""

from __future__ import annotations

from bench.gateway import job_body, p99


def test_p99_is_the_nearest_rank() -> None:
    assert p99([float(v) for v in range(1, 101)]) == 99.0
    assert p99([5.0]) == 5.0
    assert p99([3.0, 1.0, 2.0]) == 3.0


def test_both_paths_submit_the_same_job_but_for_the_seed() -> None:
    a, b = job_body(512, 1), job_body(512, 2)
    assert (a["width"], a["height"], a["seed"], b["seed"]) == (512, 512, 1, 2)
    assert {k: v for k, v in a.items() if k != "seed"} == {
        k: v for k, v in b.items() if k != "seed"
    }
