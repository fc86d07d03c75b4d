"""Big models open folded, and a node inside a collapsed group is reached by opening its groups.

The decisions (threshold, which groups start collapsed, which groups hold a node) are
engine.grouping's; this module applies them to the window's LoadedModel and layout.
"""
from __future__ import annotations

from typing import Optional

from engine.grouping import (block_family_of, compare_blocks, enclosing_groups, fold_threshold,
                             folded_start, innermost_group, member_text, namespace_groups, opens_folded,
                             repeated_blocks)


def open_folded(loaded, include_constants: bool, progress=None):
    """`loaded` (a gui.app.LoadedModel without layout) grouped by namespace with its groups
    collapsed, if it is above the fold threshold and has namespaces; else None."""
    from gui.app import relayout

    analysis = loaded.analysis
    if not opens_folded(analysis):
        return None
    if progress:
        progress("Grouping…")
    groups = namespace_groups(analysis)
    if not groups:
        return None  # no scopes: laid out whole (stages would give a handful of huge groups)
    loaded.grouping, loaded.groups = "namespace", groups
    result = relayout(loaded, include_constants, progress, None, folded_start(groups, analysis))
    # The labels of the boxes that are nodes read graph.node: its index of every node is built here,
    # not by the first paint on the UI thread (a 30-50 ms turn at 100,000 nodes, measured).
    analysis.graph.nodes_by_id  # noqa: B018 (a cached property, made for its side effect)
    result.note = (f"{analysis.totals.compute_nodes:,} nodes: opened folded by namespace (above "
                   f"{fold_threshold():,}); double-click a group to open it")
    return result


def folded_layouts(loaded, groups, include_constants: bool):
    """The engine.folded_layout.FoldedLayouts of `loaded` for these groups and constants: the one
    it carries when they match (its groups' layouts are reused), else a new one.  Called by every
    folded relayout (in its worker): the background preparation of group opens stops first."""
    from engine.folded_layout import FoldedLayouts

    cancel_preparation()
    cached = loaded.folded_layouts
    if cached is not None and cached.groups is groups and cached.include_constants == include_constants \
            and cached.analysis is loaded.analysis:
        return cached
    return FoldedLayouts(loaded.analysis, groups, include_constants)


# --- first opens prepared in the background --------------------------------------------------
# After a folded model is shown, the groups drawn collapsed are laid out and composed opened in a
# background thread (FoldedLayouts.prepare_opens), so the first open of a block costs what a
# reopen does (~0.01 s of engine work instead of ~0.1 s at 100,000 nodes).  It starts after
# PREPARE_DELAY_MS (the first paint is not slowed), stops at the next relayout or model open (the
# open runs alone and the preparation starts again once it is shown), and holds collection off
# while it runs (a full collection in it would stall the UI thread like one in an open).
PREPARE_DELAY_MS = 300
PREPARE_REST_S = 0.05
_preparation: Optional[tuple] = None  # (thread, stop event, FoldedLayouts) of the running one


def prepare_group_opens(loaded) -> None:
    """Start preparing, in a background thread, the first opens of the groups `loaded` draws
    collapsed (top to bottom); a preparation running for another model stops."""
    import threading
    import time

    cancel_preparation()
    folded = getattr(loaded, "folded_layouts", None)
    if folded is None or loaded.layout is None:
        return
    todo = [box for box in loaded.layout.boxes if box in loaded.collapsed and box in loaded.groups]
    if not todo:
        return
    stop = threading.Event()

    def run():
        from gui.responsive import hold_gc, release_gc

        if stop.wait(PREPARE_DELAY_MS / 1000):
            return
        last = [time.perf_counter()]

        def paused_or_stopped() -> bool:
            # Between steps, rest as long as the step ran (at most PREPARE_REST_S): the UI thread
            # then has the GIL at least half the time and its paints stay near their usual cost.
            stopped = stop.wait(min(time.perf_counter() - last[0], PREPARE_REST_S))
            last[0] = time.perf_counter()
            return stopped

        hold_gc()
        try:
            folded.prepare_opens(todo, paused_or_stopped)
        finally:
            release_gc()

    global _preparation
    thread = threading.Thread(target=run, name="prepare group opens", daemon=True)
    _preparation = (thread, stop, folded)
    thread.start()


