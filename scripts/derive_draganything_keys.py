"""Write the state-dict key/shape list of the released DragAnything ControlNet (test data).

    python scripts/derive_draganything_keys.py tests/data/draganything_controlnet_keys.json

The released ``weijiawu/DragAnything`` folder cannot be downloaded here, so the list is
derived, independently of ``puppet_master.models.DragAnythingControlNetModel``, from
what the public implementation (github.com/showlab/DragAnything, ``models/DragAnything.py``)
builds:

* the modules it copies from SVD's UNet, with SVD's UNet configuration (its
  ``from_unet`` passes that configuration on; the img2vid and img2vid-xt UNets have the
  same sizes, diffusers' ``UNetSpatioTemporalConditionModel`` defaults): ``conv_in``,
  ``time_embedding``, ``add_embedding``, ``down_blocks.*``, ``mid_block.*``, read here from
  diffusers' SVD UNet built on the ``meta`` device;
* the modules it adds, listed by hand from its constructor: one zero 1×1 convolution per
  skip connection (``controlnet_down_blocks.0..11``) and for the mid block
  (``controlnet_mid_block``); the conditioning embedder ``controlnet_cond_embedding`` with a
  3→16 input convolution, three (3×3, stride-2 3×3) pairs over widths 16, 32, 96, 256 and a
  zero 3×3 256→320 output convolution for the trajectory maps, and three pairs over
  widths 160, 160, 256, 256 plus a zero 3×3 256→320 output convolution for the entity maps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from diffusers import UNetSpatioTemporalConditionModel

COPIED_FROM_UNET = ("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.")
TRAJECTORY_WIDTHS = (16, 32, 96, 256)
ENTITY_WIDTHS = (160, 160, 256, 256)


def _conv(prefix: str, c_out: int, c_in: int, k: int) -> dict[str, list[int]]:
    return {f"{prefix}.weight": [c_out, c_in, k, k], f"{prefix}.bias": [c_out]}


def derive() -> dict:
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel()  # SVD's configuration
    keys = {k: list(v.shape) for k, v in unet.state_dict().items() if k.startswith(COPIED_FROM_UNET)}
    channels = list(unet.config.block_out_channels)
    layers = unet.config.layers_per_block
    skip_channels = [channels[0]]
    for i, c in enumerate(channels):
        skip_channels += [c] * (layers + (1 if i < len(channels) - 1 else 0))
    for j, c in enumerate(skip_channels):
        keys.update(_conv(f"controlnet_down_blocks.{j}", c, c, 1))
    keys.update(_conv("controlnet_mid_block", channels[-1], channels[-1], 1))
    p = "controlnet_cond_embedding"
    keys.update(_conv(f"{p}.conv_in", TRAJECTORY_WIDTHS[0], 3, 3))
    for name, widths in (("blocks", TRAJECTORY_WIDTHS), ("blocks_feature", ENTITY_WIDTHS)):
        for s, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            keys.update(_conv(f"{p}.{name}.{2 * s}", c_in, c_in, 3))
            keys.update(_conv(f"{p}.{name}.{2 * s + 1}", c_out, c_in, 3))
    keys.update(_conv(f"{p}.conv_out", channels[0], TRAJECTORY_WIDTHS[-1], 3))
    keys.update(_conv(f"{p}.conv_out_feature", channels[0], ENTITY_WIDTHS[-1], 3))
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet.config.items() if not k.startswith("_")}
    return {
        "description": "state-dict keys and shapes of DragAnything's ControlNet (DragAnythingSDVModel) for SVD's "
                       "UNet configuration; derived by scripts/derive_draganything_keys.py",
        "svd_unet_config": config,
        "num_parameters": int(sum(torch.Size(s).numel() for s in keys.values())),
        "keys": dict(sorted(keys.items())),
    }


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(derive(), indent=0, separators=(",", ":")) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
