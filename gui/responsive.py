"""Keeping the UI thread responsive while a model opens: a helper process and garbage-collection pauses.

A worker thread keeps the window responsive only while it runs Python code
(the interpreter hands the GIL over every switch interval: 5 ms by default,
1 ms once the window is made, see the fourth below).  Two things stop the UI
thread however the work is threaded, and both were measured as the longest
event-loop gaps while a 20,000-node model opened (benchmarks/bench_gui_open.py):

- Long C++ calls that hold the GIL: ONNX shape inference (~13 ms per 1,000
  nodes, 260 ms for 20,000) and igraph's Sugiyama layout (~90 ms for
  20,000).  `start_helper_process` starts one warm process and registers it
  with `importers.onnx.set_inference_executor` and
  `engine.layout.set_layout_executor`, which hand large graphs to it.  It is
  registered as it starts, not once it has answered: a model opened while it
  starts (the first open of a fresh app, ~1-3 s of spawn and imports) waits
  for it in the worker thread instead of inferring in-process, which froze the
  window for 0.9-2.5 s at 100,000 nodes.
  (ONNX Runtime's session creation and profile parsing are the same kind of
  call: the Run dialog runs the CLI as a child process, see gui/run_dialog.py.)
- Python's full garbage collections: opening a model allocates hundreds of
  thousands of objects, which triggers full collections of the whole heap,
  50-150 ms each, in whichever thread allocates.  `hold_gc` switches automatic
  collection off while a model is opened and drawn; the last `release_gc`
  moves every object alive then (mostly the model just opened) into the
  permanent generation (`gc.freeze`) and switches collection back on, so
  later collections walk only objects made since.  Frozen objects are still
  freed by reference counting; only cyclic garbage frozen with them stays.  A
  model's objects form no cycles, and the one cycle that held a model (its
  scene's signal connections) is cut when the scene is torn down
  (`GraphScene.teardown_steps`), so replacing a model frees the old one
  (tests/gui/test_responsive.py checks it; ~50 objects stay per open).

Freeing a replaced model is the third: reference counting frees the ~1 million
objects of a 100,000-node model in one cascade of C calls when its last
reference goes, and that is on the UI thread (the old scene's teardown): 35-70 ms
without a break.  `free_in_background` takes references to the objects in the
model's big collections first, so that last drop frees only its skeleton, and a
thread lets go of them a slice at a time once the model is gone.

The fourth is the hand-over itself.  A thread that wants the GIL waits the
switch interval (5 ms by default) before the running thread is asked to let go,
and the UI thread wants it again after every call into Qt that released it: a
paint or a progress update is dozens of such hand-overs while a worker walks a
model in Python.  In a fresh app (the helper process starting on the other
core) 6 of 25 first opens of a 20,000-node model stalled the window 100-215 ms
that way, 0 of 25 with a 1 ms interval (open times unchanged);
`shorten_gil_switch_interval` sets it as the window is made.

This module imports no Qt: a spawned helper process that unpickles a
reference to it does not load PySide6.
"""
from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import sys
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Optional

from engine import gc_pause

# A call the helper has not answered in this time is run in-process instead (a safety net: a
# 20,000-node graph takes the helper ~0.3 s).
HELPER_TIMEOUT_S = 60.0
# A call made while the helper starts waits this long for its first answer (spawn, onnx's
# import: 1-3 s on a loaded machine), then runs in-process: a helper that never answers (a
# script without an `if __name__ == "__main__":` guard runs again in it) must not hang opening.
HELPER_START_TIMEOUT_S = 20.0

_lock = threading.Lock()
_executor: Optional[ProcessPoolExecutor] = None
_registered: Optional["_HelperClient"] = None  # the client the importer and the layout call
_ready = threading.Event()  # set once the helper answered its warm-up call and is registered


