"""Inputs shared by the methods of ``animate``: the drags of ``--drag`` / ``--drags-json``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import UserInputError


def read_drags(drags: list[str], drags_json: Optional[Path], width: int, height: int, num_frames: int,
               max_drags: Optional[int] = None):
    """The drags of ``--drag`` or ``--drags-json`` as a ``DragSet`` in pixels of a ``width × height`` image.

    Args:
        drags: ``--drag`` values, ``"X0,Y0:X1,Y1"`` in pixels of the input image (x right,
            y down, origin top-left).
        drags_json: ``--drags-json`` file (README "Drag formats").
        width, height: the input image's size in pixels.
        num_frames: frames of the video (trajectories are resampled to it).
        max_drags: most drags accepted; Puppet-Master's ``K_MAX`` (5) by default.

    Raises:
        UserInputError: both or neither given, or a malformed drag.
    """
    from ..drags import K_MAX, DragSet, parse_drag_argument

    max_drags = K_MAX if max_drags is None else max_drags
    if drags and drags_json is not None:
        raise UserInputError("give drags either with --drag or with --drags-json, not both")
    if drags_json is not None:
        return DragSet.from_json(drags_json, width=width, height=height, num_frames=num_frames, max_drags=max_drags)
    if drags:
        return DragSet.from_pairs([parse_drag_argument(d) for d in drags], width, height, num_frames=num_frames,
                                  max_drags=max_drags)
    raise UserInputError("no drags given: add --drag X0,Y0:X1,Y1 (pixels of the input image) or --drags-json FILE")
