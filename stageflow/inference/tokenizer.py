"""An offline CLIP BPE tokenizer folder for the fixture models.

Nothing may be downloaded at run time, so the fixture pipeline ships its own
small tokenizer in exactly the format of a real Stable Diffusion `tokenizer/`
folder (`vocab.json`, `merges.txt`, `tokenizer_config.json`). The same
`CLIPTokenizer.from_pretrained(folder)` call loads either.

The vocabulary follows CLIP's layout: the 256 byte symbols of GPT-2's
byte-to-unicode map, the same with the end-of-word suffix `</w>`, then one
token per learned merge, then the two special tokens. Because every byte is a
token with and without `</w>`, any text tokenizes; the merges are learned with
a tiny BPE training run over `WORDS` so each of those words is a single token.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP's context length; the text encoder's position table must match it.
MODEL_MAX_LENGTH = 77

# The words of the reference workflow's prompts, plus a small prompt-writing
# vocabulary. Order does not matter: training sorts and breaks ties by text.
_WORD_TEXT = """
    epic game hero portrait moody cinematic style overlay text with clear legible
    typography chapter one two three four five six seven eight nine ten a an the
    red green blue yellow white black orange purple pink brown gray grey gold silver
    circle square triangle star line on background foreground in of and at by for to
    from is it this that photo painting drawing illustration sketch render art artwork
    landscape city street night day sky sun moon cloud clouds rain snow fog forest tree
    mountain river sea ocean lake castle tower dragon knight sword shield armor warrior
    wizard face eyes hair man woman girl boy person character light lighting dark
    bright soft sharp detailed detail high quality low blurry ugly bad anatomy
    deformed watermark signature lettering title logo font bold serif poster cover
    book card ui icon asset vector flat minimal clean simple realistic photorealistic
    painterly brushstroke oil watercolor digital concept fantasy sci fi futuristic
    neon glow shadow shadows warm cold color colors colorful vibrant muted
    composition close up wide shot view lens depth field bokeh studio dramatic
    heroic standing holding looking left right center top bottom big small
    large tiny old new beautiful masterpiece best worst trending resolution
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map, as CLIP uses it."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _word_symbols(word: str, byte_map: dict[int, str]) -> list[str]:
    symbols = [byte_map[b] for b in word.lower().encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return symbols


def learn_merges(words: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """Train BPE until every word is one symbol; deterministic tie-breaking.

    Applying merges by rank (what the tokenizer does) reproduces the training
    segmentation, so each training word ends up a single token.
    """
    byte_map = bytes_to_unicode()
    segmented = [_word_symbols(w, byte_map) for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in segmented:
            pairs.update(itertools.pairwise(symbols))
        if not pairs:
            return merges
        # Most frequent first; ties by the pair's text so the result never varies.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        segmented = [_merge(symbols, best) for symbols in segmented]


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def write_tokenizer(folder: Path, words: tuple[str, ...] | list[str] = WORDS) -> int:
    """Write a CLIP tokenizer folder; returns the vocabulary size.

    Output bytes depend only on `words`, so the folder is reproducible.
    """
    return write_tokenizer_files(folder, learn_merges(words))


def write_tokenizer_files(folder: Path, merges: list[tuple[str, str]]) -> int:
    """A CLIPTokenizer folder over `merges` (ours, or CLIP's own 48,894);
    returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(merges)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=None), encoding="utf-8"
    )
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return len(vocab)
