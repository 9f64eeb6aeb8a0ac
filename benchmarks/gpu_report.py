"""The GPU speed table of the full-size Puppet-Master pipeline, in one run that fits a time budget.

    python benchmarks/gpu_report.py --budget-s 240                              # on an H100/H200
    python benchmarks/gpu_report.py --config tiny --device cpu --steps 2 --budget-s 600   # dry run on a CPU

Measures, with random weights of SVD-img2vid's size (1.68 B UNet parameters, built on
``meta`` and allocated on the GPU in seconds), 14 frames at 256x256, CFG:

* the pipeline's seconds per video at 50 Euler steps, fp16 and bf16, eager and with the
  CUDA-graph fast path (``pipe.enable_cuda_graph()``);
* the few-step path of a consistency-distilled student (4 steps without CFG, fp16, eager and
  graphed; the weights do not change the speed, so the random UNet stands in);
* the UNet's milliseconds per forward (CFG batch 2): eager, CUDA-graph replay, and
  ``torch.compile`` (fullgraph, default mode; compile time reported) with and without
  graph replay; kernels launched per forward; peak memory;
* diffusers' ``UNetSpatioTemporalConditionModel`` of the same size (SVD's UNet, no drags),
  eager and graphed: the ratio is the price of the drag conditioning;
* full-size training steps (fp32 weights, bf16 autocast, gradient checkpointing, AdamW)
  at batch 1 and 4: seconds per step, samples/s, peak memory.

Parts run in that order of priority; before each part the remaining budget is checked
against its estimated cost and the part is skipped with a note when it does not fit; a
watchdog ends the process when the budget is spent. Results are written after every
part to ``$OUT/gpu_report.json`` and ``$OUT/gpu_report.md`` (``--out`` or the ``OUT``
environment variable; default ``./gpu-report``) and printed as they come.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

import bench_lib as bl


class Report:
    """Collects figures, writes JSON + markdown after every update, knows the remaining budget."""

    def __init__(self, out_dir: Path, budget_s: float, meta: dict) -> None:
        self.out_dir = out_dir
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.data = {"meta": meta, "figures": {}, "notes": []}
        self.rows: list[tuple[str, str]] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        self.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def fits(self, part: str, cost_s: float) -> bool:
        if self.left() >= cost_s:
            return True
        self.note(f"skipped {part}: needs about {cost_s:.0f} s, {self.left():.0f} s of the budget left")
        return False

    def add(self, key: str, value, row: tuple[str, str] | None = None) -> None:
        self.data["figures"][key] = value
        if row is not None:
            self.rows.append(row)
            print(f"| {row[0]} | {row[1]} |", flush=True)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(f"[{self.elapsed():.0f} s] {text}")
        print(f"note: {text}", flush=True)
        self.flush()

    def flush(self) -> None:
        self.data["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        (self.out_dir / "gpu_report.json").write_text(json.dumps(self.data, indent=1, default=str))
        meta = self.data["meta"]
        lines = [
            f"# Puppet-Master GPU report ({meta['config']} config)",
            "",
            f"{meta['date']}, {meta['device_name']}, torch {meta['torch']}, diffusers {meta['diffusers']}, "
            f"commit {meta['commit']}; {meta['frames']} frames, {meta['size']}x{meta['size']}, {meta['steps']} Euler steps, "
            f"CFG; random weights. Elapsed {meta['elapsed_s']} s of a {self.budget_s:.0f} s budget.",
            "",
            "| what | figure |",
            "|---|---|",
            *[f"| {a} | {b} |" for a, b in self.rows],
        ]
        if self.data["notes"]:
            lines += ["", "Notes:", "", *[f"- {n}" for n in self.data["notes"]]]
        (self.out_dir / "gpu_report.md").write_text("\n".join(lines) + "\n")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - no git on the machine
        return "unknown"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _safe_count(report: Report, fn, device) -> tuple:
    """``(kernels, aten ops, GPU busy ms)`` of one call, or Nones with a note when the profiler fails."""
    try:
        return bl.profile_call(fn, device)
    except Exception as exc:  # noqa: BLE001 - a profiler problem must not cost the timing figures
        report.note(f"kernel count failed: {type(exc).__name__}: {str(exc)[:200]}")
        return None, None, None


def _run_part(report: Report, name: str, fn) -> None:
    t = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one part failing must not lose the others
        report.note(f"{name} failed after {time.perf_counter() - t:.0f} s: {type(exc).__name__}: {str(exc)[:300]}")
        traceback.print_exc()
    else:
        print(f"[{report.elapsed():.0f} s] {name} done in {time.perf_counter() - t:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "full"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget-s", type=float, default=240.0, help="wall-clock budget of the whole script")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--student-steps", type=int, default=4, help="steps of the few-step (distilled) sampling path")
    ap.add_argument("--frames", type=int, default=14)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--unet-repeats", type=int, default=10, help="timed UNet forwards per figure")
    ap.add_argument("--train-steps", type=int, default=3, help="timed optimizer steps per training figure")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager for a quick CPU dry run)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: unet,pipeline,student,svd,bf16,train,channels_last,compile")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-report"))
    ap.add_argument("--commit", default=None, help="commit measured (default: git rev-parse, if the tree is a clone)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import diffusers
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta = dict(
        config=args.config, date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), commit=args.commit or _commit(),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, diffusers=diffusers.__version__, python=platform.python_version(),
        frames=args.frames, size=args.size, steps=args.steps, budget_s=args.budget_s,
    )
    report = Report(Path(args.out), args.budget_s, meta)
    print(f"gpu_report: {meta}", flush=True)

    def watchdog() -> None:
        report.note("budget spent: stopped here (figures above are complete)")
        sys.stdout.flush()
        os._exit(0)

    timer = threading.Timer(args.budget_s, watchdog)
    timer.daemon = True
    timer.start()

    gpu = device.type == "cuda"
    scale = 1.0 if gpu and args.config == "full" else 0.0  # cost estimates only matter for the real run
    frames, size, steps = args.frames, args.size, args.steps
    image, drags = bl.example_inputs(size, frames)
    call_kwargs = dict(num_frames=frames, height=size, width=size, num_inference_steps=steps, output_type="np")
    state: dict = {}

    def ms(x: float) -> str:
        return f"{x * 1e3:.1f} ms"

    # ------------------------------------------------------------------ parts
    def build(dtype_name: str) -> None:
        t = time.perf_counter()
        state["pipe"] = bl.build_pipeline(args.config, device, bl.DTYPES[dtype_name])
        bl.sync(device)
        report.add(f"build_s_{dtype_name}", time.perf_counter() - t)

    def unet_parts(dtype_name: str) -> None:
        pipe = state["pipe"]
        unet = pipe.unet
        h = w = size // pipe.vae_scale_factor
        inp = bl.unet_inputs(unet, 2, frames, h, w, device, bl.DTYPES[dtype_name])
        dr = inp.pop("drags")
        with torch.no_grad():
            cond = unet.prepare_drag_conditioning(dr, h, w, image_latents=inp["image_latents"], precompute_modulation=True)
            args_ = (inp["sample"], inp["timestep"][0], inp["image_latents"], inp["encoder_hidden_states"], cond)
            bl.reset_peak(device)
            eager = bl.median(bl.time_call(lambda: pipe._unet_call(*args_), device, args.unet_repeats, warmup=2))
            peak = bl.peak_gib(device)
            report.add(f"unet_eager_ms_{dtype_name}", eager * 1e3,
                       (f"UNet forward, CFG batch 2, {dtype_name}, eager", f"{ms(eager)}, peak {peak:.2f} GiB"))
            if dtype_name == "fp16":
                kernels, ops, busy = _safe_count(report, lambda: pipe._unet_call(*args_), device)
                report.add("kernels_per_forward_eager", kernels,
                           ("kernels per UNet forward (eager)",
                            f"{kernels} ({ops} aten ops); GPU busy {busy if busy is None else round(busy, 1)} ms "
                            f"of {ms(eager)} wall"))
                report.add("gpu_busy_ms_eager", busy)
            from puppet_master.pipelines.cuda_graph import GraphedUNet

            runner = GraphedUNet(unet)
            t = time.perf_counter()
            runner(*args_)
            bl.sync(device)
            capture = time.perf_counter() - t
            graphed = bl.median(bl.time_call(lambda: runner(*args_), device, args.unet_repeats, warmup=1))
            report.add(f"unet_graph_ms_{dtype_name}", graphed * 1e3,
                       (f"UNet forward, CFG batch 2, {dtype_name}, CUDA graph", f"{ms(graphed)} "
                        f"({eager / graphed:.2f}x eager; warm-up + capture {capture:.1f} s)"))
            state[f"unet_{dtype_name}"] = (eager, graphed)
            runner.reset()

    def channels_last_part() -> None:
        """Eager UNet with channels-last 2-D convolution weights (cuDNN's preferred layout), then restored."""
        pipe = state["pipe"]
        unet = pipe.unet
        convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
        for m in convs:
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        try:
            h = w = size // pipe.vae_scale_factor
            inp = bl.unet_inputs(unet, 2, frames, h, w, device, torch.float16)
            dr = inp.pop("drags")
            with torch.no_grad():
                cond = unet.prepare_drag_conditioning(dr, h, w, image_latents=inp["image_latents"], precompute_modulation=True)
                args_ = (inp["sample"], inp["timestep"][0], inp["image_latents"], inp["encoder_hidden_states"], cond)
                t = bl.median(bl.time_call(lambda: pipe._unet_call(*args_), device, args.unet_repeats, warmup=2))
                kernels, _, busy = _safe_count(report, lambda: pipe._unet_call(*args_), device)
            base = state.get("unet_fp16", (float("nan"),))[0]
            report.add("unet_eager_ms_fp16_channels_last", t * 1e3,
                       ("UNet forward, CFG batch 2, fp16, eager, channels-last conv weights",
                        f"{ms(t)} ({base / t:.2f}x the contiguous eager), {kernels} kernels, GPU busy {busy} ms"))
        finally:
            for m in convs:
                m.weight.data = m.weight.data.contiguous()

    def pipeline_parts(dtype_name: str) -> None:
        pipe = state["pipe"]
        for fast in (False, True):
            label = "CUDA graph" if fast else "eager"
            if fast:
                pipe.enable_cuda_graph()
            pipe(image, drags, **{**call_kwargs, "num_inference_steps": 2})  # warm-up (+ capture)
            bl.reset_peak(device)
            sec = bl.time_call(lambda: pipe(image, drags, generator=torch.Generator().manual_seed(0), **call_kwargs),
                               device, 1, warmup=0)[0]
            peak = bl.peak_gib(device)
            report.add(f"pipeline_s_{dtype_name}_{'graph' if fast else 'eager'}", sec,
                       (f"pipeline, {dtype_name}, {label}, end to end", f"**{sec:.2f} s/video**, peak {peak:.2f} GiB"))
        pipe.disable_cuda_graph()

    def few_step_parts(dtype_name: str) -> None:
        """The few-step student's sampling path: ``--student-steps`` steps without CFG (batch 1 per step).

        Speed does not depend on the weights, so the random full-size UNet stands in for a
        distilled one (training/consistency.py); eager and with CUDA-graph replay.
        """
        pipe = state["pipe"]
        few = {**call_kwargs, "num_inference_steps": args.student_steps, "max_guidance_scale": 1.0}
        for fast in (False, True):
            label = "CUDA graph" if fast else "eager"
            if fast:
                pipe.enable_cuda_graph()
            pipe(image, drags, **{**few, "num_inference_steps": 1})  # warm-up (+ capture)
            sec = bl.median(bl.time_call(lambda: pipe(image, drags, generator=torch.Generator().manual_seed(0), **few),
                                         device, 3, warmup=0))
            report.add(f"student_s_{dtype_name}_{'graph' if fast else 'eager'}", sec,
                       (f"few-step path: {args.student_steps} steps, no CFG, {dtype_name}, {label}, end to end",
                        f"**{sec:.3f} s/video**"))
        pipe.disable_cuda_graph()

    def svd_parts(dtype_name: str, graph: bool) -> None:
        svd = bl.build_svd_unet(args.config, device, bl.DTYPES[dtype_name])
        h = w = size // 8
        sinp = bl.svd_unet_inputs(svd, 2, frames, h, w, device, bl.DTYPES[dtype_name])
        ours_eager, ours_graph = state.get(f"unet_{dtype_name}", (float("nan"), float("nan")))
        with torch.no_grad():
            fwd = lambda: svd(**sinp)  # noqa: E731
            if not graph:
                eager = bl.median(bl.time_call(fwd, device, args.unet_repeats, warmup=2))
                kernels, ops, _ = _safe_count(report, fwd, device)
                report.add(f"svd_unet_eager_ms_{dtype_name}", eager * 1e3,
                           (f"SVD UNet (same size, no drags), {dtype_name}, eager",
                            f"{ms(eager)}, {kernels} kernels ({ops} aten ops); drag UNet / SVD UNet = {ours_eager / eager:.2f}"))
                report.add("svd_kernels_per_forward", kernels)
            elif gpu:
                replay = bl.cuda_graphed(fwd, device)
                graphed = bl.median(bl.time_call(replay, device, args.unet_repeats, warmup=1))
                report.add(f"svd_unet_graph_ms_{dtype_name}", graphed * 1e3,
                           (f"SVD UNet (same size, no drags), {dtype_name}, CUDA graph",
                            f"{ms(graphed)}; drag UNet / SVD UNet = {ours_graph / graphed:.2f}"))
                del replay
        del svd

    def train_parts(batch: int) -> None:
        fig = bl.training_figures(args.config, device, batch, precision="bf16", checkpointing=True,
                                  steps=args.train_steps, frames=frames)
        report.add(f"train_b{batch}", fig,
                   (f"training step, batch {batch} (fp32 weights, bf16 autocast, checkpointing, AdamW)",
                    f"{fig['s_per_step']:.3f} s/step, {fig['samples_per_s']:.2f} samples/s, peak {fig['peak_gib']:.1f} GiB"))

    def compile_parts() -> None:
        # fp16 on a GPU; fp32 on a CPU (the CPU dry run: CPU fp16 kernels are not what is measured)
        cname = "fp16" if gpu else "fp32"
        pipe = state["pipe"].to(dtype=bl.DTYPES[cname])
        unet = pipe.unet
        h = w = size // pipe.vae_scale_factor
        inp = bl.unet_inputs(unet, 2, frames, h, w, device, bl.DTYPES[cname])
        dr = inp.pop("drags")
        torch._dynamo.reset()
        with torch.no_grad():
            cond = unet.prepare_drag_conditioning(dr, h, w, image_latents=inp["image_latents"], precompute_modulation=True)
            args_ = (inp["sample"], inp["timestep"][0], inp["image_latents"], inp["encoder_hidden_states"], cond)
            pipe.enable_compile(backend=args.compile_backend)  # fullgraph=True, default mode
            t = time.perf_counter()
            fullgraph = True
            try:
                pipe._unet_call(*args_)
            except Exception as exc:  # noqa: BLE001 - report why one graph failed, then try with breaks allowed
                report.note(f"torch.compile fullgraph=True failed after {time.perf_counter() - t:.0f} s: "
                            f"{type(exc).__name__}: {str(exc)[:400]}")
                if not report.fits("torch.compile with graph breaks allowed", 90 * scale):
                    return
                torch._dynamo.reset()
                pipe.unet._compiled_call_impl = None
                pipe.enable_compile(fullgraph=False, backend=args.compile_backend)
                fullgraph = False
                t = time.perf_counter()
                pipe._unet_call(*args_)
            bl.sync(device)
            compile_s = time.perf_counter() - t
            report.add("compile_s", compile_s, (f"torch.compile(unet, fullgraph={fullgraph}, backend={args.compile_backend}), "
                                                "first call", f"{compile_s:.0f} s"))
            comp = bl.median(bl.time_call(lambda: pipe._unet_call(*args_), device, args.unet_repeats, warmup=1))
            kernels, _, busy = _safe_count(report, lambda: pipe._unet_call(*args_), device)
            report.add(f"unet_compiled_ms_{cname}", comp * 1e3,
                       (f"UNet forward, CFG batch 2, {cname}, compiled", f"{ms(comp)}, {kernels} kernels, GPU busy {busy} ms"))
            from puppet_master.pipelines.cuda_graph import GraphedUNet

            runner = GraphedUNet(unet)
            runner(*args_)
            both = bl.median(bl.time_call(lambda: runner(*args_), device, args.unet_repeats, warmup=1))
            report.add(f"unet_compiled_graph_ms_{cname}", both * 1e3,
                       (f"UNet forward, CFG batch 2, {cname}, compiled + CUDA graph", ms(both)))
            runner.reset()
        if report.fits(f"pipeline {cname} compiled + CUDA graph", 15 * scale):
            pipe.enable_cuda_graph()
            pipe(image, drags, **{**call_kwargs, "num_inference_steps": 2})
            sec = bl.time_call(lambda: pipe(image, drags, generator=torch.Generator().manual_seed(0), **call_kwargs),
                               device, 1, warmup=0)[0]
            report.add(f"pipeline_s_{cname}_compiled_graph", sec,
                       (f"pipeline, {cname}, compiled + CUDA graph, end to end", f"**{sec:.2f} s/video**"))
            pipe.disable_cuda_graph()

    # ------------------------------------------------------------------ schedule
    # (name, estimated seconds on an H100 for the full config, function)
    plan = [("build fp16", 20, lambda: build("fp16"))]
    if "unet" not in skip:
        plan.append(("UNet fp16 eager/graph", 15, lambda: unet_parts("fp16")))
    if "pipeline" not in skip:
        plan.append(("pipeline fp16 eager/graph", 20, lambda: pipeline_parts("fp16")))
    if "student" not in skip:
        plan.append(("few-step path fp16 eager/graph", 8, lambda: few_step_parts("fp16")))
    if "svd" not in skip:
        plan.append(("SVD UNet fp16 eager", 10, lambda: svd_parts("fp16", graph=False)))
    if "channels_last" not in skip and "unet" not in skip:
        plan.append(("UNet fp16 channels-last", 8, channels_last_part))
    if "bf16" not in skip:
        plan += [
            ("cast to bf16", 5, lambda: state["pipe"].to(dtype=torch.bfloat16)),
        ]
        if "unet" not in skip:
            plan.append(("UNet bf16 eager/graph", 15, lambda: unet_parts("bf16")))
        if "pipeline" not in skip:
            plan.append(("pipeline bf16 eager/graph", 20, lambda: pipeline_parts("bf16")))
    if "train" not in skip:
        plan += [
            ("free the pipeline", 2, lambda: (state.pop("pipe", None), _free(device))),
            ("training batch 1", 15, lambda: train_parts(1)),
            ("free", 1, lambda: _free(device)),
            ("training batch 4", 20, lambda: train_parts(4)),
            ("free", 1, lambda: _free(device)),
        ]
    if "svd" not in skip:  # diffusers' own UNet under capture: after our figures, in case it cannot be captured
        plan.append(("SVD UNet fp16 CUDA graph", 10, lambda: svd_parts("fp16", graph=True)))
    if "compile" not in skip:
        plan += [
            ("rebuild", 20, lambda: build("fp16") if "pipe" not in state else None),
            ("torch.compile", 90, compile_parts),
        ]
    for name, cost, fn in plan:
        if report.fits(name, cost * scale):
            _run_part(report, name, fn)
    timer.cancel()
    report.note("all parts finished")
    print((Path(args.out) / "gpu_report.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
