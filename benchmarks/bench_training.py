"""Training throughput (samples/s) and peak memory of the drag UNet's EDM training step.

    python benchmarks/bench_training.py                                     # tiny config, CPU
    python benchmarks/bench_training.py --config small --precision bf16     # the default model's UNet
    python benchmarks/bench_training.py --config full --device cuda         # SVD size, bf16 + checkpointing
    python benchmarks/bench_training.py --config full --device cuda --batch-size 4 --optimizer adamw8bit

Random fp32 weights (allocated directly on the device) and synthetic latent clips; one
step = forward and backward under bf16/fp16 autocast (or fp32), gradient clipping and an
AdamW update, as ``puppet-master train`` runs it (``mixed_precision`` and
``gradient_checkpointing`` in the config). The full configuration is SVD's size (1.68 B
parameters) at 256x256 (32x32 latents), 14 frames.
"""

from __future__ import annotations

import argparse

import torch

import bench_lib as bl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "small", "full"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                    help="autocast dtype (default: bf16 for full, fp32 otherwise)")
    ap.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                    help="gradient checkpointing (default: on for full)")
    ap.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default="adamw")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 1 for full, 4 otherwise")
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps (median reported)")
    args = ap.parse_args()
    full = args.config == "full"
    fig = bl.training_figures(
        args.config, torch.device(args.device), args.batch_size or (1 if full else 4),
        precision=args.precision or ("bf16" if full else "fp32"),
        checkpointing=args.checkpointing if args.checkpointing is not None else full,
        steps=args.steps, frames=args.frames, optimizer=args.optimizer,
    )
    mem = "GPU memory" if args.device.startswith("cuda") else "RSS"
    print(f"config={fig['config']} device={args.device} precision={fig['precision']} checkpointing={fig['checkpointing']} "
          f"optimizer={fig['optimizer']} batch={fig['batch']} frames={fig['frames']} unet={fig['params_m']:.1f}M: "
          f"{fig['samples_per_s']:.2f} samples/s ({fig['s_per_step']:.3f} s/step, median of {args.steps}), "
          f"peak {mem} {fig['peak_gib']:.2f} GiB; loss: {fig['loss']}")


if __name__ == "__main__":
    main()
