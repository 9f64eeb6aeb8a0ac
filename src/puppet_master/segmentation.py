"""Offline foreground segmentation seeded by points (no segmentation model needed).

Used by the demo to remove an image's background and by DragAnything
(:mod:`puppet_master.entity`) to find the entity under a drag's start point when the user
gives no mask.
"""

from __future__ import annotations

import cv2
import numpy as np
import PIL.Image


def grabcut_foreground(image: PIL.Image.Image, seeds: list[tuple[float, float]], iterations: int = 5) -> np.ndarray:
    """Foreground mask by OpenCV GrabCut seeded from points (e.g. drag start points).

    The image border is definite background, a disc around each seed definite
    foreground, and the rest probable background/foreground by distance to the seeds.

    Args:
        image: the image (any mode; converted to RGB).
        seeds: ``(x, y)`` points in pixels (x right, y down).
        iterations: GrabCut iterations.

    Returns:
        bool ``(H, W)``; every seed's disc is foreground. An image too small or too uniform
        for GrabCut's colour models (it needs samples of both classes) gets the seed discs
        alone.
    """
    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    if seeds:
        pts = np.asarray(seeds)
        x0, y0 = np.maximum(pts.min(0) - 0.25 * np.array([w, h]), 2).astype(int)
        x1, y1 = np.minimum(pts.max(0) + 0.25 * np.array([w, h]), [w - 3, h - 3]).astype(int)
        mask[y0:y1, x0:x1] = cv2.GC_PR_FGD
        for x, y in pts:
            cv2.circle(mask, (int(x), int(y)), max(2, w // 64), cv2.GC_FGD, -1)
    seeded = mask == cv2.GC_FGD
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # no background or no foreground samples to fit the colour models
        return seeded
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD) | seeded
