"""Print the drag-usage probe (puppet_master.evaluation.drag_usage) of a drag UNet.

    python scripts/probe_drag_usage.py RUN/unet-stage2/pipeline RUN/latents-test
    python scripts/probe_drag_usage.py RUN/unet/pipeline RUN/latents-test --checkpoint RUN/unet-stage2/checkpoints/step-00005000

The UNet comes from a pipeline folder (its ``unet/``) or a UNet folder; with
``--checkpoint`` the EMA weights of a training checkpoint replace its weights (same
architecture). The latent folder is written by ``puppet-master cache-latents`` on a
held-out split with the pipeline's VAE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from puppet_master.errors import UserInputError
from puppet_master.evaluation.drag_usage import drag_usage, load_latent_clips
from puppet_master.models import UNetDragSpatioTemporalConditionModel
from puppet_master.training.export import load_ema_weights


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="pipeline folder or UNet folder")
    ap.add_argument("latents", type=Path, help="latent-cache folder of held-out clips")
    ap.add_argument("--checkpoint", type=Path, help="training checkpoint whose EMA weights to probe")
    ap.add_argument("--sigma", type=float, action="append", help="noise levels (default 0.5, 1.5, 4)")
    args = ap.parse_args()
    try:
        results = probe(args)
    except (UserInputError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(f"sigma {r.sigma:g}: moving-cell error with drags {r.error_with_drags:.4f}, without "
              f"{r.error_without_drags:.4f} (gain {100 * r.gain:.1f} %), copy frame 0 {r.error_copy_first_frame:.4f}, "
              f"{r.num_clips} clips")
    return 0


def probe(args):
    """Load the UNet (and EMA weights) and run the probe; user mistakes raise, the caller reports them."""
    sub = "unet" if (args.model / "unet" / "config.json").is_file() else None
    unet = UNetDragSpatioTemporalConditionModel.from_pretrained(args.model, subfolder=sub).float().eval()
    if args.checkpoint:
        with torch.no_grad():
            for param, shadow in zip(unet.parameters(), load_ema_weights(args.checkpoint), strict=True):
                param.copy_(shadow)
    return drag_usage(unet, load_latent_clips(args.latents), tuple(args.sigma or (0.5, 1.5, 4.0)))


if __name__ == "__main__":
    sys.exit(main())
