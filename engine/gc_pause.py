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
from contextlib import contextmanager


@contextmanager
def collector_paused():
    """Automatic cyclic collection off for the block; back on after it if it was on before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
