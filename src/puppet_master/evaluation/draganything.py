"""DragAnything as a method of the Drag-a-Move evaluation (docs/design.md §7).

Each example's first frame (256×256) is resized to the DragAnything model's resolution
(576×320 for the released weights), the drags scaled with it, the video generated there
and resized back to 256×256, as the Puppet-Master paper did for its baselines. Drag-a-Move
gives no entity masks: each drag's entity is segmented around its start point with the
offline GrabCut fallback (:func:`puppet_master.entity.segment_entities`).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import PIL.Image

from ..data.splits import EvalExample
from ..drags import DragSet
from ..options import DragAnythingOptions
from ..video import to_uint8_frames

Generator = Callable[[EvalExample], np.ndarray]


def draganything_method(pipe, options: DragAnythingOptions | None = None, dift_ensemble_size: int = 8) -> Generator:
    """A generator running a :class:`~puppet_master.pipelines.DragAnythingPipeline` on an example.

    Args:
        pipe: the loaded pipeline.
        options: resolution (the model's working size; the release: 576 × 320) and
            sampling settings (the release's: 25 Euler steps, CFG weight 3 at the last
            frame); default :class:`~puppet_master.options.DragAnythingOptions`'s.
        dift_ensemble_size: noised copies averaged for the entity features (8).

    Returns:
        ``f(example) -> uint8 (N, S, S, 3)`` at the example's size ``S``.
    """
    options = options or DragAnythingOptions()
    width, height = options.size

    def run(example: EvalExample) -> np.ndarray:
        n, s = example.frames.shape[:2]
        drags = DragSet.from_tensor(example.drags, s, s)
        out = pipe(PIL.Image.fromarray(example.frames[0]), drags, masks=None, num_frames=n, height=height, width=width,
                   dift_ensemble_size=dift_ensemble_size, output_type="np", **options.call_kwargs()).frames[0]
        video = to_uint8_frames(out)
        return np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_AREA) for f in video])

    return run
