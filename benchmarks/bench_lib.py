"""Shared helpers of the benchmark scripts: fast random-weight builds, timers, kernel counts.

Not part of the package: imported by ``bench_pipeline.py``, ``bench_training.py`` and
``gpu_report.py`` (run from the repository root as ``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import math
import resource
import time
from typing import Callable

import numpy as np
import PIL.Image
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------- building
@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random weights at sensible scales, generated on the module's device.

    Matrices and kernels ~ N(0, 1/fan_in); 1-D ``weight``s (norms) = 1; biases = 0;
    ``mix_factor`` (spatio-temporal blending) = 0.5; other vectors ~ N(0, 0.02²);
    ``position_ids`` buffers = ``arange``. Measures speed and memory, not quality.
    """
    params = list(module.named_parameters())
    device = params[0][1].device if params else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in params:
        if name.endswith("mix_factor"):
            p.fill_(0.5)
        elif p.ndim >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=gen)
        elif name.endswith("bias"):
            p.zero_()
        elif name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    for name, b in module.named_buffers():
        if name.endswith("position_ids"):
            b.copy_(torch.arange(b.shape[-1], device=b.device).expand_as(b))
        else:
            raise ValueError(f"init_random_ does not know how to fill buffer {name}")
    return module


def materialise(module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None, seed: int = 0) -> torch.nn.Module:
    """A module built on ``meta``: allocate it on ``device`` (no copy), fill it with :func:`init_random_`, cast."""
    module = module.to_empty(device=device)
    init_random_(module, seed)
    return module.to(dtype) if dtype is not None else module


#: Random-weight sizes (``puppet_master.pipelines.components.SIZES``); any other config names a model.
SIZE_CONFIGS = ("tiny", "small", "full")


def build_pipeline(config: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A ``PuppetMasterPipeline`` on ``device`` in ``dtype``.

    ``"default"``: the embedded trained model; a path: that pipeline folder (e.g. a distilled
    student, sampled with its own settings). Random-weight sizes (``"tiny"``, ``"small"``,
    ``"full"`` = SVD-img2vid's, 1.68 B UNet parameters) are built on ``meta`` and allocated
    + initialised directly on ``device`` with :func:`init_random_` (seconds, not minutes,
    for the full size). Components are never built under ``with torch.device(device)``.
    """
    from puppet_master.pipelines import PuppetMasterPipeline, build_components

    if config not in SIZE_CONFIGS:
        from puppet_master.pipelines.loading import load_pipeline

        return load_pipeline(config, device=device, torch_dtype=dtype)
    with torch.device("meta"):
        comps = build_components(config, seed=seed)
    for i, key in enumerate(("unet", "vae", "image_encoder")):
        if comps[key] is not None:
            comps[key] = materialise(comps[key], device, dtype, seed + i)
    pipe = PuppetMasterPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_svd_unet(config: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """diffusers' ``UNetSpatioTemporalConditionModel`` (SVD's UNet, no drags) sized like ``config``'s drag UNet.

    ``"default"`` is sized like the embedded model (``SIZES["small"]``). Built on ``meta``
    and materialised on ``device`` with :func:`init_random_`.
    """
    from diffusers import UNetSpatioTemporalConditionModel

    from puppet_master.pipelines.components import SIZES

    spec = SIZES["small" if config == "default" else config]["unet"]
    keys = ("block_out_channels", "layers_per_block", "cross_attention_dim", "num_attention_heads")
    kwargs = {k: v for k, v in spec.items() if k in keys}
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(in_channels=8, out_channels=4, **kwargs)
    return materialise(unet, device, dtype, seed).eval()


def svd_unet_inputs(svd_unet, batch: int, frames: int, h: int, w: int, device, dtype, seed: int = 0) -> dict:
    """Inputs of one SVD UNet step: the 8-channel sample (noisy ⊕ first-frame latents), added-time ids."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, frames, svd_unet.config.in_channels, h, w, generator=g).to(device, dtype),
        timestep=torch.full((batch,), 0.5).to(device),
        encoder_hidden_states=torch.randn(batch, 1, svd_unet.config.cross_attention_dim, generator=g).to(device, dtype),
        added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * batch).to(device, dtype),
    )