def cancel_preparation() -> None:
    """Stop the background preparation of group opens (it ends after its current step)."""
    global _preparation
    if _preparation is not None:
        _preparation[1].set()
        _preparation = None


def preparation_running() -> bool:
    """Whether a background preparation of group opens is still at work (benchmarks wait for it)."""
    found = _preparation
    return found is not None and found[0].is_alive()


# Scene data of the last few composed layouts of a model: opening a group again draws the layout
# composed for it before (engine.folded_layout keeps it), and its labels and edge paths with it.
SCENE_DATA_KEPT = 8


def folded_scene_data(loaded):
    """gui.graph_drawing.prepare_scene_data of `loaded` (a folded LoadedModel), made once per
    composed layout; each caller gets its own label lines (a scene rewrites them per profile)."""
    from dataclasses import replace

    from gui.graph_drawing import prepare_scene_data

    kept = loaded.folded_layouts.annotations.setdefault("scene_data", {})
    found = kept.get(id(loaded.layout))
    if found is None or found[0] is not loaded.layout:
        data = prepare_scene_data(loaded)
        # Kept unread: each caller gets a copy, whose text is made as its scene paints it (a list
        # of every box's lines made them all, ~10 ms of each first open of a block).
        found = kept[id(loaded.layout)] = (loaded.layout, data, data.lines.copy())
        while len(kept) > SCENE_DATA_KEPT:
            kept.pop(next(iter(kept)))
    return replace(found[1], lines=found[2].copy(), rects=found[1].rects.copy())


_member_cache: tuple[Optional[object], dict] = (None, {})


def innermost_of_model(loaded) -> dict:
    """node id -> its deepest group, for the groups of `loaded`: looked up in its folded layouts'
    arrays when it has them, else engine.grouping.innermost_group (kept per groups)."""
    folded = getattr(loaded, "folded_layouts", None)
    if folded is not None and folded.groups is loaded.groups:
        return folded.innermost()
    return _innermost(loaded.groups)


def _innermost(groups) -> dict:
    """innermost_group(groups), kept for the groups of the open model (a scan of every member)."""
    global _member_cache
    if _member_cache[0] is not groups:
        _member_cache = (groups, innermost_group(groups))
    return _member_cache[1]


def open_groups_to(window, node_id: str) -> bool:
    """If `node_id` is drawn inside a collapsed group, open that group and every collapsed group
    around it, then select the node; True when a relayout was started for it."""
    loaded = window.loaded
    if loaded is None or not loaded.groups or loaded.layout is None:
        return False
    metrics = loaded.analysis.nodes.get(node_id)
    if metrics is None or (metrics.is_constant and not loaded.include_constants):
        return False  # not a node, or a folded constant: it has no box of its own to open to
    if loaded.layout.box_of(node_id) not in loaded.groups:
        return False  # drawn already
    closed = [g for g in enclosing_groups(node_id, loaded.groups, innermost_of_model(loaded))
              if g in loaded.collapsed]
    if not closed:
        return False
    window._on_node_selected(node_id)  # the inspector shows it while its groups open
    window._focus_after_build = node_id
    window._relayout_groups(loaded.collapsed - set(closed), f"Opening {loaded.groups[closed[-1]].name}")
    return True


_family_cache: tuple[Optional[object], list] = (None, [])


def repeated_block_text(loaded, group_id: str, profile=None) -> Optional[str]:
    """What the inspector says about a group that is one of a family of repeated blocks: with a
    profile, its time against the median block (engine.grouping.member_text)."""
    global _family_cache
    if _family_cache[0] is not loaded.groups:
        _family_cache = (loaded.groups, repeated_blocks(loaded.groups, loaded.analysis))
    family = block_family_of(group_id, _family_cache[1])
    if family is None:
        return None
    return member_text(family, compare_blocks(family, loaded.groups, loaded.analysis, profile), group_id,
                       profile is not None)
