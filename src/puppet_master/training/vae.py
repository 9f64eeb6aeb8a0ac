"""Train a small image VAE from scratch (the embedded default model's autoencoder).

The released Puppet-Master uses SVD's VAE; the embedded default model cannot (its
weights are not downloadable everywhere), so it ships its own small
``diffusers.AutoencoderKL``: by default 8× down-sampling to 4 latent channels, so that a
256×256 frame becomes a 32×32×4 latent, SVD's latent shape (a 16×-down, 8-channel
variant was tried first: cheaper for the UNet, but too blurred for the flow error to
see motion, docs/default-model.md).

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
import skimage.data
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.splits import split_video_path
from ..errors import UserInputError
from ..pipelines.components import make_image_vae
from ..video import read_video

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
    lr: float = 2e-4  # 1e-3 diverges into colourless reconstructions (docs/default-model.md)
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
    for thousands of steps (objects come back grey; docs/default-model.md).
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
    out.mkdir(parents=True, exist_ok=True)
    frames = collect_frames(cfg.data, cfg.frames_per_clip)
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
    start = 0
    if (out / "checkpoint" / "step.json").is_file():
        acc.load_state(str(out / "checkpoint"))
        start = json.loads((out / "checkpoint" / "step.json").read_text())["step"]
    dataset = CropDataset(train_frames, photos, cfg.crop, cfg.max_steps * cfg.batch_size, cfg.photo_share, cfg.seed)
    # stateless dataset: resuming at step s starts at item s·batch
    indices = list(range(start * cfg.batch_size, cfg.max_steps * cfg.batch_size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=cfg.batch_size, shuffle=False)
    vae.train()
    stats: dict = {}
    bar = tqdm(total=cfg.max_steps, initial=start, desc="training VAE", disable=not progress)
    step = start
    for batch in loader:
        loss, stats = vae_loss(vae, batch.to(acc.device), cfg)
        if not torch.isfinite(loss):
            raise RuntimeError(f"VAE loss became {loss.item()} at step {step}; resume from {out / 'checkpoint'} with a lower lr")
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        bar.update()
        bar.set_postfix(l1=f"{stats['l1']:.4f}", grad=f"{stats['grad']:.4f}")
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            _save_checkpoint(acc, out, step)
    bar.close()
    _save_checkpoint(acc, out, step)
    model = acc.unwrap_model(vae).eval()
    std = latent_std(model, train_frames)
    model.register_to_config(scaling_factor=1.0 / std)
    tmp = out / ".vae-partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if (out / "vae").exists():
        shutil.rmtree(out / "vae")
    tmp.rename(out / "vae")
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
    tmp_report = out / ".vae-report.json.partial"
    tmp_report.write_text(json.dumps(report, indent=2))
    os.replace(tmp_report, out / "vae-report.json")
    return report
