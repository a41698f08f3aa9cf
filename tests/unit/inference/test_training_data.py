"""The procedural shapes data set and the analyser that reads images back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stageflow.inference import tokenizer
from stageflow.inference.training import analysis, data


def test_same_seed_same_scenes_and_pixels() -> None:
    combos = data.training_combinations()
    first = list(data.specs(3, 20, combos))
    assert first == list(data.specs(3, 20, combos))
    assert first != list(data.specs(4, 20, combos))
    a, b = data.render(first[0]), data.render(first[0])
    assert a.tobytes() == b.tobytes()


def test_held_out_combinations_are_new_compositions_of_known_parts() -> None:
    training = set(data.training_combinations())
    assert not training & set(data.HELD_OUT)
    for shape, colour, background in data.HELD_OUT:
        # Each part, and the colour pair, is seen in training with something else.
        assert any(s == shape and c == colour for s, c, _ in training)
        assert any(b == background for _, _, b in training)
        assert any((c, b) == (colour, background) for _, c, b in training)


def test_every_caption_word_is_one_token(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer.write_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    for combo in data.all_combinations():
        text = data.caption(*combo)
        assert len(tok(text).input_ids) == len(text.split()) + 2, text


def test_captions_sometimes_carry_the_orchestrators_clauses() -> None:
    rng = np.random.default_rng(0)
    spec = data.ShapeSpec("circle", "red", "blue")
    captions = [data.random_caption(rng, spec) for _ in range(400)]
    assert 0.05 < captions.count("") / 400 < 0.15
    assert any(c.startswith(spec.caption + ". Style: ") for c in captions)
    assert any("Overlay text: '" in c for c in captions)
    assert captions.count(spec.caption) > 150


def test_analyser_reads_every_rendered_combination() -> None:
    for i, combo in enumerate(data.all_combinations()):
        for spec in data.specs(i, 3, [combo]):
            image = data.render(spec)
            assert analysis.score(image, spec.caption), (spec, analysis.read(image))


def test_analyser_rejects_a_wrong_caption_and_an_empty_image() -> None:
    image = data.render(data.ShapeSpec("square", "yellow", "black"))
    assert analysis.score(image, "a yellow square on a black background")
    assert not analysis.score(image, "a yellow circle on a black background")
    assert not analysis.score(image, "a red square on a black background")
    assert not analysis.score(image, "a yellow square on a blue background")
    blank = Image.new("RGB", (32, 32), data.PALETTE["blue"])
    assert analysis.read(blank).shape is None


def test_parse_caption_refuses_other_text() -> None:
    assert analysis.parse_caption("a red circle on a blue background. Style: x.") == (
        "circle",
        "red",
        "blue",
    )
    with pytest.raises(ValueError, match="not a shapes caption"):
        analysis.parse_caption("epic game hero portrait")
