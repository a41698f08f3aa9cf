"""The request limits and the parameter rules, in one place for every process.

The stages apply these rules to the parameters they decode (stageflow.inference),
and the orchestrator applies the same functions to the stage requests it builds
at SubmitJob and RerunJob, so a job a stage would reject is rejected before it is
stored or run. The maxima bound every string and repeated field of every request
(the protos document them); they are checked before any other work, so no check
is slower than linear in the request, and no error message carries more than
`quote`'s short prefix of what the caller sent.

Pure functions over plain values: this module imports nothing of stageflow.
"""

from __future__ import annotations

import math
import unicodedata

# -- maxima of request fields (the protos' `// At most N ...` comments) --------

# Prompts and negative prompts as a stage receives them (the composed prompt).
MAX_PROMPT_CHARS = 2000
# Overlay text: one line the typography pass can draw.
MAX_TEXT_CHARS = 200
# A ListJobs text filter (`query`): a phrase of a prompt, not a prompt.
MAX_QUERY_CHARS = 200
# Ids: job ids, request ids (idempotency keys, stage call ids).
MAX_ID_CHARS = 128
# Names: pipeline specs, stages, kinds, models ("name@version"), option keys.
MAX_NAME_CHARS = 64
# Object keys, and the output prefix a stage request may name (an artifact
# key is the prefix plus ~80 characters; S3 allows 1024 bytes).
MAX_KEY_CHARS = 1024
MAX_OUTPUT_PREFIX_CHARS = 256
# A share link's token ("<job_id>/<version>/<expiry>/<signature>").
MAX_TOKEN_CHARS = 512
# One UploadImageRequest message's bytes (the image's total is a setting).
MAX_UPLOAD_CHUNK_BYTES = 1024 * 1024
# Short strings: a colour ("#rrggbb" or a CSS name).
MAX_SHORT_CHARS = 64
# Entries of a job's `stages` list.
MAX_STAGES = 16
# Entries of an options map (by stage name) and keys of one options Struct.
MAX_OPTION_ENTRIES = 16
MAX_OPTION_KEYS = 64
# String values inside an options Struct.
MAX_OPTION_VALUE_CHARS = 2000
# Versions of one job (RerunJob after that is FAILED_PRECONDITION), so that
# GetJob's every-version answer always fits in one message.
MAX_VERSIONS = 50
# Error texts kept on a job or stage run (a stage's message, a cause).
MAX_ERROR_CHARS = 2000

# How much of a caller's value an error message quotes.
QUOTE_CHARS = 40


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` for an error message: its repr, cut to `limit` characters
    with the full length said, so no message grows with the input."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def length_problem(value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value)}"
    return None


def count_problem(count: int, limit: int, what: str = "entries") -> str | None:
    if count > limit:
        return f"must have at most {limit} {what}, got {count}"
    return None


def finite_problem(value: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    return None


# -- the stages' parameter rules -------------------------------------------------


def prompt_problem(text: str, *, required: bool) -> str | None:
    """Why a (negative) prompt cannot be sent to a diffusion stage, or None."""
    if required and not text.strip():
        return "must not be empty"
    return length_problem(text, MAX_PROMPT_CHARS)


def text_chars_problem(text: str) -> str | None:
    """Why overlay text cannot be drawn as one line, the font aside (the
    stage also checks every character has a glyph), or None."""
    if not text.strip():
        return "must not be blank"
    problem = length_problem(text, MAX_TEXT_CHARS)
    if problem:
        return problem
    for char in text:
        if unicodedata.category(char).startswith("C"):
            return f"must be one line of printable characters, got {char!r}"
    return None


# The strength an unset `strength` takes by what the refine pass does: img2img
# re-noises a third, inpainting repaints most of its region, and the
# typography pass only harmonises text drawn exactly (a light inpaint).
STRENGTH_IMG2IMG = 0.35
STRENGTH_INPAINT = 0.75
STRENGTH_TEXT = 0.3


def default_strength(*, text: bool, inpaint: bool) -> float:
    if text:
        return STRENGTH_TEXT
    return STRENGTH_INPAINT if inpaint else STRENGTH_IMG2IMG


def refine_steps_problem(steps: float, strength: float) -> str | None:
    """A refine pass runs int(steps × strength) steps: at least one."""
    if int(steps * strength) < 1:
        return f"steps × strength must be at least 1 step, got {steps:g} × {strength:g}"
    return None


__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_ID_CHARS",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_OPTION_ENTRIES",
    "MAX_OPTION_KEYS",
    "MAX_OPTION_VALUE_CHARS",
    "MAX_OUTPUT_PREFIX_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_QUERY_CHARS",
    "MAX_SHORT_CHARS",
    "MAX_STAGES",
    "MAX_TEXT_CHARS",
    "MAX_TOKEN_CHARS",
    "MAX_UPLOAD_CHUNK_BYTES",
    "MAX_VERSIONS",
    "QUOTE_CHARS",
    "STRENGTH_IMG2IMG",
    "STRENGTH_INPAINT",
    "STRENGTH_TEXT",
    "count_problem",
    "default_strength",
    "finite_problem",
    "length_problem",
    "prompt_problem",
    "quote",
    "refine_steps_problem",
    "text_chars_problem",
]
