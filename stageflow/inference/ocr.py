"""Reading the overlay text back: RapidOCR recognition, and the character error rate.

RapidOCR ships its ONNX models inside the wheel and runs on onnxruntime with no
network. Only its recogniser runs: the typography pass knows where it drew the
line, so detection would only add a way to fail. Its options are passed
explicitly on every call, because RapidOCR keeps per-call options as instance
state (a call without them would inherit the previous caller's).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from pathlib import Path
from typing import Any

from PIL import Image

# The recogniser the wheel carries; named explicitly so RapidOCR never takes
# its download path for a default model it does not find.
REC_MODEL = "PP-OCRv6_rec_small.onnx"
# Per-call options: recognition only, no angle classifier, plain text out.
CALL_OPTIONS: dict[str, Any] = {
    "use_det": False,
    "use_cls": False,
    "use_rec": True,
    "return_word_box": False,
    "return_single_char_box": False,
    "text_score": 0.0,
}

_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, with runs of whitespace as one space and none at the ends.

    OCR reports a gap as one space however wide it is drawn, so spacing is
    not a character error.
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, substitute one character) turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(expected: str, read: str) -> float:
    """Character error rate after `normalize`: edit distance / len(expected).

    May exceed 1 when OCR reads much more than was written.
    """
    want, got = normalize(expected), normalize(read)
    if not want:
        return 0.0 if not got else 1.0
    return levenshtein(want, got) / len(want)


def rapidocr_model_dir() -> Path:
    import rapidocr

    return Path(rapidocr.__file__).resolve().parent / "models"


class TextReader:
    """One RapidOCR recogniser, shared by threads (calls are serialised: ~20 ms each)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        from rapidocr import RapidOCR

        model = rapidocr_model_dir() / REC_MODEL
        if not model.is_file():
            raise FileNotFoundError(
                f"{model} is missing: the installed rapidocr wheel no longer ships {REC_MODEL}"
            )
        return RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.use_det": False,
                "Global.use_cls": False,
                "Rec.model_path": str(model),
                "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    def read(self, image: Image.Image) -> str:
        """The text on one cropped line image ("" when nothing is recognised)."""
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            result = self._engine(image.convert("RGB"), **CALL_OPTIONS)
        texts = getattr(result, "txts", None) or ()
        return " ".join(t for t in texts if t)
