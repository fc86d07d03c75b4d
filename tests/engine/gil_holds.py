"""How long a thread running some work holds the GIL at most (used by the tests of work a worker does
a slice or a piece at a time: engine.gil_slices, importers.protowire.parse_in_pieces)."""
from __future__ import annotations

import sys
import threading
import time

from engine.gc_pause import collector_paused


def longest_hold_ms(work) -> float:
    """The most CPU time this thread spent running `work` between two turns of a thread that sleeps
    0.5 ms at a time (switch interval 1 ms: code that hands the GIL over lets it in within about
    that).  CPU time, not wall time: a busy machine delays both threads alike, not this figure."""
    done, holds = threading.Event(), [0.0]
    clock = time.pthread_getcpuclockid(threading.get_ident())

    def tick() -> None:
        last = time.clock_gettime(clock)
        while not done.is_set():
            time.sleep(0.0005)
            now = time.clock_gettime(clock)
            holds.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    with collector_paused():  # as opening does (a collection is a hold of its own), until the ticks end
        ticker.start()
        try:
            work()
        finally:
            done.set()
            ticker.join()
            sys.setswitchinterval(interval)
    return max(holds) * 1000
