"""Training throughput (samples/s) and peak memory of the drag UNet's EDM training step.

    python benchmarks/bench_training.py                                   # tiny config, CPU
    python benchmarks/bench_training.py --config small --precision bf16   # the default model's UNet
    python benchmarks/bench_training.py --config full --device cuda --precision bf16 [--checkpointing]

Random weights and synthetic latent clips; one step = forward, backward, AdamW update.
The full configuration is SVD's size (1.68 B parameters) at 256x256 (32x32 latents), 14 frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from puppet_master.pipelines.components import SIZES
from puppet_master.training import edm_loss, load_config
from puppet_master.training.data import build_mixture, collate
from puppet_master.training.trainer import build_unet

TINY = ["model.unet.block_out_channels=[32, 64, 64, 64]", "model.unet.layers_per_block=1",
        "model.unet.cross_attention_dim=32", "model.unet.num_attention_heads=[1, 2, 2, 2]",
        "model.unet.pos_embed_dim=16", "model.unet.drag_embedder_out_channels=[16, 32, 32]",
        "data.sources=[{type: synthetic, num_clips: 64, latent_size: 8, embedding_dim: 32}]"]
# the embedded default model's UNet (SIZES["small"], 4.5 M parameters) on 32x32x4 latents (256x256, 8x VAE)
SMALL = [f"model.unet.{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in SIZES["small"]["unet"].items()] + [
    "data.sources=[{type: synthetic, num_clips: 64, latent_size: 32, embedding_dim: 64}]"]
FULL = ["data.sources=[{type: synthetic, num_clips: 64, latent_size: 32, embedding_dim: 1024}]"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "small", "full"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    batch = args.batch_size or (1 if args.config == "full" else 4)
    overrides = {"tiny": TINY, "small": SMALL, "full": FULL}[args.config]
    cfg = load_config(None, overrides + [f"data.num_frames={args.frames}"])
    device = torch.device(args.device)
    torch.manual_seed(0)
    unet = build_unet(cfg).to(device)
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    data = build_mixture(cfg.data, 0)
    frame_w = torch.ones(args.frames, device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def step(i: int) -> None:
        b = collate([data[i * batch + j] for j in range(batch)])
        b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = edm_loss(unet, b, cfg, frame_w)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(1, args.steps + 1):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    if device.type == "cuda":
        mem = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    else:
        mem = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"config={args.config} device={device} precision={args.precision} checkpointing={args.checkpointing} "
          f"batch={batch} frames={args.frames} unet={params:.1f}M: {args.steps * batch / dt:.2f} samples/s "
          f"({dt / args.steps:.3f} s/step), {mem}")


if __name__ == "__main__":
    main()
