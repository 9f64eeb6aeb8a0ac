"""Train a small image VAE from scratch (the embedded default model's autoencoder).

The released Puppet-Master uses SVD's VAE; the embedded default model cannot (its
weights are not downloadable everywhere), so it ships its own small
``diffusers.AutoencoderKL``: by default 8× down-sampling to 4 latent channels, so that a
256×256 frame becomes a 32×32×4 latent, SVD's latent shape (a 16×-down, 8-channel
variant was tried first: cheaper for the UNet, but too blurred for the flow error to
see motion, recipes/default-model/README.md).

Training data are frames of split folders (``NAME.json`` + ``NAME.gif`` clips, as
``puppet-master data build`` writes them) and, for variety beyond flat-shaded renders,
the natural photographs bundled with scikit-image. Each step sees random square crops
(random scale and flips); the loss is L1 on pixels plus L1 on chroma (colour apart from
brightness, see :func:`chroma_l1`) plus L1 on image gradients (keeps edges sharp without
a GAN or LPIPS network) plus a small KL term (as in Stable
Diffusion's autoencoder, Rombach et al. 2022 §3). At the end the latent scaling factor
is set to 1 / std of the posterior means over the training frames, so scaled latents
have unit variance as EDM assumes (docs/design.md §5).

Resumable: ``OUT/checkpoint/`` (accelerate state, written atomically) is picked up by
the next run with the same ``OUT``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset

from ..data.splits import split_video_path
from ..errors import UserInputError, optional_imports
from ..pipelines.components import make_image_vae
from ..values import parse_json
from ..video import read_video
from .loop import LoopSettings, TrainingLoop
from .recipe import lr_factor

with optional_imports("train"):
    import skimage.data

#: scikit-image sample photographs shipped inside its wheel (no download).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "moon", "brick", "grass", "gravel")


@dataclass
class VAETrainConfig:
    """Options of :func:`train_vae` (sizes in pixels)."""

    data: list[str] = field(default_factory=list)
    output_dir: str = "runs/vae"
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    crop: int = 128
    batch_size: int = 8
    max_steps: int = 3000
    lr: float = 2e-4  # 1e-3 diverges into colourless reconstructions (recipes/default-model/README.md)
    kl_weight: float = 1e-6
    grad_weight: float = 0.5
    fg_weight: float = 1.0
    chroma_weight: float = 4.0
    frames_per_clip: int = 3
    use_photos: bool = True
    photo_share: float = 0.1
    checkpoint_every: int = 250
    seed: int = 0


def collect_frames(folders: list[str | Path], frames_per_clip: int = 3) -> list[np.ndarray]:
    """``frames_per_clip`` evenly spaced frames (uint8 ``(H, W, 3)``) of every clip in ``folders``.

    Raises:
        UserInputError: a missing folder, or no clips at all.
    """
    frames: list[np.ndarray] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise UserInputError(f"VAE data folder {str(folder)!r} does not exist")
        for meta in sorted(folder.glob("*.json")):
            video = split_video_path(meta)
            if video is None:
                continue
            clip = read_video(video)
            for i in np.linspace(0, len(clip) - 1, frames_per_clip).round().astype(int):
                frames.append(clip[i])
    if not frames:
        raise UserInputError(f"no clips (NAME.json + NAME.gif) found in {', '.join(map(str, folders))}")
    return frames


def skimage_photos() -> list[np.ndarray]:
    """scikit-image's bundled sample photographs as RGB uint8 (grey ones repeated to 3 channels)."""
    photos = []
    for name in SKIMAGE_PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return photos


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` → float32 ``(1, 3, H, W)`` in [−1, 1] (the VAE's input range)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 127.5 - 1


class CropDataset(Dataset):
    """Random square crops in [−1, 1], ``(3, crop, crop)`` float32; deterministic per index.

    A share ``photo_share`` of the items comes from ``photos`` (crops of 1–2.5× the crop
    size resized down), the rest from ``frames`` (whole frame or a crop of ≥ half its
    size, resized to ``crop``). Horizontal flips at random.
    """

    def __init__(self, frames: list[np.ndarray], photos: list[np.ndarray], crop: int, length: int, photo_share: float,
                 seed: int = 0) -> None:
        self.frames, self.photos, self.crop = frames, photos, crop
        self.length, self.photo_share, self.seed = length, photo_share if photos else 0.0, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, index))
        if rng.random() < self.photo_share:
            img = self.photos[rng.integers(len(self.photos))]
            side = int(min(img.shape[:2], key=int) * rng.uniform(0.3, 1.0))
        else:
            img = self.frames[rng.integers(len(self.frames))]
            side = int(min(img.shape[:2]) * rng.uniform(0.5, 1.0))
        y = rng.integers(img.shape[0] - side + 1)
        x = rng.integers(img.shape[1] - side + 1)
        patch = image_tensor(img[y : y + side, x : x + side])
        patch = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear", antialias=True, align_corners=False)[0]
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        return patch.clamp(-1, 1)


def foreground_mask(x: torch.Tensor, white: float = 0.94) -> torch.Tensor:
    """``(B, 1, H, W)`` float mask of pixels that are not near-white in ``x`` ``(B, 3, H, W)`` in [−1, 1]."""
    return (x.amin(dim=1, keepdim=True) < white).to(x.dtype)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along x and y of ``(B, C, H, W)``."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def chroma_l1(recon: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean L1 between the chroma of ``recon`` and ``x`` (both ``(B, 3, H, W)``).

    Chroma is each pixel's deviation from its own grey level (``x − mean over RGB``), so
    the term ignores brightness and is zero for a perfect or an equally re-brightened
    reconstruction. Without it the encoder learns a luminance-only code and stays there
    for thousands of steps (objects come back grey; recipes/default-model/README.md).
    ``weight``: ``(B, 1, H, W)`` per-pixel weights (default: all ones).
    """
    diff = ((recon - recon.mean(1, keepdim=True)) - (x - x.mean(1, keepdim=True))).abs()
    if weight is None:
        return diff.mean()
    return (weight * diff).mean() / weight.mean()


def vae_loss(vae, x: torch.Tensor, cfg: VAETrainConfig, generator: torch.Generator | None = None,
             sample_posterior: bool = False) -> tuple[torch.Tensor, dict]:
    """L1 + ``chroma_weight``·chroma L1 + ``grad_weight``·L1(gradients) + ``kl_weight``·KL for ``x`` in [−1, 1].

    The KL term (per pixel) keeps the latents' scale in check; the decoder sees the
    posterior mean unless ``sample_posterior``.
    """
    posterior = vae.encode(x).latent_dist
    # the posterior mean is decoded: the pipeline only ever uses the mean (first-frame latent, cached
    # latents), and sampling with the initial unit variance drowns the means for thousands of steps
    z = posterior.sample(generator) if sample_posterior else posterior.mode()
    recon = vae.decode(z).sample
    # renders are mostly white background: weight object pixels so their colour is not averaged away
    weight = 1.0 + (cfg.fg_weight - 1.0) * foreground_mask(x)
    l1 = (weight * (recon - x).abs()).mean() / weight.mean()
    chroma = chroma_l1(recon, x, weight)
    gx, gy = image_gradients(recon)
    tx, ty = image_gradients(x)
    grad = (gx - tx).abs().mean() + (gy - ty).abs().mean()
    # KL summed over latent elements, per pixel: the same ratio to the pixel loss as SD's
    # summed losses with weight 1e-6
    kl = posterior.kl().mean() / x[0].numel()
    loss = l1 + cfg.chroma_weight * chroma + cfg.grad_weight * grad + cfg.kl_weight * kl
    return loss, {"l1": l1.item(), "chroma": chroma.item(), "grad": grad.item(), "kl": kl.item()}


@torch.no_grad()
def latent_std(vae, frames: list[np.ndarray], max_frames: int = 64) -> float:
    """Standard deviation of the posterior means of up to ``max_frames`` whole frames."""
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    stds = []
    for i in idx:
        x = image_tensor(frames[i])
        stds.append(vae.encode(x).latent_dist.mode().flatten())
    return torch.cat(stds).std().item()


@torch.no_grad()
def reconstruction_psnr(vae, frames: list[np.ndarray], foreground: bool = False) -> float:
    """Mean PSNR (dB, 8-bit scale) of encode→decode (posterior mean) over ``frames``.

    ``foreground``: only over the pixels that are not near-white in the input (the
    object), which a white background otherwise dominates.
    """
    values = []
    for f in frames:
        x = image_tensor(f)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        err = ((y - x) / 2).pow(2)
        if foreground:
            mask = foreground_mask(x).expand_as(err).bool()
            if not mask.any():
                continue
            err = err[mask]
        values.append(10 * math.log10(1.0 / max(err.mean().item(), 1e-10)))
    return float(np.mean(values)) if values else float("nan")


#: Fewest frames ``train_vae`` accepts: one in ten is held out for the reported PSNR.
MIN_FRAMES = 10


def _read_step(path: Path) -> int:
    """The step of a VAE run's ``checkpoint/step.json``.

    Raises:
        UserInputError: not JSON holding a whole ``step`` >= 0.
    """
    try:
        step = parse_json(path.read_bytes(), str(path)).get("step")
    except (OSError, UserInputError, AttributeError):
        step = None
    if type(step) is not int or step < 0:
        raise UserInputError(f"{path} does not hold a step number: remove {path.parent} to start afresh")
    return step


def _save_checkpoint(acc, out: Path, step: int) -> None:
    tmp = out / ".checkpoint-partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    acc.save_state(str(tmp))
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    final = out / "checkpoint"
    old = out / ".checkpoint-old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _check_out_dir(out: Path) -> None:
    """Refuse an output folder that is, or lies under, a file (UserInputError)."""
    for part in (out, *out.parents):
        if part.exists() and not part.is_dir():
            raise UserInputError(f"--out {str(out)!r}: {str(part)!r} is a file, not a folder")


def _start_step(out: Path) -> int:
    """The step to resume from: ``OUT/checkpoint/step.json``'s, or 0 without a checkpoint."""
    step_file = out / "checkpoint" / "step.json"
    return _read_step(step_file) if step_file.is_file() else 0


def _load_checkpoint(acc, out: Path) -> None:
    """Load ``OUT/checkpoint`` into ``acc``'s objects (accelerate reads tensors with ``weights_only=True``).

    Raises:
        UserInputError: an unreadable or mismatched checkpoint, naming it and the fix.
    """
    try:
        acc.load_state(str(out / "checkpoint"))
    except Exception as exc:  # noqa: BLE001 - any unreadable state file is the same damaged checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot resume from {out / 'checkpoint'} ({first}): remove it to start afresh, or "
                             "train into another --out") from None


def _publish(model, out: Path, report: dict) -> None:
    """Write ``OUT/vae/`` (``save_pretrained``) and ``OUT/vae-report.json``, each replacing the old one only once complete."""
    tmp = out / ".vae-partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if (out / "vae").exists():
        shutil.rmtree(out / "vae")
    tmp.rename(out / "vae")
    tmp_report = out / ".vae-report.json.partial"
    tmp_report.write_text(json.dumps(report, indent=2))
    os.replace(tmp_report, out / "vae-report.json")


def train_vae(cfg: VAETrainConfig, progress: bool = True, held_out: int = 32) -> dict:
    """Train (or resume) the VAE; write ``OUT/vae/`` (``save_pretrained``) and ``OUT/vae-report.json``.

    ``held_out`` frames (the last clips of the data) are kept out of training and give
    the reported reconstruction PSNR.

    Returns:
        the report: steps, final losses, latent std / scaling factor, held-out PSNR.

    Raises:
        UserInputError: missing or empty data folders, bad sizes.
    """
    if cfg.crop % 2 ** (len(cfg.block_out_channels) - 1):
        raise UserInputError(f"crop {cfg.crop} must be a multiple of the VAE stride {2 ** (len(cfg.block_out_channels) - 1)}")
    out = Path(cfg.output_dir)
    _check_out_dir(out)
    frames = collect_frames(cfg.data, cfg.frames_per_clip)
    if len(frames) < MIN_FRAMES:
        clips = -(-MIN_FRAMES // cfg.frames_per_clip)
        raise UserInputError(f"train-vae read {len(frames)} frames from {', '.join(map(str, cfg.data))}; it needs at "
                             f"least {MIN_FRAMES} ({clips} clips of {cfg.frames_per_clip} frames): one in ten is held "
                             "out to measure the reconstruction. Give more clips")
    start = _start_step(out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = min(held_out, len(frames) // 10)
    train_frames, test_frames = frames[: len(frames) - held_out], frames[len(frames) - held_out :]
    photos = skimage_photos() if cfg.use_photos else []
    set_seed(cfg.seed)
    acc = Accelerator()
    vae = make_image_vae(cfg.block_out_channels, cfg.layers_per_block, cfg.latent_channels)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.max_steps) / cfg.max_steps)))
    )
    vae, opt, sched = acc.prepare(vae, opt, sched)
    if start:
        _load_checkpoint(acc, out)
    dataset = CropDataset(train_frames, photos, cfg.crop, cfg.max_steps * cfg.batch_size, cfg.photo_share, cfg.seed)
    # stateless dataset: resuming at step s starts at item s·batch
    indices = list(range(start * cfg.batch_size, cfg.max_steps * cfg.batch_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=cfg.batch_size, shuffle=False)
    vae.train()
    loop = TrainingLoop(
        vae, opt, LoopSettings(steps=cfg.max_steps, start_step=start, grad_clip=1.0,
                               save_every_steps=cfg.checkpoint_every, progress="training VAE" if progress else None),
        lr_scheduler=sched, accelerator=acc, on_save=lambda step: _save_checkpoint(acc, out, step),
        describe_save=lambda step: f"{out / 'checkpoint'} (step {step}; resume with a lower lr)",
    )
    report = loop.run(loader, lambda batch: vae_loss(vae, batch.to(acc.device), cfg))
    step, stats = report.final_step, report.stats
    model = acc.unwrap_model(vae).eval()
    std = latent_std(model, train_frames)
    model.register_to_config(scaling_factor=1.0 / std)
    report = {
        "steps": step,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "last_losses": stats,
        "latent_std": std,
        "scaling_factor": 1.0 / std,
        "parameters": sum(p.numel() for p in model.parameters()),
        "held_out_frames": len(test_frames),
        "held_out_psnr_db": reconstruction_psnr(model, test_frames) if test_frames else None,
        "held_out_foreground_psnr_db": reconstruction_psnr(model, test_frames, foreground=True) if test_frames else None,
    }
    _publish(model, out, report)
    return report


# ---------------------------------------------------------------------------------------------
# Batched training on an accelerator: crops, colour changes and synthetic objects made on the
# device, a wall-clock budget, periodic saves (the embedded default model's recipe,
# puppet_master.training.recipe).


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (any equal shapes) → RGB in [0, 1] with a trailing channel axis."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    return v[..., None] - v[..., None] * s[..., None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def synthetic_object_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random object-like pictures, ``(n, 3, size, size)`` float32 in [−1, 1], made on ``generator.device``.

    Each picture is 1–7 flat or textured shapes (parallelograms, like the faces of a box
    seen in perspective, and ellipses) painted over one another on a white (70 %) or a
    plain light background; shape colours are grey (35 %), brown (25 %) or any hue, each
    face shaded by a linear gradient and, half the time, given wood-like stripes or
    smooth value noise; thin bars and small dark marks stand for handles and print.
    Drawn at twice the size and averaged down, so edges are anti-aliased as in a render.
    These teach the VAE colours and materials that the procedural renders lack (grey and
    dark plastic, wood); nothing is read from disk.
    """
    dev = generator.device
    big = 2 * size
    ys, xs = torch.meshgrid(torch.linspace(0, 1, big, device=dev), torch.linspace(0, 1, big, device=dev), indexing="ij")
    bg_white = _rand(generator, n) < 0.7
    bg = torch.where(bg_white[:, None], torch.ones(n, 3, device=dev), 0.75 + 0.25 * _rand(generator, n, 3))
    img = bg[:, :, None, None].expand(n, 3, big, big).clone()
    num_shapes = 1 + (_rand(generator, n) * 7).long()
    for k in range(7):
        active = (k < num_shapes).float()[:, None, None]
        small = _rand(generator, n) < 0.25  # bars and marks
        centre = 0.15 + 0.7 * _rand(generator, n, 2)
        scale = torch.where(small, 0.02 + 0.08 * _rand(generator, n), 0.06 + 0.3 * _rand(generator, n))
        ang_u = _rand(generator, n) * 2 * math.pi
        ang_v = ang_u + math.pi / 2 + (_rand(generator, n) - 0.5) * 1.2
        aspect = torch.where(small, 0.05 + 0.2 * _rand(generator, n), 0.4 + 0.6 * _rand(generator, n))
        u = torch.stack([ang_u.cos(), ang_u.sin()], -1) * scale[:, None]
        v = torch.stack([ang_v.cos(), ang_v.sin()], -1) * (scale * aspect)[:, None]
        det = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
        px = xs[None] - centre[:, 0, None, None]
        py = ys[None] - centre[:, 1, None, None]
        a = (px * v[:, 1, None, None] - py * v[:, 0, None, None]) / det[:, None, None]
        b = (py * u[:, 0, None, None] - px * u[:, 1, None, None]) / det[:, None, None]
        ellipse = (_rand(generator, n) < 0.3)[:, None, None]
        inside = torch.where(ellipse, a * a + b * b <= 1, (a.abs() <= 1) & (b.abs() <= 1)).float() * active
        kind = _rand(generator, n)
        grey = 0.08 + 0.9 * _rand(generator, n)
        hue = torch.where(kind < 0.6, 0.03 + 0.07 * _rand(generator, n), _rand(generator, n))
        sat = torch.where(kind < 0.6, 0.3 + 0.5 * _rand(generator, n), 0.2 + 0.8 * _rand(generator, n))
        val = 0.15 + 0.85 * _rand(generator, n)
        colour = _hsv_to_rgb(hue, sat, val)
        colour = torch.where((kind < 0.35)[:, None], grey[:, None].expand(n, 3), colour)
        colour = torch.where(small[:, None] & (_rand(generator, n) < 0.5)[:, None], 0.15 * _rand(generator, n, 1).expand(n, 3),
                             colour)
        shade = 1 + 0.3 * ((_rand(generator, n) - 0.5)[:, None, None] * a + (_rand(generator, n) - 0.5)[:, None, None] * b)
        freq = 3 + 25 * _rand(generator, n)
        stripes = torch.sin(freq[:, None, None] * (a + 0.15 * torch.sin(3 * b + 6 * _rand(generator, n)[:, None, None])))
        noise = F.interpolate(_rand(generator, n, 1, 8, 8) - 0.5, size=(big, big), mode="bicubic", align_corners=False)[:, 0]
        texture_kind = _rand(generator, n)
        amp = 0.05 + 0.2 * _rand(generator, n)
        texture = torch.where((texture_kind < 0.25)[:, None, None], stripes * amp[:, None, None],
                              torch.where((texture_kind < 0.5)[:, None, None], noise * 2 * amp[:, None, None],
                                          torch.zeros_like(a)))
        face = (colour[:, :, None, None] * (shade + texture)[:, None]).clamp(0, 1)
        img = img * (1 - inside[:, None]) + face * inside[:, None]
    img = F.avg_pool2d(img, 2)
    return img * 2 - 1


def recolour(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random colour changes that keep white white, for ``(B, 3, H, W)`` in [−1, 1].

    Per image: a permutation of the RGB channels (half the images), a pull towards grey
    (a quarter fully grey), and a gamma in [0.6, 1.6] on [0, 1] values.
    """
    b = x.shape[0]
    dev = x.device
    y = (x + 1) / 2
    perms = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], device=dev)
    choice = torch.where(_rand(generator, b) < 0.5, torch.zeros(b, dtype=torch.long, device=dev),
                         (_rand(generator, b) * 6).long().clamp(max=5))
    y = torch.gather(y, 1, perms[choice][:, :, None, None].expand_as(y))
    grey_amount = torch.where(_rand(generator, b) < 0.25, torch.ones(b, device=dev), _rand(generator, b) * 0.5)
    lum = (0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3])
    y = y + grey_amount[:, None, None, None] * (lum - y)
    gamma = 0.6 + _rand(generator, b)
    y = y.clamp(0, 1) ** gamma[:, None, None, None]
    return y * 2 - 1


def random_crops(images: torch.Tensor, n: int, crop: int, generator: torch.Generator, max_zoom_out: float = 2.0,
                 native_share: float = 0.6) -> torch.Tensor:
    """``n`` random square crops of uint8 images ``(M, H, W, 3)`` as ``(n, 3, crop, crop)`` in [−1, 1].

    A share ``native_share`` keeps the pixels' scale (a ``crop``-sized window, as the
    VAE sees 256×256 frames at inference); the rest take a window of up to
    ``max_zoom_out × crop`` pixels resized down. Horizontal flips at random.
    """
    m, h, w = images.shape[:3]
    dev = images.device
    idx = (_rand(generator, n) * m).long().clamp(max=m - 1)
    zoom = torch.where(_rand(generator, n) < native_share, torch.ones(n, device=dev),
                       1 + (max_zoom_out - 1) * _rand(generator, n))
    side = (crop * zoom).clamp(max=min(h, w))
    x0 = (_rand(generator, n) * (w - side)).floor()
    y0 = (_rand(generator, n) * (h - side)).floor()
    flip = torch.where(_rand(generator, n) < 0.5, -1.0, 1.0)
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1] (align_corners=False)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = side / w * flip
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = (2 * x0 + side) / w - 1
    theta[:, 1, 2] = (2 * y0 + side) / h - 1
    grid = F.affine_grid(theta, (n, 3, crop, crop), align_corners=False)
    src = images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class FastVAEConfig:
    """Options of :func:`train_vae_fast` (sizes in pixels)."""

    crop: int = 128
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 100
    kl_weight: float = 1e-6
    grad_weight: float = 0.5
    fg_weight: float = 3.0
    chroma_weight: float = 4.0
    synthetic_share: float = 0.3
    photo_share: float = 0.1
    recolour_share: float = 0.3
    seed: int = 0


def _vae_batch(frames: torch.Tensor, photos: list[torch.Tensor], cfg: FastVAEConfig, g: torch.Generator) -> torch.Tensor:
    """One training batch ``(B, 3, crop, crop)`` in [−1, 1] on the generator's device."""
    n_syn = int(round(cfg.batch_size * cfg.synthetic_share))
    n_photo = int(round(cfg.batch_size * cfg.photo_share)) if photos else 0
    n_frames = cfg.batch_size - n_syn - n_photo
    parts = [random_crops(frames, n_frames, cfg.crop, g)]
    if n_syn:
        parts.append(synthetic_object_images(n_syn, cfg.crop, g))
    for _ in range(n_photo):
        p = photos[int(_rand(g, 1).item() * len(photos)) % len(photos)]
        side = min(p.shape[0], p.shape[1])
        s = int(cfg.crop + (side - cfg.crop) * _rand(g, 1).item()) if side > cfg.crop else side
        y = int(_rand(g, 1).item() * (p.shape[0] - s + 1))
        x = int(_rand(g, 1).item() * (p.shape[1] - s + 1))
        patch = p[y : y + s, x : x + s].permute(2, 0, 1)[None].float() / 127.5 - 1
        parts.append(F.interpolate(patch, size=(cfg.crop, cfg.crop), mode="bilinear", antialias=True, align_corners=False))
    x = torch.cat(parts).clamp(-1, 1)
    change = _rand(g, x.shape[0]) < cfg.recolour_share
    if bool(change.any()):
        x[change] = recolour(x[change], g)
    return x


def train_vae_fast(vae, frames: torch.Tensor, photos: list[torch.Tensor], cfg: FastVAEConfig, steps: int | None,
                   budget_s: float, log=None, save=None, save_every_s: float = 60.0, device: str = "cpu") -> dict:
    """Train ``vae`` (a ``diffusers.AutoencoderKL``, e.g. the shipped one) on crops made on ``device``.

    Args:
        vae: the model; moved to ``device`` (channels-last), left there in float32, train mode off at the end.
        frames: uint8 ``(M, H, W, 3)`` training frames (on ``device`` for speed).
        photos: uint8 ``(H, W, 3)`` photographs (any sizes ≥ 16 px).
        cfg: batch, loss and augmentation settings.
        steps: optimizer steps, or ``None`` to fit the steps into ``budget_s`` (timed over
            the first steps; the chosen number is in the report, so a rerun can pass it).
        budget_s: wall-clock seconds; training stops when they run out even if ``steps`` are left.
        log: ``f(dict)`` called with the step, losses and seconds every 25 steps.
        save: ``f(vae, step)`` called every ``save_every_s`` seconds and at the end.

    Returns:
        report dict: ``steps_planned``, ``steps_done``, ``seconds``, ``last_losses``.

    Loss and learning-rate schedule: :func:`vae_loss` (L1 with object pixels weighted
    ``fg_weight``, chroma, gradients, KL) under bf16 autocast on CUDA; AdamW, linear
    warm-up then cosine to 10 % over the planned steps.
    """
    use_cuda = str(device).startswith("cuda")
    vae = vae.to(device).to(memory_format=torch.channels_last).train()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    loss_cfg = VAETrainConfig(kl_weight=cfg.kl_weight, grad_weight=cfg.grad_weight, fg_weight=cfg.fg_weight,
                              chroma_weight=cfg.chroma_weight)

    def batches():
        while True:
            yield _vae_batch(frames, photos, cfg, g).contiguous(memory_format=torch.channels_last)

    def compute_loss(x):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
            return vae_loss(vae, x, loss_cfg)

    loop = TrainingLoop(
        vae, opt, LoopSettings(steps=steps, budget_s=budget_s, grad_clip=1.0, save_every_s=save_every_s,
                               timing_steps=12),
        # warm-up, then cosine to 10 % once the step count is planned (before that: warm-up only)
        lr_at=lambda step, planned: lr_factor(step, planned if planned is not None else 0, cfg.warmup_steps, floor=0.1),
        on_log=(lambda step, record: log({"stage": "vae", "step": step, **record})) if log else None,
        on_save=(lambda step: save(vae, step)) if save else None,
    )
    try:
        report = loop.run(batches(), compute_loss)
    finally:
        vae.eval()
    return {"steps_planned": report.steps_planned, "steps_done": report.steps_done, "seconds": report.seconds,
            "last_losses": report.stats, "skipped_steps": report.skipped_steps}
