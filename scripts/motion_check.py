"""Animate the shipped example images with a pipeline and say whether the dragged part moves.

    python scripts/motion_check.py default --steps 10 --seeds 0 1

For each example in ``src/puppet_master/assets/examples`` (IMAGE.png + IMAGE-drags.json) and
each seed, prints: PSNR of frame 0 against the input (dB), how far the first drag's origin
moved between frame 0 and the last frame (pixels at 256 × 256, tracked with OpenCV DIS flow),
the drag's own length, and the median motion of background grid points more than 80 px
away from the origin — the criteria of ``tests/test_default_model.py``. Seconds per video.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import puppet_master
from puppet_master.drags import DragSet
from puppet_master.evaluation.tracking import DISTracker
from puppet_master.pipelines import load_pipeline
from puppet_master.preprocessing import load_image, prepare_input

EXAMPLES = Path(puppet_master.__file__).parent / "assets" / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="pipeline folder or 'default'")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--examples", nargs="+", default=sorted(p.stem for p in EXAMPLES.glob("*.png")))
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    for name in args.examples:
        image = load_image(EXAMPLES / f"{name}.png")
        drags = DragSet.from_json(EXAMPLES / f"{name}-drags.json", width=image.width, height=image.height, num_frames=14)
        square, model_drags, _ = prepare_input(image, drags, 256)
        ref = np.asarray(square.convert("RGB").resize((256, 256)), dtype=np.float64)
        traj = np.asarray(model_drags.trajectories, dtype=np.float64)[0]
        ys, xs = np.mgrid[8:256:16, 8:256:16]
        grid = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        far = np.linalg.norm(grid - traj[0], axis=1) > 80
        for seed in args.seeds:
            start = time.perf_counter()
            video = pipe(
                square, model_drags, num_frames=14, height=256, width=256, num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(seed), output_type="np",
            ).frames[0]
            seconds = time.perf_counter() - start
            frames = (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)
            mse = np.mean((frames[0].astype(np.float64) - ref) ** 2)
            tracks = DISTracker().track(frames, np.concatenate([traj[:1], grid[far]]))
            moved = np.linalg.norm(tracks[:, -1] - tracks[:, 0], axis=1)
            print(
                f"{name} seed {seed}: PSNR0 {10 * np.log10(255.0**2 / mse):.1f} dB, origin moved {moved[0]:.1f} px "
                f"(drag {np.linalg.norm(traj[-1] - traj[0]):.0f} px), background median {np.median(moved[1:]):.1f} px, "
                f"{seconds:.1f} s"
            )


if __name__ == "__main__":
    main()