def _exit_with_parent() -> None:
    """Helper process initializer: exit when the app does, even if it crashed and never said so."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch() -> None:
            parent.join()
            os._exit(0)

        threading.Thread(target=watch, name="layerscope-parent-watch", daemon=True).start()


class _HelperCall:
    """The future handed to the importer and the layout: waits for the helper, or runs the call here.

    A function marked `rerun_after_helper_crash = False` (igraph's Sugiyama) is not run here
    when the helper died running it: the same C code could take the app down the same way.
    The caller gets the BrokenProcessPool and falls back to code of its own.
    """

    def __init__(self, client: "_HelperClient", future: Optional[Future], function, args):
        self.client, self.future, self.function, self.args = client, future, function, args

    def result(self, timeout: Optional[float] = None):
        if self.future is not None and not self.client.started():
            self.future.cancel()  # not started: the helper never got this far
            self.future = None
        if self.future is not None:
            try:
                return self.future.result(timeout=HELPER_TIMEOUT_S)
            except BrokenProcessPool:
                _helper_failed(self.client.executor)
                if not getattr(self.function, "rerun_after_helper_crash", True):
                    raise
            except (FutureTimeout, CancelledError):
                _helper_failed(self.client.executor)
        return self.function(*self.args)


class _HelperClient:
    """What `importers.onnx` and `engine.layout` see as their executor: `submit(fn, *args).result()`."""

    def __init__(self, executor: ProcessPoolExecutor, warm: Optional[Future] = None):
        self.executor = executor
        self.warm = warm  # the helper's first call: answered once it has started (None: started)

    def started(self) -> bool:
        """Whether the helper has answered its first call (waits for it up to HELPER_START_TIMEOUT_S).

        False when it failed or did not answer in time: it is unregistered (calls run in-process;
        one that answers late registers again, see `_register`).
        """
        if self.warm is None:
            return True
        try:
            self.warm.result(timeout=HELPER_START_TIMEOUT_S)
            return True
        except Exception:  # failed to start, cancelled, or still not answering
            _unregister(self)
            return False

    def submit(self, function, *args) -> _HelperCall:
        try:
            future = self.executor.submit(function, *args)
        except (BrokenProcessPool, RuntimeError):  # broken, or shut down meanwhile
            _helper_failed(self.executor)
            future = None
        return _HelperCall(self, future, function, args)


# The GIL switch interval for an app with a window (see the module's docstring; Python's default: 5 ms).
UI_SWITCH_INTERVAL_S = 0.001


def shorten_gil_switch_interval() -> None:
    """Let the UI thread take the GIL from a busy worker within UI_SWITCH_INTERVAL_S, not 5 ms.

    Process-wide; never lengthens an interval someone set shorter.
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), UI_SWITCH_INTERVAL_S))


def start_helper_process() -> Optional[ProcessPoolExecutor]:
    """Start (once per process) the helper process for shape inference and layout of large graphs.

    The process is "spawn"ed (forking a process that runs Qt threads is unsafe) and
    warmed at once: its first call (`_warm_up_helper`: inference of an empty model, a tiny
    Sugiyama) imports onnx, the importer and igraph now, while the person looks at the
    window.  It is registered with the importer and the layout at once: their calls queue
    behind that first one, and wait for it up to HELPER_START_TIMEOUT_S in the worker
    thread that makes them.  A helper that cannot start (e.g. a script without an
    `if __name__ == "__main__":` guard, which the spawned process would run again) is
    unregistered then, and opening runs in-process instead of waiting forever.
    A helper that dies or does not answer is replaced at once (calls run in-process
    until the new one answers).  Stopped by `stop_helper_process`
    (the app calls it on exit; atexit as a safety net); it also exits by itself
    when the app's process ends.  Returns None inside a multiprocessing child: it
    never starts helpers of its own.
    """
    global _executor
    if multiprocessing.parent_process() is not None:
        return None
    with _lock:
        if _executor is None:
            _ready.clear()
            executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_exit_with_parent)
            _executor = executor
            client = _HelperClient(executor, executor.submit(_warm_up_helper))
            _set_executors(client)
            client.warm.add_done_callback(lambda future, c=client: _register(c))
        return _executor


def _warm_up_helper() -> None:
    """The helper process's first call, while the person looks at the window: the importer's shape
    inference, engine.layout and igraph imported, so no later call of the helper waits for them
    and nothing of the kind runs there while a model opens."""
    from engine.layout import warm_up_layout
    from importers.onnx import warm_up_inference

    warm_up_inference()
    warm_up_layout()