# ---------------------------------------------------------------------- inputs
def example_inputs(size: int, frames: int, seed: int = 0):
    """A random RGB image ``size × size`` and two drags (pixel coordinates)."""
    from puppet_master.drags import DragSet

    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    s = size
    drags = DragSet.from_pairs([((0.3 * s, 0.5 * s), (0.6 * s, 0.4 * s)), ((0.7 * s, 0.7 * s), (0.7 * s, 0.9 * s))],
                               s, s, frames)
    return image, drags


def unet_inputs(unet, batch: int, frames: int, h: int, w: int, device, dtype, seed: int = 0) -> dict:
    """Random inputs of one denoising step (``batch`` = 2 for a CFG step of one video), drags included."""
    g = torch.Generator().manual_seed(seed)
    k = unet.config.num_drags
    drags = torch.zeros(batch, frames, k, 4)
    drags[:, :, 0, :2] = torch.tensor([0.3, 0.5])
    drags[:, :, 0, 2:] = torch.tensor([0.3, 0.5]) + torch.linspace(0, 1, frames)[:, None] * torch.tensor([0.3, -0.1])
    drags[:, :, 1, :2] = torch.tensor([0.7, 0.7])
    drags[:, :, 1, 2:] = torch.tensor([0.7, 0.7]) + torch.linspace(0, 1, frames)[:, None] * torch.tensor([0.0, 0.2])
    xdim = unet.config.cross_attention_dim
    xdim = xdim if isinstance(xdim, int) else xdim[0]
    return dict(
        sample=torch.randn(batch, frames, unet.config.out_channels, h, w, generator=g).to(device, dtype),
        timestep=torch.full((batch,), 0.5).to(device),
        image_latents=torch.randn(batch, unet.config.out_channels, h, w, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, 1, xdim, generator=g).to(device, dtype),
        drags=drags.to(device, dtype),
    )


# ---------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` (after ``warmup`` calls), one entry per repeat."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def cuda_graphed(fn: Callable[[], object], device: torch.device, warmup: int = 2) -> Callable[[], None]:
    """Capture ``fn`` (whose inputs are fixed tensors) in a CUDA graph; returns its ``replay``."""
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def count_kernels(fn: Callable[[], object], device: torch.device) -> tuple[int | None, int]:
    """``(CUDA kernels launched, aten ops called)`` by one call of ``fn`` (kernels ``None`` off CUDA)."""
    kernels, ops, _ = profile_call(fn, device)
    return kernels, ops


