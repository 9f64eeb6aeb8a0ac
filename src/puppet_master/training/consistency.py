"""Latent consistency distillation of a drag UNet into a few-step student (docs/design.md §5).

Not in the Puppet-Master paper. The method is latent consistency distillation (LCM: Luo et
al. 2023, "Latent Consistency Models", arXiv 2310.04378; for video diffusion AnimateLCM:
Wang et al. 2024, arXiv 2402.00769), built on consistency models (Song et al. 2023, arXiv
2303.01469), in the EDM parameterisation the drag UNet is trained in (docs/design.md §5):

* **Consistency function.** The student ``f_θ(x, σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x,
  c_noise(σ))`` is the EDM denoiser of the same drag UNet (σ_data = 1). At the grid's smallest
  σ (0.002) ``c_skip ≈ 1`` and ``c_out ≈ −0.002``, so the boundary condition ``f(x, σ_min) ≈ x``
  holds without extra coefficients, and the student is an ordinary drag UNet that the
  pipeline samples as it samples the teacher.
* **Grid and skipped steps.** The σ grid is the Karras schedule the teacher's scheduler gives
  for ``grid_steps`` steps (diffusers' ``EulerDiscreteScheduler.set_timesteps``), optionally
  capped at ``sigma_max`` (the range a sampler that starts from the drag-warped first frame
  uses). A training sample takes grid point ``n`` and the point ``skip`` intervals below it
  (LCM's skipping-step schedule).
* **Teacher ODE solver.** From ``x_hi = x₀ + σ_hi·ε`` (a training clip's latents, noised) one
  Euler (or Heun) step of the teacher's probability-flow ODE ``dx/dσ = (x − D(x, σ))/σ`` gives
  ``x̂_lo`` at ``σ_lo``. ``D`` is the teacher's **guided** denoiser: classifier-free guidance
  with the pipeline's per-frame weights (``min_guidance`` at frame 0 rising to ``max_guidance``
  at the last frame; the unconditional branch has zero drags, a zero first-frame latent and a
  zero image embedding, as in sampling). The guidance is thereby folded into the student,
  which samples without CFG (one UNet call per step).
* **Target network.** ``f_θ⁻`` is an exponential moving average of the student
  (``target_ema_decay``, LCM's μ = 0.95); the loss is ``d(f_θ(x_hi, σ_hi), f_θ⁻(x̂_lo, σ_lo))``
  with the pseudo-Huber distance ``√(‖a−b‖² + c²) − c`` per element (or the squared error).
* **Drag conditioning unchanged**: student, target and teacher see the same drags,
  first-frame latent and image embedding.

Draws are a function of ``(seed, key)`` per sample, as in the EDM objective
(:func:`~puppet_master.training.losses.sample_noise`), so resumed and data-parallel runs see
what a single run sees.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import edm
from ..errors import UserInputError

#: File of the target network inside a training checkpoint.
TARGET_WEIGHTS = "consistency_target.safetensors"


@dataclass(frozen=True)
class DistillSettings:
    """Settings of :class:`ConsistencyDistillation` (the ``distill`` section of a training config).

    Attributes:
        grid_steps: steps of the teacher scheduler's σ grid (Karras ρ = 7).
        skip: grid intervals one teacher solver step covers.
        sigma_max: cap of the grid's largest σ (``None``: the teacher scheduler's σ_max).
        min_guidance, max_guidance: the teacher's CFG weights at the first and last frame.
        solver: ``"euler"`` or ``"heun"`` (two teacher evaluations per step).
        target_ema_decay: decay μ of the target network's average of the student.
        loss: ``"huber"`` (pseudo-Huber, ``huber_c``) or ``"l2"``.
        huber_c: the pseudo-Huber constant, in latent units.
    """

    grid_steps: int = 50
    skip: int = 1
    sigma_max: float | None = None
    min_guidance: float = 1.0
    max_guidance: float = 5.0
    solver: str = "euler"
    target_ema_decay: float = 0.95
    loss: str = "huber"
    huber_c: float = 0.001


def sigma_grid(scheduler, grid_steps: int, sigma_max: float | None = None) -> torch.Tensor:
    """The distillation grid: the σ's (descending, float32 ``(grid_steps,)``, no trailing 0) of ``scheduler``'s schedule.

    Args:
        scheduler: a diffusers scheduler with ``sigmas`` after ``set_timesteps`` (the teacher
            pipeline's ``EulerDiscreteScheduler``); a copy is configured, the argument is not changed.
        grid_steps: number of steps.
        sigma_max: cap of the largest σ (``None``: the scheduler's own).

    Raises:
        UserInputError: ``grid_steps < 2`` or a ``sigma_max`` not above the scheduler's σ_min.
    """
    if grid_steps < 2:
        raise UserInputError(f"distill.grid_steps must be at least 2, got {grid_steps}")
    overrides = {}
    if sigma_max is not None:
        sigma_min = getattr(scheduler.config, "sigma_min", None)
        if sigma_min is not None and not sigma_max > sigma_min:
            raise UserInputError(f"distill.sigma_max={sigma_max} must exceed the scheduler's sigma_min={sigma_min}")
        overrides["sigma_max"] = float(sigma_max)
    grid_scheduler = type(scheduler).from_config(scheduler.config, **overrides)
    grid_scheduler.set_timesteps(grid_steps, device="cpu")
    sigmas = grid_scheduler.sigmas.float()
    return sigmas[sigmas > 0]


def edm_denoiser(unet, noisy: torch.Tensor, sigma: torch.Tensor, image_latents: torch.Tensor,
                 embedding: torch.Tensor, drags: torch.Tensor) -> torch.Tensor:
    """The EDM denoiser ``D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise)`` of a drag UNet (docs/design.md §5).

    Args:
        unet: a :class:`~puppet_master.models.UNetDragSpatioTemporalConditionModel`.
        noisy: ``(B, N, C, h, w)`` noisy latents (scaled by the VAE factor), *not* multiplied by ``c_in``.
        sigma: ``(B,)`` noise levels.
        image_latents: ``(B, C, h, w)`` unscaled first-frame latents.
        embedding: ``(B, 1, D)`` image embeddings.
        drags: ``(B, N, K, 4)`` normalised drags (float32 positions).

    Returns:
        the denoised latents, ``noisy``'s shape, float32 (or float64 for float64 inputs).
    """
    pc = edm.preconditioning(edm.append_dims(sigma, noisy.ndim))
    out = unet(pc.c_in * noisy, pc.c_noise.reshape(-1), image_latents=image_latents,
               encoder_hidden_states=embedding, drags=drags).sample
    out = out.to(torch.promote_types(out.dtype, torch.float32))
    return pc.c_skip * noisy + pc.c_out * out


def guided_denoiser(unet, noisy: torch.Tensor, sigma: torch.Tensor, image_latents: torch.Tensor,
                    embedding: torch.Tensor, drags: torch.Tensor, frame_guidance: torch.Tensor) -> torch.Tensor:
    """Classifier-free-guided denoiser ``D_u + w_n·(D_c − D_u)`` with per-frame weights, as the pipeline samples.

    The unconditional branch has zero drags, a zero first-frame latent and a zero image
    embedding; both branches run in one batch.

    Args:
        frame_guidance: ``(N,)`` CFG weight of each frame.
        Other arguments as :func:`edm_denoiser`.
    """
    both = edm_denoiser(unet, torch.cat([noisy, noisy]), torch.cat([sigma, sigma]),
                        torch.cat([torch.zeros_like(image_latents), image_latents]),
                        torch.cat([torch.zeros_like(embedding), embedding]),
                        torch.cat([torch.zeros_like(drags), drags]))
    uncond, cond = both.chunk(2)
    w = frame_guidance.to(noisy.device, uncond.dtype)[None, :, None, None, None]
    return uncond + w * (cond - uncond)


def sample_distill_draws(keys: torch.Tensor, seed: int, shape: tuple[int, ...],
                         num_starts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample grid index and noise, each a function of ``(seed, key)`` only.

    Returns:
        ``index (B,)`` int64 in ``[0, num_starts)`` and ``eps (B, *shape)`` float32.
    """
    idx, eps = [], []
    for key in keys.tolist():
        g = torch.Generator().manual_seed(int(seed) * 1_000_000_007 + int(key) + 500_000_003)
        idx.append(torch.randint(num_starts, (1,), generator=g))
        eps.append(torch.randn(shape, generator=g))
    return torch.cat(idx), torch.stack(eps)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Mean over elements of ``√((a−b)² + c²) − c`` (LCM's distance), per sample ``(B,)``."""
    return ((a - b).pow(2) + c * c).sqrt().sub(c).flatten(1).mean(dim=1)


class ConsistencyDistillation:
    """The consistency-distillation objective of the trainer (module docstring).

    Args:
        teacher: the frozen drag UNet to distil (put in eval mode, gradients off).
        student: the drag UNet being trained (its current weights start the target network).
        scheduler: the teacher pipeline's scheduler (for the σ grid).
        settings: :class:`DistillSettings`.
        seed: the run's seed (draws depend on ``(seed, key)``).
        num_frames: frames per clip (for the per-frame guidance weights).

    Raises:
        UserInputError: settings that cannot apply (``skip`` ≥ ``grid_steps``, unknown solver
            or loss, teacher and student of different architectures).
    """

    def __init__(self, teacher, student, scheduler, settings: DistillSettings, seed: int, num_frames: int) -> None:
        if settings.solver not in ("euler", "heun"):
            raise UserInputError(f"distill.solver must be euler or heun, got {settings.solver!r}")
        if settings.loss not in ("huber", "l2"):
            raise UserInputError(f"distill.loss must be huber or l2, got {settings.loss!r}")
        if not 1 <= settings.skip < settings.grid_steps:
            raise UserInputError(f"distill.skip must be in [1, grid_steps - 1] = [1, {settings.grid_steps - 1}], "
                                 f"got {settings.skip}")
        if {k: v for k, v in teacher.config.items() if not k.startswith("_")} != \
                {k: v for k, v in student.config.items() if not k.startswith("_")}:
            raise UserInputError("the teacher and the student drag UNet must have the same configuration: start the "
                                 "student from the teacher (model.init=checkpoint, model.pretrained=<teacher>)")
        self.settings = settings
        self.seed = seed
        self.teacher = teacher.eval().requires_grad_(False)
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        self.grid = sigma_grid(scheduler, settings.grid_steps, settings.sigma_max)
        self.frame_guidance = torch.linspace(settings.min_guidance, settings.max_guidance, num_frames)

    def to(self, device) -> "ConsistencyDistillation":
        """Move the teacher and the target network to ``device``."""
        self.teacher.to(device)
        self.target.to(device)
        return self

    @torch.no_grad()
    def teacher_step(self, x_hi: torch.Tensor, sigma_hi: torch.Tensor, sigma_lo: torch.Tensor,
                     image_latents: torch.Tensor, embedding: torch.Tensor, drags: torch.Tensor) -> torch.Tensor:
        """One step of the teacher's guided probability-flow ODE from ``σ_hi`` to ``σ_lo`` (Euler or Heun), per sample."""
        cond = (image_latents, embedding, drags, self.frame_guidance)
        d_hi = guided_denoiser(self.teacher, x_hi, sigma_hi, *cond)
        slope = (x_hi - d_hi) / edm.append_dims(sigma_hi, x_hi.ndim)
        dt = edm.append_dims(sigma_lo - sigma_hi, x_hi.ndim)
        x_lo = x_hi + dt * slope
        if self.settings.solver == "heun":
            d_lo = guided_denoiser(self.teacher, x_lo, sigma_lo, *cond)
            slope_lo = (x_lo - d_lo) / edm.append_dims(sigma_lo, x_hi.ndim)
            x_lo = x_hi + dt * (slope + slope_lo) / 2
        return x_lo

    def loss(self, unet, batch: dict) -> tuple[torch.Tensor, dict]:
        """Consistency-distillation loss of a batch (the trainer's ``compute_loss``).

        Args:
            unet: the student (possibly wrapped for data parallelism).
            batch: ``latents (B, N, C, h, w)`` scaled, ``image_latents (B, C, h, w)`` unscaled,
                ``embedding (B, 1, D)``, ``drags (B, N, K, 4)`` normalised, ``key (B,)``.

        Returns:
            ``(scalar loss, {"sigma_hi": mean σ of the batch})``.
        """
        x0 = batch["latents"]
        s = self.settings
        idx, eps = sample_distill_draws(batch["key"].cpu(), self.seed, tuple(x0.shape[1:]), len(self.grid) - s.skip)
        grid = self.grid.to(x0.device)
        sigma_hi, sigma_lo = grid[idx.to(x0.device)], grid[idx.to(x0.device) + s.skip]
        x_hi = x0 + edm.append_dims(sigma_hi, x0.ndim) * eps.to(x0.device, x0.dtype)
        image_latents, embedding, drags = batch["image_latents"], batch["embedding"], batch["drags"]
        x_lo = self.teacher_step(x_hi, sigma_hi, sigma_lo, image_latents, embedding, drags)
        with torch.no_grad():
            target = edm_denoiser(self.target, x_lo, sigma_lo, image_latents, embedding, drags)
        pred = edm_denoiser(unet, x_hi, sigma_hi, image_latents, embedding, drags)
        if s.loss == "huber":
            per_sample = pseudo_huber(pred, target.to(pred.dtype), s.huber_c)
        else:
            per_sample = (pred - target.to(pred.dtype)).pow(2).flatten(1).mean(dim=1)
        return per_sample.mean(), {"sigma_hi": float(sigma_hi.mean())}

    @torch.no_grad()
    def after_update(self, student) -> None:
        """Move the target network towards the student: ``θ⁻ ← μ·θ⁻ + (1 − μ)·θ``."""
        for t, p in zip(self.target.parameters(), student.parameters()):
            t.lerp_(p.detach().to(t.dtype), 1 - self.settings.target_ema_decay)

    # ------------------------------------------------------------------ checkpoints
    def save(self, folder: str | Path) -> None:
        """Write the target network's weights to ``folder/consistency_target.safetensors``."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.target.state_dict().items()}
        save_file(state, str(Path(folder) / TARGET_WEIGHTS))

    def load(self, folder: str | Path) -> None:
        """Restore the target network from a checkpoint folder (safetensors only).

        Raises:
            UserInputError: the file is missing, unreadable or holds other tensors or shapes.
        """
        path = Path(folder) / TARGET_WEIGHTS
        if not path.is_file():
            raise UserInputError(f"{folder} holds no {TARGET_WEIGHTS}: not a checkpoint of a consistency-distillation "
                                 "run (objective: consistency)")
        try:
            state = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise UserInputError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
        own = self.target.state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise UserInputError(f"{path} does not match the student's parameters: resume with the model it was "
                                 "trained with")
        self.target.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def student_settings(distill, scheduler) -> dict:
    """What a consistency-distilled student's pipeline states (docs/design.md §5): its step count, no CFG (the
    guidance is folded in), and a scheduler whose σ range is the one it was distilled on.

    The student is sampled with ``distill.sampler_steps`` UNet calls at the σ's the teacher's
    (Karras) schedule gives for one step more, less its last: that schedule ends on σ_min
    (0.002), where a consistency function is the identity (``f(x, σ_min) ≈ x``), so a call
    there changes the video by less than 1e-4 (≈ 88 dB) and is skipped. The student's
    scheduler therefore states ``sigma_min`` = that schedule's second-to-last σ; its last step
    goes from there straight to 0 with the student's estimate of the clean latents.

    Args:
        distill: the config's ``distill`` section.
        scheduler: the teacher's scheduler; the student's is a copy with ``sigma_max`` capped
            at ``distill.sigma_max`` (when set), so that all its steps lie on the distilled range
            (e.g. all 3 run from a drag-warped start at σ = 2), and ``sigma_min`` raised as above
            (schedulers without a ``sigma_min`` setting are left at their own).

    Returns:
        ``PuppetMasterPipeline`` keyword arguments: ``scheduler``, ``num_inference_steps``,
        ``min_guidance_scale``, ``max_guidance_scale``.
    """
    overrides = {}
    if distill.sigma_max is not None and distill.sigma_max < scheduler.config.sigma_max:
        overrides["sigma_max"] = float(distill.sigma_max)
    steps = distill.sampler_steps
    if steps >= 2 and getattr(scheduler.config, "sigma_min", None) is not None:
        longer = type(scheduler).from_config(scheduler.config, **overrides)
        longer.set_timesteps(steps + 1, device="cpu")
        candidate = type(scheduler).from_config(scheduler.config, **overrides,
                                                sigma_min=float(longer.sigmas[steps - 1]))
        candidate.set_timesteps(steps, device="cpu")
        # only where the shorter schedule is the longer one's first steps (a Karras schedule is)
        if torch.allclose(candidate.sigmas[:steps], longer.sigmas[:steps], rtol=1e-4, atol=1e-6):
            overrides["sigma_min"] = float(longer.sigmas[steps - 1])
    if overrides:
        scheduler = type(scheduler).from_config(scheduler.config, **overrides)
    return {"scheduler": scheduler, "num_inference_steps": steps, "min_guidance_scale": 1.0,
            "max_guidance_scale": 1.0}