def _set_executors(client: Optional[_HelperClient]) -> None:
    """Register `client` (None: nobody) with the importer and the layout; called holding _lock."""
    global _registered
    from engine.layout import set_layout_executor
    from importers.onnx import set_inference_executor

    _registered = client
    set_inference_executor(client)
    set_layout_executor(client)


def _register(client: _HelperClient) -> None:
    """The helper answered its first call: ready (registered again if a caller gave up waiting)."""
    warm = client.warm
    if warm.cancelled() or warm.exception() is not None:
        _unregister(client)  # the helper could not start: inference and layout stay in-process
        return
    with _lock:
        if _executor is client.executor:
            _set_executors(client)
            _ready.set()


def _unregister(client: _HelperClient) -> None:
    """Calls run in-process from now on (the helper stays, in case it answers late)."""
    with _lock:
        if _registered is client:
            _set_executors(None)


def _helper_failed(executor: ProcessPoolExecutor) -> None:
    """The helper died or hung: unregister it and start a new one (registered once it answers)."""
    global _executor
    with _lock:
        if _executor is not executor:
            return
        _executor = None
        _ready.clear()
        _set_executors(None)
    executor.shutdown(wait=False, cancel_futures=True)
    start_helper_process()


def helper_ready(timeout: Optional[float] = None) -> bool:
    """Whether the helper process is running and registered (waits up to `timeout` seconds)."""
    return _ready.wait(timeout) if timeout else _ready.is_set()


def stop_helper_process() -> None:
    """Unregister and stop the helper; opening falls back to in-process inference and layout."""
    global _executor
    with _lock:
        executor, _executor = _executor, None
        _ready.clear()
        if executor is None:
            return
        _set_executors(None)
    executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- garbage collection

def hold_gc() -> None:
    """Switch automatic garbage collection off until the matching `release_gc` (holds nest, and
    share one count with engine.gc_pause's pauses in workers)."""
    gc_pause.pause()


def release_gc() -> None:
    """End one hold; the last one freezes what is alive (see the module docstring) and re-enables collection."""
    # No collection first: with collection off, everything made while opening is still in the
    # youngest generation, so even gc.collect(0) would walk the whole new model.
    gc_pause.resume(freeze=True)
    global _last_release
    _last_release = time.monotonic()


def gc_held() -> bool:
    return gc_pause.paused()


# ------------------------------------------------------------------------- freeing a replaced model

# A collection of this many items or more is kept whole with its items, not walked (see below).
FREE_COLLECTION_ITEMS = 256
# Kept objects let go of per step: ~2-5 ms of freeing (a node of the IR is a handful of objects).
FREE_SLICE_ITEMS = 2048
# The thread starts this long after the new model is shown (its first paints and the minimap come
# first: another thread wanting the GIL slows every turn of the UI thread), then works FREE_STEP_S
# at a time and rests twice as long (a thread that never rests makes each of the UI thread's GIL
# requests wait up to the switch interval).
FREE_DELAY_S = 1.0
FREE_STEP_S = 0.003
FREE_REST_SHARE = 2.0
# While a task opens or lays out a model, or a scene is built (collection is held for them), and
# FREE_AFTER_HOLD_S after (the new scene's first paints), the thread waits, up to FREE_YIELD_S in
# all: its turns with the GIL made the build slices and the first paint of an Expand all (~1 s
# after an open, when the model that open replaced is freed) 7-22 ms longer.
FREE_YIELD_S = 5.0
FREE_AFTER_HOLD_S = 0.3
_last_release = 0.0  # time.monotonic() of the last release_gc
# Kept objects are let go of after this long even if the model is still alive (something else keeps
# it: nothing is freed then, and nothing is lost).
FREE_WAIT_S = 60.0
# Objects of these packages are walked into (their attributes); anything else is kept or left alone.
_OUR_PACKAGES = ("engine", "gui", "importers")
_freeing: set = set()  # the running threads (tests wait for them)


