"""Reconstruction quality of a pipeline's image VAE on the first frames of evaluation folders.

    python scripts/vae_reconstruction.py [--model default] FOLDER [FOLDER ...] [--all-frames] [--sheet OUT.png]

FOLDER is a Drag-a-Move test folder (``*.pkl``) or a split folder (``*.json`` + video), read
with the same loaders as ``puppet-master evaluate`` (frames at 256 × 256). Each frame goes
through ``vae.encode`` → latent mean → ``vae.decode``; the script prints, per folder, the
number of frames and the mean and minimum PSNR (dB, 8-bit frames) and mean SSIM of the
reconstructions. No UNet output can be closer to the input than its VAE allows, so this
bounds every frame-quality figure of the model. ``--sheet`` writes the first 8 inputs
(top row) above their reconstructions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from puppet_master.data.splits import load_eval_dataset
from puppet_master.evaluation.metrics import psnr_per_frame, ssim_per_frame
from puppet_master.pipelines.loading import load_pipeline


def folder_frames(folder: Path, all_frames: bool) -> np.ndarray:
    """uint8 ``(F, 256, 256, 3)``: frame 0 (or every frame) of each example in ``folder``."""
    _, examples = load_eval_dataset(folder)
    return np.concatenate([ex.frames if all_frames else ex.frames[:1] for ex in examples])


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray, batch: int = 8) -> np.ndarray:
    """uint8 frames through ``vae`` (encode → mean latent → decode), same shape as ``frames``."""
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(frames[i:i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        y = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()).sample.float().clamp(-1, 1)
        out.append(y.add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--model", default="default", help="pipeline folder, hub id or 'default'")
    ap.add_argument("--all-frames", action="store_true", help="every frame, not only frame 0")
    ap.add_argument("--sheet", type=Path, default=None, help="PNG of inputs above reconstructions (first folder)")
    args = ap.parse_args()
    vae = load_pipeline(args.model).vae.float().eval()
    for i, folder in enumerate(args.folders):
        frames = folder_frames(folder, args.all_frames)
        recon = reconstruct(vae, frames)
        psnr, ssim = psnr_per_frame(recon, frames), ssim_per_frame(recon, frames)
        print(json.dumps(dict(folder=str(folder), frames=len(frames), psnr_db=round(float(psnr.mean()), 2),
                              psnr_min_db=round(float(psnr.min()), 2), ssim=round(float(ssim.mean()), 3))))
        if args.sheet is not None and i == 0:
            import imageio.v3 as iio

            k = min(8, len(frames))
            iio.imwrite(args.sheet, np.concatenate([np.concatenate(list(frames[:k]), 1),
                                                    np.concatenate(list(recon[:k]), 1)], 0))


if __name__ == "__main__":
    main()