def profile_call(fn: Callable[[], object], device: torch.device) -> tuple[int | None, int, float | None]:
    """``(CUDA kernels, aten ops, GPU busy ms)`` of one call of ``fn`` (kernel figures ``None`` off CUDA).

    GPU busy time is the sum of the kernels' durations (kernels of one stream do not overlap).
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    events = prof.events()
    ops = sum(1 for e in events if e.name.startswith("aten::"))
    if device.type != "cuda":
        return None, ops, None
    kernel_events = [
        e for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))
    ]
    busy_us = sum(float(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) or 0.0) for e in kernel_events)
    return len(kernel_events), ops, busy_us / 1e3


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak memory since the last :func:`reset_peak`: allocated GPU memory, or the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------------- training
def synthetic_training_batch(batch: int, frames: int, latent: int, embed_dim: int, num_drags: int, device, step: int) -> dict:
    """A random training batch (latent clips, first-frame latents, CLIP token, drags) on ``device``."""
    g = torch.Generator().manual_seed(1000 + step)
    drags = torch.zeros(batch, frames, num_drags, 4)
    drags[:, :, 0, :2] = torch.tensor([0.3, 0.5])
    drags[:, :, 0, 2:] = torch.tensor([0.3, 0.5]) + torch.linspace(0, 1, frames)[:, None] * torch.tensor([0.3, -0.1])
    return dict(
        latents=torch.randn(batch, frames, 4, latent, latent, generator=g).to(device),
        image_latents=torch.randn(batch, 4, latent, latent, generator=g).to(device),
        embedding=torch.randn(batch, 1, embed_dim, generator=g).to(device),
        drags=drags.to(device),
        key=torch.arange(step * batch, (step + 1) * batch),
    )


def inline_edm_loss(unet, batch: dict) -> torch.Tensor:
    """The EDM loss of ``training.edm_loss`` with default options (no dropout), without the pydantic config.

    For machines without pydantic; the compute (one UNet forward on ``c_in·(x+σε)``,
    ``λ(σ)``-weighted error of ``D``) is the same.
    """
    from puppet_master import edm

    x = batch["latents"]
    g = torch.Generator().manual_seed(int(batch["key"][0]))
    sigma = edm.sigma_from_normal(torch.randn(x.shape[0], generator=g)).to(x.device)
    eps = torch.randn(x.shape, generator=g).to(x.device)
    noisy = x + edm.append_dims(sigma, x.ndim) * eps
    pc = edm.preconditioning(edm.append_dims(sigma, x.ndim))
    out = unet(pc.c_in * noisy, pc.c_noise.reshape(-1), image_latents=batch["image_latents"],
               encoder_hidden_states=batch["embedding"], drags=batch["drags"]).sample.float()
    denoised = pc.c_skip * noisy + pc.c_out * out
    return (((denoised - x) ** 2).mean(dim=(1, 2, 3, 4)) * edm.loss_weight(sigma)).mean()


def training_figures(config: str, device: torch.device, batch: int, precision: str = "bf16",
                     checkpointing: bool = True, steps: int = 5, frames: int = 14, optimizer: str = "adamw") -> dict:
    """Seconds per optimizer step, samples/s and peak memory of the drag UNet's EDM training step.

    The UNet (``config``: ``tiny``, ``small`` or ``full`` = SVD's size, 1.68 B parameters)
    holds fp32 weights, built on ``meta`` and allocated on ``device``; the step is forward
    + backward under ``precision`` autocast (``fp32`` = none), gradient clipping at 1 and
    an AdamW update (``adamw8bit`` with bitsandbytes), as ``puppet-master train`` does.
    Uses ``training.edm_loss`` when the training package imports (it needs pydantic), else
    :func:`inline_edm_loss`.
    """
    from puppet_master.models import UNetDragSpatioTemporalConditionModel
    from puppet_master.pipelines.components import SIZES

    spec = dict(SIZES[config]["unet"])
    with torch.device("meta"):
        unet = UNetDragSpatioTemporalConditionModel(**spec, num_frames=frames)
    unet = materialise(unet, device, torch.float32)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    try:
        from puppet_master.training import edm_loss, load_config

        cfg = load_config(None, ["cond_dropout_prob=0.0"])
        frame_w = torch.ones(frames, device=device)
        loss_fn, loss_name = (lambda u, b: edm_loss(u, b, cfg, frame_w)), "training.edm_loss"
    except ImportError:
        loss_fn, loss_name = inline_edm_loss, "inline EDM loss (no pydantic)"
    if optimizer == "adamw8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(unet.parameters(), lr=1e-5)
    else:
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    xdim = unet.config.cross_attention_dim
    xdim = xdim if isinstance(xdim, int) else xdim[0]
    latent = 32 if config != "tiny" else 8
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def step(i: int) -> None:
        b = synthetic_training_batch(batch, frames, latent, xdim, unet.config.num_drags, device, i)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(unet, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up (allocates the optimizer state)
    reset_peak(device)
    times = time_call(lambda: step(1), device, steps, warmup=0)
    s = median(times)
    out = dict(config=config, batch=batch, precision=precision, checkpointing=checkpointing, optimizer=optimizer,
               frames=frames, latent=latent, s_per_step=s, samples_per_s=batch / s, peak_gib=peak_gib(device),
               params_m=sum(p.numel() for p in unet.parameters()) / 1e6, loss=loss_name)
    del unet, opt
    return out
