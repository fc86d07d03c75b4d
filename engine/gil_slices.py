"""Bulk work over long lists a slice at a time, so that a worker thread hands the GIL over between slices.

A C-level call (`np.fromiter` over a `map`, `list(map(...))`, `np.array` of a list of tuples,
`dict.fromkeys`, freeing a long list) runs to its end holding the GIL: the interpreter switches
threads only between bytecodes.  Over the 100,000-300,000 items of a big model one such call took
30-100 ms, and the app's window, whose paints and timers need the GIL too, froze for that long
while a worker opened the model (gui.responsive).  Sliced, each call takes a few milliseconds and
the window gets its turn after each one; the results are the same, the extra cost is a Python
loop turn per slice.

This module imports nothing heavy (numpy is imported by the functions that build arrays): the
importers use it too.
"""
from __future__ import annotations

import time
from itertools import repeat
from typing import Callable, Iterator, Sequence

# Items per C-level call: a few milliseconds of work at most (about 1 us per item or less).
SLICE_ITEMS = 4096


def hand_over() -> None:
    """Let a thread waiting for the GIL have it now (`time.sleep(0)` releases it).

    Between slices the interpreter would hand the GIL over by itself at its next check, but a
    loop of `np.fromiter` calls was measured not to: a thread waiting for the GIL waited 160-290 ms
    while one ran over 265,000 items in slices of 4,096, and 3 ms with this call after each slice.
    """
    time.sleep(0)


def slice_bounds(count: int) -> list[tuple[int, int]]:
    """(start, stop) of each slice of `count` items."""
    return [(start, min(start + SLICE_ITEMS, count)) for start in range(0, count, SLICE_ITEMS)]


def parts(items: Sequence) -> Iterator[Sequence]:
    """`items` a slice at a time (each a copy: `items[start:stop]`)."""
    for start, stop in slice_bounds(len(items)):
        yield items[start:stop]


def array_of(function: Callable, items: Sequence, dtype, *constants):
    """`np.fromiter(map(function, items, *(repeat(c) for c in constants)), dtype, len(items))`
    a slice at a time (e.g. `array_of(ids.get, names, np.int64, -1)`: each name's id, -1 if none)."""
    import numpy as np

    result = np.empty(len(items), dtype)
    for start, stop in slice_bounds(len(items)):
        result[start:stop] = np.fromiter(map(function, items[start:stop], *map(repeat, constants)), dtype,
                                         stop - start)
        hand_over()
    return result


def table_of(rows: Sequence, dtype, columns: int):
    """`np.array(rows, dtype).reshape(-1, columns)` a slice of rows at a time (None -> nan for floats)."""
    import numpy as np

    if not rows:
        return np.zeros((0, columns), dtype)
    tables = []
    for start, stop in slice_bounds(len(rows)):
        tables.append(np.array(rows[start:stop], dtype).reshape(-1, columns))
        hand_over()
    return np.concatenate(tables)


def update(mapping: dict, keys: Sequence, values: Sequence) -> None:
    """`mapping.update(zip(keys, values))` a slice at a time (one update over 100,000 names held the
    GIL 20-30 ms).  Unlike a loop of np.fromiter calls, this loop lets a waiting thread in by itself
    (measured: the same longest hold without hand_over()), so it does not force a switch per slice."""
    for start, stop in slice_bounds(len(keys)):
        mapping.update(zip(keys[start:stop], values[start:stop]))


def clear(items: list) -> None:
    """Empty `items`; what only it holds is freed a slice at a time (one `del` frees it all in one call)."""
    while items:
        del items[-SLICE_ITEMS:]  # from the end: nothing left to move
