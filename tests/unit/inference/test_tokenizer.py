"""The offline CLIP tokenizer: real CLIP format, every word one token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stageflow.inference.tokenizer import (
    BOS,
    EOS,
    MODEL_MAX_LENGTH,
    WORDS,
    bytes_to_unicode,
    write_tokenizer,
)

if TYPE_CHECKING:
    from transformers import CLIPTokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(folder: Path) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def test_files_follow_clip_layout(folder: Path) -> None:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    byte_symbols = list(bytes_to_unicode().values())
    assert list(vocab)[:256] == byte_symbols
    assert list(vocab)[256:512] == [s + "</w>" for s in byte_symbols]
    assert list(vocab)[-2:] == [BOS, EOS]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert (folder / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_every_vocabulary_word_is_one_token(tok: CLIPTokenizer) -> None:
    for word in WORDS:
        ids = tok(word).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))


def test_reference_prompt_tokenizes_to_words(tok: CLIPTokenizer) -> None:
    prompt = (
        "epic game hero portrait. Style: moody cinematic. "
        "Overlay text: 'Chapter One' with clear, legible typography."
    )
    tokens = tok.convert_ids_to_tokens(tok(prompt).input_ids)
    assert "typography</w>" in tokens and "chapter</w>" in tokens and "cinematic</w>" in tokens


def test_any_text_falls_back_to_bytes(tok: CLIPTokenizer) -> None:
    ids = tok("zxqv ünïcödé 日本 42 ☃").input_ids
    # EOS doubles as unk: it must only appear at the end.
    assert ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == "zxqv ünïcödé 日本 4 2 ☃"


def test_paths_constructor_and_padding(folder: Path, tok: CLIPTokenizer) -> None:
    from transformers import CLIPTokenizer

    direct = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    assert direct("red circle").input_ids == tok("red circle").input_ids
    padded = tok("red circle", padding="max_length", max_length=tok.model_max_length).input_ids
    assert tok.model_max_length == MODEL_MAX_LENGTH and len(padded) == MODEL_MAX_LENGTH


def test_output_is_reproducible(tmp_path: Path, folder: Path) -> None:
    write_tokenizer(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes()
