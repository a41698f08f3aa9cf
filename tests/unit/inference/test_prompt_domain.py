"""A model's declared prompt domain: unknown words are named, quoted text is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from stageflow.cli.cluster import TRAINED_MODELS_DIR
from stageflow.inference.prompt_domain import prompt_warning, read_folder_domain, unknown_words
from stageflow.inference.training import data

VOCAB = ["a", "red", "blue", "circle", "on", "background", "overlay", "text"]


def test_unknown_words_are_named_once_in_prompt_order() -> None:
    prompt = "a knight on a dragon, a Knight!"
    assert unknown_words(prompt, VOCAB) == ["knight", "dragon"]
    assert unknown_words("a red circle on a blue background", VOCAB) == []


def test_quoted_overlay_text_is_a_literal_not_vocabulary() -> None:
    assert unknown_words("a red circle. Overlay text: 'Chapter Nine'", VOCAB) == []


def test_an_undeclared_vocabulary_warns_about_nothing() -> None:
    assert unknown_words("a knight on a dragon", []) == []
    assert prompt_warning("prompt", "a knight", [], "") == ""


def test_the_warning_names_the_words_and_what_the_model_draws() -> None:
    line = prompt_warning("prompt", "a knight on a dragon", VOCAB, "shapes")
    assert line.startswith("prompt: 2 word(s) outside the model's vocabulary")
    assert "knight, dragon" in line and "(it draws shapes)" in line


def test_the_trained_fixture_declares_every_word_its_captions_use() -> None:
    domain = read_folder_domain(TRAINED_MODELS_DIR / "shapes-sd")
    assert domain is not None
    assert domain.vocabulary == data.vocabulary()
    rng = __import__("numpy").random.default_rng(0)
    for spec in data.specs(0, 200, data.training_combinations()):
        assert unknown_words(data.random_caption(rng, spec), domain.vocabulary) == []
    # The README's first prompt, composed as the orchestrator does, is known.
    composed = "a red circle on a blue background. Style: moody cinematic. Overlay text: "
    composed += "'Chapter One' with clear, legible typography."
    assert unknown_words(composed, domain.vocabulary) == []


def test_a_bad_declaration_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text("prompt_domain: {vocabulary: 3}\n")
    with pytest.raises(ValueError, match=r"model\.yaml: prompt_domain"):
        read_folder_domain(tmp_path)


def test_a_null_declaration_is_none(tmp_path: Path) -> None:
    # What a repository version's model.yaml holds for a model declaring none.
    (tmp_path / "model.yaml").write_text("name: tiny-sd\nprompt_domain: null\n")
    assert read_folder_domain(tmp_path) is None
