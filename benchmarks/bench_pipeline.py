"""Seconds per video and peak memory of PuppetMasterPipeline.

    python benchmarks/bench_pipeline.py                       # tiny config on CPU (random weights)
    python benchmarks/bench_pipeline.py --config default      # the embedded default model (trained)
    python benchmarks/bench_pipeline.py --config full --device cuda --dtype bf16   # needs a GPU

Prints one line per configuration. The full-size configuration (SVD-img2vid sizes,
1.68 B UNet parameters) is built directly on the device with random weights, so it
measures speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import PIL.Image
import torch

from puppet_master.drags import DragSet
from puppet_master.pipelines import PuppetMasterPipeline, build_components

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "small", "full", "default"], default="tiny",
                    help="random-weight sizes, or 'default': the shipped default model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()
    if args.config == "default":
        from puppet_master.pipelines.loading import load_pipeline

        pipe = load_pipeline("default", device=device, torch_dtype=dtype)
    else:
        with torch.device(device):
            comps = build_components(args.config, seed=0)
        pipe = PuppetMasterPipeline(**comps).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    s = args.size
    drags = DragSet.from_pairs([((0.3 * s, 0.5 * s), (0.6 * s, 0.4 * s)), ((0.7 * s, 0.7 * s), (0.7 * s, 0.9 * s))], s, s, args.frames)
    kwargs = dict(num_frames=args.frames, height=s, width=s, num_inference_steps=args.steps, output_type="np",
                  decode_chunk_size=args.frames)

    # warm-up (1 step) then timed runs
    pipe(image, drags, **{**kwargs, "num_inference_steps": 1})
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for r in range(args.repeats):
        t = time.perf_counter()
        pipe(image, drags, generator=torch.Generator().manual_seed(r), **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        mem = f"peak GPU memory {peak:.2f} GiB"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        mem = f"peak RSS {peak:.2f} GiB"
    unet_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(
        f"config={args.config} device={device} dtype={args.dtype} size={s} frames={args.frames} steps={args.steps} "
        f"threads={torch.get_num_threads()} unet={unet_params:.1f}M params: "
        f"{np.median(times):.2f} s/video (median of {len(times)}), {mem}, build {build_s:.1f} s"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
