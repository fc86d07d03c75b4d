"""Pausing Python's cyclic garbage collector while a big model is built.

Opening or analysing a model allocates hundreds of thousands of small objects (nodes, values,
tuples, metrics) and frees almost none of them until it is done.  Each allocation burst triggers
a collection, and the oldest generation's collections walk every object built so far: at 20,000
nodes that was about a third of the import + analysis time, and it grows with the model.  None of
these objects form cycles, so collection can wait until the work is done.  Reference counting
still frees everything as usual.  Nests: the GUI holds collection off for a whole open
(gui.responsive.hold_gc); a pause inside it leaves collection off when it ends.
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

# One count of pauses for every thread.  Each pause used to note gc.isenabled() and restore it:
# a pause in a worker that began before the GUI's hold switched collection back on in the middle
# of that hold (a full collection there stalls the UI thread ~100 ms at 100,000 nodes).
_lock = threading.Lock()
_pauses = 0
_was_enabled = True


def pause() -> None:
    """Automatic cyclic collection off until the matching `resume` (pauses nest, across threads)."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1


def resume(freeze: bool = False) -> bool:
    """End one pause.  The last one switches collection back on if it was on before the first;
    with `freeze`, it first moves what is alive to the permanent generation (gc.freeze).
    Returns whether this was the last pause; an unmatched call does nothing."""
    global _pauses
    with _lock:
        if _pauses == 0:
            return False
        _pauses -= 1
        if _pauses:
            return False
        if freeze:
            gc.freeze()
        if _was_enabled:
            gc.enable()
        return True


def paused() -> bool:
    return _pauses > 0


@contextmanager
def collector_paused():
    """Automatic cyclic collection off for the block; back on after the last pause ends."""
    pause()
    try:
        yield
    finally:
        resume()
