"""What a model knows how to draw: its prompt vocabulary.

A model may declare the words its prompts are made of (`prompt_domain:
vocabulary:` in its model.yaml: a repository version's, or the model.yaml a
plain folder may carry for just this). A prompt with other words still runs
(the model draws what it can); the stage answers a warning naming them, so
"a knight on a dragon" sent to a model of shapes and colours says why it
came back a blue circle. Text in single quotes is a literal (the overlay
clause's text, drawn by the typography pass), not something to know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DOMAIN_FILE = "model.yaml"
_QUOTED = re.compile(r"'[^']*'")
_WORD = re.compile(r"[a-z]+")
# Warnings name at most this many words (a prompt has at most 2,000 characters).
MAX_NAMED = 12


class PromptDomain(BaseModel):
    """A model's prompt domain, as model.yaml declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field("", max_length=200, description="What the model draws, in words.")
    vocabulary: list[str] = Field(
        default_factory=list, description="Every word its prompts may use (lower case)."
    )


def read_folder_domain(folder: Path) -> PromptDomain | None:
    """The `prompt_domain` a plain model folder's model.yaml declares; None
    without one (a repository version's model.yaml writes `prompt_domain:
    null` when its model declares none). A bad declaration is a ValueError
    naming the file."""
    path = folder / DOMAIN_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("prompt_domain") is None:
        return None
    try:
        return PromptDomain.model_validate(data["prompt_domain"])
    except ValidationError as err:
        raise ValueError(f"{path}: prompt_domain: {err.errors()[0]['msg']}") from None


def unknown_words(prompt: str, vocabulary: Iterable[str]) -> list[str]:
    """The prompt's words outside `vocabulary`, each once, in prompt order
    (quoted text left out); [] when the vocabulary is empty (undeclared)."""
    known = {word.lower() for word in vocabulary}
    if not known:
        return []
    out: list[str] = []
    for word in _WORD.findall(_QUOTED.sub(" ", prompt.lower())):
        if word not in known and word not in out:
            out.append(word)
    return out


def prompt_warning(field: str, prompt: str, vocabulary: Iterable[str], description: str) -> str:
    """One warning line for `prompt`'s unknown words; "" when there are none."""
    words = unknown_words(prompt, vocabulary)
    if not words:
        return ""
    named = ", ".join(words[:MAX_NAMED]) + (" ..." if len(words) > MAX_NAMED else "")
    knows = f" (it draws {description})" if description else ""
    return (
        f"{field}: {len(words)} word(s) outside the model's vocabulary, which it cannot "
        f"draw: {named}{knows}"
    )
