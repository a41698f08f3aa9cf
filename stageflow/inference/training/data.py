"""A procedural data set: one shape of one colour on a background colour.

Everything is drawn from a seed, so the same seed gives the same images and
captions bit for bit. Shapes are drawn at 4x and box-filtered down, which
gives clean anti-aliased edges at any size.

`HELD_OUT` lists (shape, colour, background) combinations never used in
training; each of their shapes, colours and colour pairs does appear in
training with something else, so generating them tests composition, not recall.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Far apart in RGB so the analyser's nearest-colour rule has a wide margin.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("circle", "red", "yellow"),
    ("circle", "yellow", "black"),
    ("circle", "green", "white"),
    ("circle", "white", "blue"),
    ("square", "green", "yellow"),
    ("square", "white", "red"),
    ("square", "blue", "black"),
    ("square", "black", "green"),
    ("triangle", "blue", "white"),
    ("triangle", "black", "red"),
    ("triangle", "red", "blue"),
    ("triangle", "yellow", "green"),
)

# Clauses the orchestrator appends ("{base}. Style: {style}. Overlay text: ...");
# training on them keeps a composed prompt in distribution.
STYLES: tuple[str, ...] = (
    "moody cinematic",
    "flat minimal",
    "watercolor painting",
    "digital art",
    "neon glow",
    "dramatic lighting",
    "soft pastel",
    "bold poster",
)
OVERLAY_TEXTS: tuple[str, ...] = (
    "Chapter One",
    "Chapter Two",
    "Epic",
    "Hero",
    "Title",
    "Book Cover",
    "Night Sky",
    "Level 5",
)
# Fractions of captions: empty (for classifier-free guidance), with a style
# clause, with an overlay clause (drawn independently).
EMPTY_CAPTION_P = 0.1
STYLE_CLAUSE_P = 0.3
OVERLAY_CLAUSE_P = 0.3


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    background: str
    # Centre and size as fractions of the side, so any resolution draws the same scene.
    cx: float = 0.5
    cy: float = 0.5
    radius: float = 0.3

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background)


def caption(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def vocabulary() -> list[str]:
    """Every word a training caption uses (the overlay clause's quoted text
    aside), sorted: the trained model's prompt domain."""
    words = {"a", "on", "background", "style", "overlay", "text", "with", "clear"}
    words |= {"legible", "typography", *SHAPES, *COLOURS}
    words |= {word for style in STYLES for word in style.split()}
    return sorted(words)


def prompt_domain_yaml() -> str:
    """The model.yaml the trained SD folder carries: its prompt domain only."""
    import yaml

    domain = {
        "description": "one circle, square or triangle of one colour on a background of "
        f"another ({', '.join(COLOURS)})",
        "vocabulary": vocabulary(),
    }
    header = "# What this model was trained to draw (stageflow.inference.prompt_domain).\n"
    return header + yaml.safe_dump({"prompt_domain": domain}, sort_keys=False)


def all_combinations() -> list[tuple[str, str, str]]:
    return [(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if c != b]


def training_combinations() -> list[tuple[str, str, str]]:
    held = set(HELD_OUT)
    return [combo for combo in all_combinations() if combo not in held]


def render(spec: ShapeSpec, size: int = 32) -> Image.Image:
    """Draw at 4x and box-filter down: anti-aliased edges, no ringing."""
    big = size * 4
    image = Image.new("RGB", (big, big), PALETTE[spec.background])
    draw = ImageDraw.Draw(image)
    cx, cy, r = spec.cx * big, spec.cy * big, spec.radius * big
    fill = PALETTE[spec.colour]
    if spec.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif spec.shape == "square":
        # Same area as the circle would have: similar sizes for every shape.
        h = r * 0.886
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif spec.shape == "triangle":
        # Upright, bounding box centred on (cx, cy): its centre lies inside.
        h = r * 1.1
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; known: {SHAPES}")
    return image.resize((size, size), Image.Resampling.BOX)


def random_spec(rng: np.random.Generator, combos: list[tuple[str, str, str]]) -> ShapeSpec:
    shape, colour, background = combos[int(rng.integers(len(combos)))]
    return ShapeSpec(
        shape,
        colour,
        background,
        cx=float(rng.uniform(0.44, 0.56)),
        cy=float(rng.uniform(0.44, 0.56)),
        radius=float(rng.uniform(0.26, 0.34)),
    )


def random_caption(rng: np.random.Generator, spec: ShapeSpec) -> str:
    """The caption, sometimes empty, sometimes with the orchestrator's clauses."""
    if rng.random() < EMPTY_CAPTION_P:
        return ""
    text = spec.caption
    with_style = rng.random() < STYLE_CLAUSE_P
    with_overlay = rng.random() < OVERLAY_CLAUSE_P
    if not (with_style or with_overlay):
        return text
    text += "."
    if with_style:
        text += f" Style: {STYLES[int(rng.integers(len(STYLES)))]}."
    if with_overlay:
        overlay = OVERLAY_TEXTS[int(rng.integers(len(OVERLAY_TEXTS)))]
        text += f" Overlay text: '{overlay}' with clear, legible typography."
    return text


def to_array(images: list[Image.Image]) -> np.ndarray:
    """PIL images -> (N, 3, H, W) float32 in [-1, 1], as the SD pipelines feed VAEs."""
    stack = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return stack.transpose(0, 3, 1, 2).copy()


def specs(seed: int, count: int, combos: list[tuple[str, str, str]]) -> Iterator[ShapeSpec]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield random_spec(rng, combos)
