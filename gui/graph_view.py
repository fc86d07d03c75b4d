"""The graph view: node boxes and edges of an analysed model, overlays, search, groups.

Split along what it does (the names stay importable from here):
- gui.graph_style: colours, overlay definitions, number formats;
- gui.graph_drawing: the scene (SceneData prepared in a worker, items built and torn down in
  slices, labels, overlays, look-ups);
- gui.graph_interaction: the view (zoom, pan, selection, keys, tooltips), legend, minimap;
- gui.graph_groups: collapsible groups (box text, frames of opened groups, double-click and menu).
Geometry comes from engine.layout and engine.folded_layout.
"""
from __future__ import annotations

from gui.graph_drawing import (EDGE_BATCH, GraphScene, LabelLayer, SceneData, build_in_slices,  # noqa: F401
                               prepare_scene_data, retire_scene, retiring_scenes)
from gui.graph_groups import group_lines  # noqa: F401
from gui.graph_interaction import GraphView, LegendWidget, Minimap  # noqa: F401
from gui.graph_style import *  # noqa: F401,F403
from gui.graph_style import _type_text  # noqa: F401
