"""A level with few boxes but long edges goes to the layout executor (the helper process in the app):
igraph lays out every dummy vertex of a long edge, and holds the GIL all the while."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine import layout as layout_module


class _CountingExecutor(ThreadPoolExecutor):
    """A real executor that remembers what it was given (stands for the helper process)."""

    def __init__(self):
        super().__init__(max_workers=1)
        self.submitted = []

    def submit(self, function, *args, **kwargs):
        self.submitted.append(function.__name__)
        return super().submit(function, *args, **kwargs)


def _chain(last_layer: int):
    """Four vertices in a chain, the last edge spanning layers 2 .. last_layer."""
    return 4, np.array([[0, 1], [1, 2], [2, 3]], dtype=np.int64), np.array([0, 1, 2, last_layer], dtype=np.int64)


def test_a_level_of_few_boxes_with_long_edges_is_laid_out_by_the_executor():
    executor = _CountingExecutor()
    layout_module.set_layout_executor(executor)
    try:
        short = layout_module._sugiyama(*_chain(3))
        assert executor.submitted == []  # 4 vertices, no dummies: here, as before
        long = layout_module._sugiyama(*_chain(layout_module.LAYOUT_OFFLOAD_VERTICES + 10))
        assert executor.submitted == ["sugiyama_columns"]
    finally:
        layout_module.set_layout_executor(None)
        executor.shutdown()
    assert short is not None and long is not None
    columns, _ = long
    assert len(columns) == 4 and np.isfinite(columns).all()
    # The executor's answer is what the in-process call gives.
    here_columns, here_routes = layout_module._sugiyama(*_chain(layout_module.LAYOUT_OFFLOAD_VERTICES + 10))
    assert np.array_equal(here_columns, columns)
