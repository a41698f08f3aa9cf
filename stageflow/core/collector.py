"""The garbage collector during a stage's start.

Importing torch, diffusers and transformers and building a model allocate
millions of objects that live as long as the process; the cyclic collector
walks them again and again as they pile up (measured: ~0.5-1 s of a 5 s start
to SERVING on the real-size folder). A stage pauses collection from its start
until its first model is loaded, then moves everything alive into the
permanent generation (`gc.freeze`), so later collections skip the model and
the libraries, and turns collection back on.

A model unloaded later (a hot swap) may hold cycles among frozen objects:
`release` unfreezes, collects so they are freed, and freezes what is left.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_paused = False


def pause() -> None:
    """Stop cyclic collection until `resume` (reference counting still frees)."""
    global _paused
    with _lock:
        if gc.isenabled():
            gc.disable()
            _paused = True


def resume() -> None:
    """Freeze what is alive now and collect from here on; a no-op unless paused."""
    global _paused
    with _lock:
        if not _paused:
            return
        _paused = False
        gc.freeze()
        gc.enable()


def release() -> None:
    """After a model was dropped: collect what it left in the frozen generation
    (cycles), then freeze the survivors again (the libraries, the current model)."""
    if gc.get_freeze_count() == 0:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
