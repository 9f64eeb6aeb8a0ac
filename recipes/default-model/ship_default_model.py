"""Copy a trained pipeline into the package as the embedded default model (fp16 safetensors).

    python recipes/default-model/ship_default_model.py runs/default-model/unet-stage3b/pipeline

writes ``src/puppet_master/assets/default-model/`` (replacing it atomically) with the
UNet and VAE stored in float16; ``load_pipeline`` upcasts to float32 on CPU. The model
card (``README.md``) and the provenance (``training.json``) beside the weights are kept:
update them for the new weights. Config files are written without ``_name_or_path`` (the
folder the weights were loaded from, a path on the machine that trained them). The
pipeline's settings (model_index.json; not in the paper) ``warp_init_sigma``,
``detail_transfer_radius`` and ``chroma_anchor_sigma`` are those of ``--warp-init-sigma``,
``--detail-transfer-radius`` and ``--chroma-anchor-sigma``, by default the currently shipped ones. ``--vae FOLDER`` replaces the pipeline's VAE by
another that shares its latent space (e.g. the tiny one ``puppet-master distil-vae`` makes).
Prints the size on disk, which must stay within 40 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from puppet_master.errors import UserInputError
from puppet_master.options import PuppetMasterOptions
from puppet_master.pipelines import PuppetMasterPipeline
from puppet_master.pipelines.loading import DEFAULT_MODEL_DIR

LIMIT_BYTES = 40 * 1000 * 1000
KEEP = ("README.md", "training.json", "evaluation")  # written by people, not by save_pretrained


def strip_local_paths(folder: Path) -> None:
    """Drop ``_name_or_path`` from every config JSON under ``folder`` (it names a local folder)."""
    for f in folder.rglob("*.json"):
        config = json.loads(f.read_text())
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            f.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="pipeline folder written by `puppet-master train` (OUTPUT_DIR/pipeline)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--warp-init-sigma", type=float, default=None,
                        help="sampling start from the drag-warped first frame at this σ (0: the paper's sampling; "
                             "default: keep the shipped model's setting)")
    parser.add_argument("--detail-transfer-radius", type=float, default=None,
                        help="add the input's detail lost by the VAE back, moved along the drags with this radius in "
                             "latent cells (0: decode as the paper; default: keep the shipped model's setting)")
    parser.add_argument("--chroma-anchor-sigma", type=float, default=None,
                        help="take the colour coarser than a Gaussian of this many pixels from the input moved along "
                             "the drags (0: the generated colour; default: keep the shipped model's setting)")
    parser.add_argument("--tie-first-frame", choices=("on", "off"), default=None,
                        help="hold frame 0 at the input while sampling (default: keep the shipped model's setting)")
    parser.add_argument("--tie-release-sigma", type=float, default=None,
                        help="σ below which the tie lets frame 0 go (0: held to the end; default: keep the shipped "
                             "model's setting)")
    parser.add_argument("--vae", type=Path, default=None,
                        help="a VAE folder (AutoencoderKL, AutoencoderKLTinyDecoder or AutoencoderTiny) to ship instead of the "
                             "pipeline's own, e.g. runs/default-model/tiny-vae/vae from `puppet-master distil-vae`")
    args = parser.parse_args()
    shipped = json.loads((args.out / "model_index.json").read_text()) if (args.out / "model_index.json").is_file() else {}
    settings = {}
    names = ("warp_init_sigma", "detail_transfer_radius", "chroma_anchor_sigma")
    try:  # the checks of animate's --warp-init-sigma / --detail-transfer-radius / --chroma-anchor-sigma
        PuppetMasterOptions.from_values({name: getattr(args, name) for name in names})
    except UserInputError as exc:
        parser.error(str(exc))
    for name in names:
        value = getattr(args, name)
        settings[name] = (shipped.get(name) if value is None else value) or None
    tie = shipped.get("tie_first_frame", False) if args.tie_first_frame is None else args.tie_first_frame == "on"
    settings["tie_first_frame"] = bool(tie)
    release = shipped.get("tie_release_sigma") if args.tie_release_sigma is None else args.tie_release_sigma
    if release is not None and not release >= 0:
        parser.error(f"--tie-release-sigma must be >= 0, got {release}")
    settings["tie_release_sigma"] = release or None
    pipe = PuppetMasterPipeline.from_pretrained(args.pipeline)
    pipe.register_to_config(**settings)  # the pipeline's own sampling (steps, guidance of a student) is kept
    if args.vae is not None:
        from diffusers import AutoencoderKL, AutoencoderTiny

        from puppet_master.models import AutoencoderKLTinyDecoder

        classes = {c.__name__: c for c in (AutoencoderKL, AutoencoderKLTinyDecoder, AutoencoderTiny)}
        config = json.loads((args.vae / "config.json").read_text()) if (args.vae / "config.json").is_file() else {}
        if config.get("_class_name") not in classes:
            parser.error(f"--vae {args.vae}: not a folder of an {', '.join(classes)} (config.json)")
        vae = classes[config["_class_name"]].from_pretrained(args.vae, use_safetensors=True)
        if vae.config.scaling_factor != pipe.vae.config.scaling_factor:
            parser.error(f"--vae {args.vae}: scaling factor {vae.config.scaling_factor} is not the pipeline VAE's "
                         f"{pipe.vae.config.scaling_factor}: it does not share the UNet's latent space")
        pipe.register_modules(vae=vae)
    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    tmp = args.out.with_name(f".{args.out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    strip_local_paths(tmp)
    # keep the model card, provenance and figures that live beside the weights
    if args.out.exists():
        for keep in KEEP:
            if (args.out / keep).exists():
                src = args.out / keep
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / keep)
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    for f in args.out.rglob("*"):  # safetensors writes 0600; installed package data must be readable by all
        f.chmod(0o755 if f.is_dir() else 0o644)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"shipped {args.pipeline} -> {args.out}: {size / 1e6:.1f} MB on disk")
    return 0 if size <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
