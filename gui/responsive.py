"""Keeping the UI thread responsive while a model opens: a helper process and garbage-collection pauses.

A worker thread keeps the window responsive only while it runs Python code
(the interpreter hands the GIL over every 5 ms).  Two things stop the UI
thread however the work is threaded, and both were measured as the longest
event-loop gaps while a 20,000-node model opened (benchmarks/bench_gui_open.py):

- Long C++ calls that hold the GIL: ONNX shape inference (~13 ms per 1,000
  nodes, 260 ms for 20,000) and igraph's Sugiyama layout (~90 ms for
  20,000).  `start_helper_process` starts one warm process and registers it
  with `importers.onnx.set_inference_executor` and
  `engine.layout.set_layout_executor`, which hand large graphs to it.
  (ONNX Runtime's session creation and profile parsing are the same kind of
  call: the Run dialog runs the CLI as a child process, see gui/run_dialog.py.)
- Python's full garbage collections: opening a model allocates hundreds of
  thousands of objects, which triggers full collections of the whole heap,
  50-150 ms each, in whichever thread allocates.  `hold_gc` switches automatic
  collection off while a model is opened and drawn; the last `release_gc`
  moves every object alive then (mostly the model just opened) into the
  permanent generation (`gc.freeze`) and switches collection back on, so
  later collections walk only objects made since.  A model's objects form no
  reference cycles (they are freed by reference counting when the next model
  replaces them), so freezing them keeps nothing alive.

This module imports no Qt: a spawned helper process that unpickles a
reference to it does not load PySide6.
"""
from __future__ import annotations

import atexit
import gc
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Optional

_lock = threading.Lock()
_executor: Optional[ProcessPoolExecutor] = None
_ready = threading.Event()  # set once the helper answered its warm-up call and is registered


def start_helper_process() -> Optional[ProcessPoolExecutor]:
    """Start (once per process) the helper process for shape inference and layout of large graphs.

    The process is "spawn"ed (forking a process that runs Qt threads is unsafe) and
    warmed at once: its first call (inference of an empty model) imports onnx now,
    while the person looks at the window.  It is registered with the importer and
    the layout only when that call has answered, so a helper that cannot start
    (e.g. a script without an `if __name__ == "__main__":` guard, which the spawned
    process would run again) leaves opening in-process instead of waiting forever.
    Stopped by `stop_helper_process` (the app calls it on exit; atexit as a safety net).
    Returns None inside a multiprocessing child: it never starts helpers of its own.
    """
    global _executor
    from importers.onnx import infer_shapes_bytes

    if multiprocessing.parent_process() is not None:
        return None
    with _lock:
        if _executor is None:
            _ready.clear()
            executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            _executor = executor
            warm = executor.submit(infer_shapes_bytes, b"")
            warm.add_done_callback(lambda future, e=executor: _register(e, future))
            atexit.register(stop_helper_process)
        return _executor


def _register(executor: ProcessPoolExecutor, warm: Future) -> None:
    from engine.layout import set_layout_executor
    from importers.onnx import set_inference_executor

    if warm.cancelled() or warm.exception() is not None:
        return  # the helper could not start: inference and layout stay in-process
    with _lock:
        if _executor is executor:
            set_inference_executor(executor)
            set_layout_executor(executor)
            _ready.set()


def helper_ready(timeout: Optional[float] = None) -> bool:
    """Whether the helper process is running and registered (waits up to `timeout` seconds)."""
    return _ready.wait(timeout) if timeout else _ready.is_set()


def stop_helper_process() -> None:
    """Unregister and stop the helper; opening falls back to in-process inference and layout."""
    global _executor
    from engine.layout import set_layout_executor
    from importers.onnx import set_inference_executor

    with _lock:
        executor, _executor = _executor, None
        _ready.clear()
        if executor is None:
            return
        set_inference_executor(None)
        set_layout_executor(None)
    executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- garbage collection

_gc_holds = 0
_gc_was_enabled = True


def hold_gc() -> None:
    """Switch automatic garbage collection off until the matching `release_gc` (holds nest)."""
    global _gc_holds, _gc_was_enabled
    with _lock:
        if _gc_holds == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holds += 1


def release_gc() -> None:
    """End one hold; the last one freezes what is alive (see the module docstring) and re-enables collection."""
    global _gc_holds
    with _lock:
        if _gc_holds == 0:
            return
        _gc_holds -= 1
        if _gc_holds == 0:
            # No collection first: with collection off, everything made while opening is still
            # in the youngest generation, so even gc.collect(0) would walk the whole new model.
            gc.freeze()
            if _gc_was_enabled:
                gc.enable()


def gc_held() -> bool:
    return _gc_holds > 0
