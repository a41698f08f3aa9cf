"""The compile benchmark's own pieces: ratios within a round, the report's table,
which configurations a run measures and which section it writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.compile import (
    CONFIGS,
    DEFAULT_LABELS,
    Render,
    Samples,
    add_round,
    configs_for,
    parse,
    report_body,
    section_name,
)

FP32 = [cfg for cfg in CONFIGS if cfg.dtype == "fp32"]


def image(value: int) -> Image.Image:
    return Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8))


def test_ratios_are_against_eager_in_the_same_round_and_levels_keep_the_worst() -> None:
    results = {cfg: Samples() for cfg in FP32}
    # Round 1 slow for everyone, round 2 fast: the ratios stay those of each round.
    for scale, levels in ((3.0, 1), (1.0, 0)):
        add_round(
            results,
            {
                cfg: Render(image(100 + levels * n), 100 * scale * (1 - 0.1 * n), 10.0, 50.0)
                for n, cfg in enumerate(FP32)
            },
        )
    inductor = results[FP32[1]]
    np.testing.assert_allclose(inductor.image_ratios, [0.9, 0.9])
    assert inductor.image_ms == [270.0, 90.0]
    assert inductor.max_levels == 1
    # Every pixel one level off in the worst round: 20 log10(255) dB.
    assert inductor.min_psnr_db == pytest.approx(20 * np.log10(255.0))
    assert results[FP32[3]].max_levels == 3
    assert results[FP32[0]].image_ratios == [1.0, 1.0]
    assert results[FP32[0]].min_psnr_db == float("inf")


def test_the_report_has_a_row_per_configuration_and_the_compile_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bench.compile.machine", lambda: "a test CPU")  # lscpu: a process
    results = {cfg: Samples() for cfg in CONFIGS}
    add_round(
        results,
        {cfg: Render(image(0 if cfg.dtype == "fp32" else 2), 100.0, 10.0, 50.0) for cfg in CONFIGS},
    )
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
        "| bf16",
        "| bf16 + inductor",
        "| bf16 + channels_last",
        "| bf16 + inductor + channels_last",
    ]
    assert rows[1].split(" | ")[1:3] == ["72.5", "53.4"]
    assert rows[0].split(" | ")[1:3] == ["–", "–"]
    # levels and PSNR against eager fp32: identical fp32 rows, bf16 two levels off.
    assert rows[1].rstrip(" |").split(" | ")[-2:] == ["0", "∞"]
    assert rows[4].rstrip(" |").split(" | ")[-2:] == ["2", f"{20 * np.log10(255 / 2):.1f}"]
    assert "weights in fp32 and bf16" in body.splitlines()[0]
    assert "(`make bench-compile`)" in body


def test_configs_picks_a_subset_with_eager_first_and_refuses_unknown_labels() -> None:
    args = parse(["--configs", "channels_last"])
    assert [c.label for c in args.configs] == ["eager", "channels_last"]
    assert tuple(c.label for c in parse([]).configs) == DEFAULT_LABELS
    assert [c.label for c in parse(["--configs", "bf16 + inductor"]).configs] == [
        "eager",
        "bf16 + inductor",
    ]
    with pytest.raises(SystemExit):
        parse(["--configs", "eager,fast"])
    with pytest.raises(SystemExit):  # no fp16 kernels worth timing on a CPU
        parse(["--configs", "fp16"])
    assert [c.dtype for c in configs_for("cuda:1")].count("fp16") == 4


def test_each_set_of_configurations_and_device_writes_its_own_section() -> None:
    assert section_name(parse([])) == "bench/compile.py"
    realscale = ["--folder", "var/realscale/sd15-random"]
    assert section_name(parse([*realscale, "--configs", "bf16,bf16 + inductor"])) == (
        "bench/compile.py sd15-random bf16,bf16 + inductor"
    )
    assert section_name(parse([*realscale, "--device", "cuda", "--configs", "fp16"])) == (
        "bench/compile.py sd15-random cuda fp16"
    )
