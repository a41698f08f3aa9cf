"""The compile benchmark's own pieces: ratios within a round, the report's table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.compile import CONFIGS, Render, Samples, add_round, parse, report_body


def image(value: int) -> Image.Image:
    return Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8))


def test_ratios_are_against_eager_in_the_same_round_and_levels_keep_the_worst() -> None:
    results = {cfg: Samples() for cfg in CONFIGS}
    # Round 1 slow for everyone, round 2 fast: the ratios stay those of each round.
    for scale, levels in ((3.0, 1), (1.0, 0)):
        add_round(
            results,
            {
                cfg: Render(image(100 + levels * n), 100 * scale * (1 - 0.1 * n), 10.0, 50.0)
                for n, cfg in enumerate(CONFIGS)
            },
        )
    inductor = results[CONFIGS[1]]
    np.testing.assert_allclose(inductor.image_ratios, [0.9, 0.9])
    assert inductor.image_ms == [270.0, 90.0]
    assert inductor.max_levels == 1
    assert results[CONFIGS[3]].max_levels == 3
    assert results[CONFIGS[0]].image_ratios == [1.0, 1.0]


def test_the_report_has_a_row_per_configuration_and_the_compile_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bench.compile.machine", lambda: "a test CPU")  # lscpu: a process
    results = {cfg: Samples() for cfg in CONFIGS}
    add_round(results, {cfg: Render(image(0), 100.0, 10.0, 50.0) for cfg in CONFIGS})
    results[CONFIGS[1]].compile_s = {
        "unet 2x4x16x16 () 2x77x32": 72.5,
        "vae_decoder 1x4x16x16": 53.4,
    }
    body = report_body(
        results,
        argv=[],
        args=parse([]),
        started="2026-12-03 12:00 UTC",
        elapsed_s=300.0,
        load=(1.0, 2.0),
        torch_version="2.13.0",
    )
    rows = [line for line in body.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| eager",
        "| inductor",
        "| channels_last",
        "| inductor + channels_last",
    ]
    assert rows[1].split(" | ")[1:3] == ["72.5", "53.4"]
    assert rows[0].split(" | ")[1:3] == ["–", "–"]
    assert "(`make bench-compile`)" in body


def test_configs_picks_a_subset_with_eager_first_and_refuses_unknown_labels() -> None:
    args = parse(["--configs", "channels_last"])
    assert [c.label for c in args.configs] == ["eager", "channels_last"]
    assert [c.label for c in parse([]).configs] == [c.label for c in CONFIGS]
    with pytest.raises(SystemExit):
        parse(["--configs", "eager,fast"])
