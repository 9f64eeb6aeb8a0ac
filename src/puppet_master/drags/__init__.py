"""Drags: typed trajectories, the model tensor layout, de-duplication and encoding (docs/design.md §2, §3, §6)."""

from .core import (
    DEFAULT_NUM_FRAMES,
    K_MAX,
    DragSet,
    deduplicate_trajectories,
    parse_drag_argument,
    read_drags_json,
    stack_drag_tensors,
)
from .encoding import CHANNELS_PER_DRAG, encode_drags, used_drag_slots

__all__ = [
    "CHANNELS_PER_DRAG",
    "DEFAULT_NUM_FRAMES",
    "K_MAX",
    "DragSet",
    "deduplicate_trajectories",
    "encode_drags",
    "parse_drag_argument",
    "read_drags_json",
    "stack_drag_tensors",
    "used_drag_slots",
]
