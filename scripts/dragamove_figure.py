"""A picture of a model on one Drag-a-Move example: input with drags, ground truth, output.

    python scripts/dragamove_figure.py ../shared/data/dragamove-test-dev/00000.pkl recipes/default-model/default-model-dragamove.png \
        [--model default] [--steps N] [--seed 0] [--frames 0,4,9,13]

Rows: the input (frame 0) with the drags drawn up to each frame, the ground-truth video,
and the model's video (``puppet-master evaluate``'s ``model`` method: the same
preprocessing, sampling settings and seed), at the chosen frames, 256 × 256 each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from puppet_master.data.splits import load_dragamove_example
from puppet_master.evaluation.runner import model_method
from puppet_master.options import PuppetMasterOptions
from puppet_master.pipelines.loading import load_pipeline
from puppet_master.video import draw_drags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("example", type=Path, help="a Drag-a-Move NNNNN.pkl (its NNNNN.gif beside it)")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", default="0,4,9,13", help="comma-separated frame indices")
    args = ap.parse_args()
    example = load_dragamove_example(args.example)
    options = PuppetMasterOptions.from_values({"steps": args.steps, "seed": args.seed})
    video = model_method(load_pipeline(args.model), options)(example)
    picks = [int(i) for i in args.frames.split(",")]
    n = len(example.frames)
    inputs = draw_drags(np.repeat(example.frames[:1], n, axis=0), example.trajectories())
    rows = [np.concatenate([v[i] for i in picks], axis=1) for v in (inputs, example.frames, video)]
    iio.imwrite(args.out, np.concatenate(rows, axis=0))
    print(f"wrote {args.out}: rows input+drags / ground truth / {args.model}, frames {picks}")


if __name__ == "__main__":
    main()