def free_in_background(old, still_used=()) -> Optional[threading.Thread]:
    """Free `old` (a replaced gui.app.LoadedModel, or any object of ours) off the UI thread.

    A thread walks the objects of ours that `old` reaches (dataclasses, dicts, lists, tuples,
    sets: the skeleton) and keeps a reference to every collection of FREE_COLLECTION_ITEMS
    items or more and to their items, without walking those.  When the last other reference to
    `old` goes (the old scene's teardown, on the UI thread), only the skeleton is freed there
    (~1 ms at 100,000 nodes instead of 35-70 ms); the thread then drops the collections and
    the kept items FREE_SLICE_ITEMS at a time.  Objects in `still_used` (the new model's parts
    shared with `old`, e.g. its analysis after a relayout) and what only they reach are not
    walked.  Qt objects are neither walked nor kept (they are freed where they are, as before);
    objects that are still used elsewhere are only referenced for a while, never changed.

    It starts FREE_DELAY_S after the call.  Returns the thread (its `walked` event is set once it
    holds `old` no more), or None when
    `old` cannot be watched (no weak reference).
    """
    gone = threading.Event()
    try:
        watch = weakref.ref(old, lambda _: gone.set())  # called where the last reference goes
    except TypeError:
        return None
    skip = {id(part) for part in still_used}
    holder = [old]  # the thread's reference while it walks, dropped before it waits
    walked = threading.Event()

    def run() -> None:
        time.sleep(FREE_DELAY_S)
        kept_collections, kept = _keep_collections(holder, skip)
        holder.clear()  # the last reference may be this one: then the skeleton is freed here
        walked.set()
        gone.wait(FREE_WAIT_S)
        rest = _Rest()
        while kept_collections:
            kept_collections.pop()  # its items are kept: a few ms at most for 100,000 of them
            rest()
        while kept:
            del kept[-FREE_SLICE_ITEMS:]  # from the end: nothing left to move
            rest()
        _freeing.discard(thread)
        del watch_kept[:]

    watch_kept = [watch]  # the weak reference lives as long as the thread (its callback with it)
    thread = threading.Thread(target=run, name="layerscope-free-model", daemon=True)
    thread.walked = walked
    _freeing.add(thread)
    thread.start()
    return thread


def freeing_done(timeout: float) -> bool:
    """Whether every `free_in_background` thread has finished (waits up to `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    for thread in list(_freeing):
        thread.join(max(0.0, deadline - time.monotonic()))
    return not _freeing


class _Rest:
    """Called between steps: once the thread worked FREE_STEP_S since its last rest, it rests
    FREE_REST_SHARE times as long."""

    def __init__(self):
        self.since = time.perf_counter()
        self.yielded = 0.0  # seconds waited for the UI thread's work (FREE_YIELD_S)

    def __call__(self) -> None:
        worked = time.perf_counter() - self.since
        if worked >= FREE_STEP_S:
            time.sleep(worked * FREE_REST_SHARE)
            while self.yielded < FREE_YIELD_S and (
                    gc_held() or time.monotonic() - _last_release < FREE_AFTER_HOLD_S):
                time.sleep(0.01)
                self.yielded += 0.01
            self.since = time.perf_counter()


def _keep_collections(roots: list, skip: set) -> tuple[list, list]:
    """(the big collections reached from `roots` through objects of ours, their items)."""
    collections, items = [], []
    seen = set(skip)
    walkable: dict[type, bool] = {}
    stack = list(roots)
    rest = _Rest()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        kind = type(obj)
        if kind in (dict, list, tuple, set, frozenset):
            if len(obj) >= FREE_COLLECTION_ITEMS:
                collections.append(obj)
                items += gc.get_referents(obj)
                rest()
                continue
        else:
            ours = walkable.get(kind)
            if ours is None:
                ours = walkable[kind] = _ours(kind)
            if not ours:
                continue
        stack += gc.get_referents(obj)
        rest()
    return collections, items


def _ours(kind: type) -> bool:
    """Whether objects of `kind` are walked: instances of our packages' classes, not Qt's."""
    if issubclass(kind, type) or kind.__module__.partition(".")[0] not in _OUR_PACKAGES:
        return False
    return not any(base.__module__.partition(".")[0] in ("PySide6", "shiboken6") for base in kind.__mro__)


atexit.register(stop_helper_process)  # a safety net: the app stops it on exit
