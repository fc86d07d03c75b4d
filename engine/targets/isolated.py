"""Run one module-level function in a short-lived child process.

Why: parsing, changing and serializing a large ONNX protobuf holds the GIL for
up to a second per 100 MB in one C call.  In the bridge agent that stalls the
asyncio event loop, so no connection gets an answer (not even a `ping`) while a
model loads.  Done in a child, the agent's thread just waits on a pipe, with
the GIL released.

    result = call_in_child(function, *args)

Children are forked from multiprocessing's fork server, started on first use
with onnx, onnxruntime and the CPU target already imported (a fresh interpreter
would spend seconds importing them on every load; forking the agent itself is
unsafe, it runs threads).  The function goes to the child by module and name,
its arguments and result pickled.  An exception raised in the child is raised
again here with the same class, message and attributes (TargetError,
ModelLoadError, ProtocolError, ...); a child that dies (killed, out of memory)
gives a TargetError naming its exit status.  The fork server exits with the
agent and the child with the fork server (Linux), so stopping the agent does
not leave them running.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import signal
import sys
import threading
from typing import Any, Callable

from engine.targets.settings import TargetError

__all__ = ["call_in_child", "start_fork_server"]

# engine.cli: a child started under the `layerscope` script imports that script again (multiprocessing).
_PRELOADED = ["engine.targets.cpu", "engine.bridge.backends", "engine.cli"]
# Windows has no fork server: there the function runs in the calling process (the wait comes back).
AVAILABLE = "forkserver" in multiprocessing.get_all_start_methods()
_context_lock = threading.Lock()
_context = None


def _fork_server():
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOADED)
            _context = context
        return _context


def start_fork_server() -> None:
    """Start the fork server now (it imports its modules in the background): the first load then
    does not wait for it."""
    if not AVAILABLE:
        return
    _fork_server()
    multiprocessing.forkserver.ensure_running()


def call_in_child(function: Callable[..., Any], *args: Any) -> Any:
    if not AVAILABLE:
        return function(*args)
    context = _fork_server()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, function, args), daemon=True,
                            name=f"layerscope-{function.__name__}")
    child.start()
    sender.close()
    try:
        try:
            status, payload = receiver.recv()  # waits with the GIL released
        except EOFError:
            child.join()
            reason = (f"was killed by signal {-child.exitcode}" if child.exitcode and child.exitcode < 0
                      else f"exited with status {child.exitcode} without an answer")
            raise TargetError(f"the helper process preparing the model {reason}") from None
    finally:
        receiver.close()
        if child.is_alive():
            child.join(5)
    if status == "ok":
        return payload
    raise _rebuilt(*payload)


def _rebuilt(cls: type, message: str, attributes: dict) -> BaseException:
    """The child's exception, built without calling its __init__ (whose arguments differ per class)."""
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    exc.__dict__.update(attributes)
    return exc


def _set_parent_death_signal() -> None:
    """Linux: this process is killed when its parent (the fork server) exits."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent exited before prctl took effect
        os._exit(1)


def _child_main(sender, function: Callable[..., Any], args: tuple) -> None:
    _set_parent_death_signal()
    try:
        reply = ("ok", function(*args))
    except Exception as exc:
        attributes = {k: v for k, v in vars(exc).items() if _picklable(v)}
        cls = type(exc) if _picklable(type(exc)) else TargetError
        reply = ("error", (cls, str(exc), attributes))
    sender.send(reply)
    sender.close()


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:
        return False

