"""Seconds per video, UNet time per forward, kernels per forward and peak memory of PuppetMasterPipeline.

    python benchmarks/bench_pipeline.py                                  # tiny config on CPU (random weights)
    python benchmarks/bench_pipeline.py --config default                 # the embedded default model (trained)
    python benchmarks/bench_pipeline.py --config tiny --compile          # torch.compile'd UNet (CPU works)
    python benchmarks/bench_pipeline.py --config full --device cuda --dtype bf16 [--cuda-graph] [--compile]

Per configuration it prints: seconds per video (end to end: image encoder, VAE encode,
the denoising loop with CFG, VAE decode), the UNet's time per forward at CFG batch 2,
kernels launched per forward (CUDA; on a CPU the number of aten ops), peak memory, and the
ratio of the UNet's forward time to that of diffusers' ``UNetSpatioTemporalConditionModel``
of the same size (SVD's UNet without drags) measured in the same run: the price of the
drag conditioning. The full-size configuration (SVD-img2vid sizes, 1.68 B UNet
parameters) gets random weights, allocated directly on the device: it measures speed and
memory, not quality. Figures with date, machine and commit belong in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import bench_lib as bl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny",
                    help="random-weight sizes (tiny, small, full), 'default': the shipped default model, or a "
                         "pipeline folder (e.g. a distilled student)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["auto", *sorted(bl.DTYPES)], default="auto",
                    help="weights and compute dtype; auto = what `puppet-master animate` picks: bf16 on a CPU with "
                         "native bf16 (AVX512-BF16/AMX), else fp32")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--steps", type=int, default=None,
                    help="sampling steps (default: the model's setting, else the paper's 50)")
    ap.add_argument("--repeats", type=int, default=1, help="timed videos (median reported)")
    ap.add_argument("--unet-repeats", type=int, default=None, help="timed UNet forwards (default 20 on CUDA, 3 on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (fullgraph)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    ap.add_argument("--cuda-graph", action="store_true", help="replay the denoising step's UNet call from a CUDA graph")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the SVD-UNet comparison")
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc's malloc at its defaults (by default the CPU run keeps freed memory, as "
                         "`puppet-master animate` does: puppet_master.runtime.keep_freed_memory)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        from puppet_master.runtime import configure_cpu

        configure_cpu(args.threads, keep_memory=not args.malloc_default)
    elif args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype == "auto":
        from puppet_master.runtime import auto_dtype

        args.dtype = "bf16" if auto_dtype(str(device)) is not None else "fp32"
    dtype = bl.DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    pipe = bl.build_pipeline(args.config, device, dtype)
    build_s = time.perf_counter() - t0
    path = "eager"
    if args.compile:
        pipe.enable_compile(mode=args.compile_mode)
        path = f"compiled({args.compile_mode or 'default'})"
    if args.cuda_graph:
        pipe.enable_cuda_graph()
        path += "+cuda-graph"

    settings = pipe.sampling_settings(num_inference_steps=args.steps)
    args.steps = settings["num_inference_steps"]
    image, drags = bl.example_inputs(args.size, args.frames)
    kwargs = dict(num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
                  output_type="np")
    t = time.perf_counter()
    pipe(image, drags, **{**kwargs, "num_inference_steps": 1})  # warm-up (and compile / graph capture)
    bl.sync(device)
    warm_s = time.perf_counter() - t
    bl.reset_peak(device)
    times = [bl.time_call(lambda r=r: pipe(image, drags, generator=torch.Generator().manual_seed(r), **kwargs),
                          device, 1, warmup=0)[0] for r in range(args.repeats)]
    peak = bl.peak_gib(device)
    mem = f"peak {'GPU memory' if device.type == 'cuda' else 'RSS'} {peak:.2f} GiB"

    # the UNet alone: one CFG step (batch 2) through the pipeline's own call path
    unet = pipe.unet
    h = w = args.size // pipe.vae_scale_factor
    inp = bl.unet_inputs(unet, 2, args.frames, h, w, device, dtype)
    drags_t = inp.pop("drags")
    cond = unet.prepare_drag_conditioning(drags_t, h, w, image_latents=inp["image_latents"], precompute_modulation=True)
    call = pipe._graphed_unet or pipe._unet_call
    reps = args.unet_repeats or (20 if device.type == "cuda" else 3)
    with torch.no_grad():
        fwd = lambda: call(inp["sample"], inp["timestep"][0], inp["image_latents"], inp["encoder_hidden_states"], cond)  # noqa: E731
        unet_s = bl.median(bl.time_call(fwd, device, reps, warmup=2))
        kernels, ops = bl.count_kernels(lambda: unet(**inp, drag_conditioning=cond), device)

        ratio = ""
        if not args.no_baseline and args.config in (*bl.SIZE_CONFIGS, "default"):
            svd = bl.build_svd_unet(args.config, device, dtype)
            if args.compile:
                svd.compile(mode=args.compile_mode, fullgraph=False)
            sinp = bl.svd_unet_inputs(svd, 2, args.frames, h, w, device, dtype)
            sfwd = lambda: svd(**sinp)  # noqa: E731
            if args.cuda_graph and device.type == "cuda":
                sfwd = bl.cuda_graphed(sfwd, device)
            svd_s = bl.median(bl.time_call(sfwd, device, reps, warmup=2))
            svd_kernels, svd_ops = bl.count_kernels(lambda: svd(**sinp), device)
            svd_count = f"{svd_kernels} kernels" if svd_kernels is not None else f"{svd_ops} aten ops"
            ratio = (f"; SVD UNet (same size, no drags, same path): {svd_s * 1e3:.1f} ms, {svd_count} "
                     f"-> drag UNet / SVD UNet = {unet_s / svd_s:.2f}")
            del svd

    params = sum(p.numel() for p in unet.parameters()) / 1e6
    count = f"{kernels} kernels/forward" if kernels is not None else f"kernels n/a on CPU ({ops} aten ops/forward)"
    print(
        f"config={args.config} device={device} dtype={args.dtype} path={path} size={args.size} frames={args.frames} "
        f"steps={args.steps} cfg={'yes' if settings['max_guidance_scale'] > 1 else 'no'} "
        f"warped-start={settings['warp_init_sigma']} threads={torch.get_num_threads()} "
        f"malloc={'default' if args.malloc_default or device.type != 'cpu' else 'keep-freed'} unet={params:.1f}M params\n"
        f"  pipeline: {bl.median(times):.2f} s/video (median of {len(times)}), {mem}; build {build_s:.1f} s, "
        f"warm-up (1 step{', compile' if args.compile else ''}) {warm_s:.1f} s\n"
        f"  UNet forward, CFG batch 2: {unet_s * 1e3:.1f} ms (median of {reps}), {count}{ratio}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
