"""Train the embedded default model's VAE and drag UNet on one accelerator within a time budget.

    python recipes/default-model/train_default_model_gpu.py --data CLIPS --photos PHOTOS --out OUT --budget-s 300

CLIPS is a split folder (``NAME.json`` + ``NAME.webp``/``.gif``, as ``puppet-master data
build`` writes and ``recipes/default-model/pack_default_model_data.py`` packs), PHOTOS a folder of
photographs (PNG/JPEG). Starting from ``--base`` (default: the shipped default model) it

1. trains the VAE (``puppet_master.training.vae.train_vae_fast``) for ``--vae-steps``
   steps, or for ``--vae-share`` of the budget when not given;
2. encodes every clip and its mirror image with it (scaling factor = 1 / latent std);
3. fine-tunes the drag UNet on those latents (``puppet_master.training.recipe``) for
   ``--unet-steps`` steps, or for the rest of the budget;

and writes into OUT, atomically and again every ``--save-every-s`` seconds (so a run cut
short still leaves weights): ``vae/`` (float16, after stage 1), ``pipeline/`` (float16
VAE + EMA UNet + scheduler, a folder ``recipes/default-model/ship_default_model.py`` takes),
``train-log.jsonl`` (one JSON object per line, flushed) and ``report.json`` (the steps
taken: pass them as ``--vae-steps`` / ``--unet-steps`` to repeat the run). ``--val NAME=DIR``
folders of PNG frames are reconstructed by the VAE after stage 1 (PSNR / SSIM in the log);
they are never trained on. Runs on CPU too (``--device cpu``), slowly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from puppet_master.pipelines.loading import DEFAULT_MODEL_DIR
from puppet_master.training.recipe import UNetRecipeConfig, encode_clips, load_split_clips, train_unet_in_memory
from puppet_master.training.vae import FastVAEConfig, train_vae_fast

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_images(folder: Path) -> list[np.ndarray]:
    """RGB uint8 arrays of every PNG/JPEG in ``folder`` (sorted by name)."""
    import PIL.Image

    out = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
            with PIL.Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB")))
    return out


def save_atomic(out: Path, name: str, write) -> None:
    """``write(tmp_folder)`` then rename to ``out/name`` (replacing it)."""
    tmp = out / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    final = out / name
    old = out / f".{name}.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


@torch.no_grad()
def reconstruct(vae, frames: list[np.ndarray], device: str) -> np.ndarray:
    x = torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.cat([vae.decode(vae.encode(x[i : i + 16]).latent_dist.mode()).sample for i in range(0, len(x), 16)])
    return ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def main() -> int:
    from puppet_master.errors import UserInputError

    try:
        return run()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # keep the traceback in the log that comes back with the weights
        import traceback

        out = _OUT.get("out")
        if out is not None:
            with open(out / "train-log.jsonl", "a") as fh:
                fh.write(json.dumps({"event": "error", "traceback": traceback.format_exc()}) + "\n")
        raise


_OUT: dict = {}


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="training split folder (NAME.json + NAME.webp/.gif)")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photographs for the VAE")
    parser.add_argument("--val", action="append", default=[], help="NAME=DIR of PNG frames to measure the VAE on")
    parser.add_argument("--base", type=Path, default=DEFAULT_MODEL_DIR, help="pipeline to start from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget of the whole run")
    parser.add_argument("--vae-share", type=float, default=0.42, help="share of the budget for the VAE (no --vae-steps)")
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--vae-batch", type=int, default=64)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--unet-lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-clips", type=int, default=None, help="use only the first clips (tests)")
    parser.add_argument("--save-every-s", type=float, default=45.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    t0 = time.perf_counter()
    vals = {}
    for spec in args.val:
        name, _, folder = spec.partition("=")
        vals[name] = read_images(Path(folder)) if Path(folder).is_dir() else []
        if not name or not vals[name]:
            print(f"error: --val {spec!r} must be NAME=DIR with PNG/JPEG frames in DIR", file=sys.stderr)
            return 2
    if not args.data.is_dir():
        print(f"error: --data {str(args.data)!r} is not a folder (a split folder of NAME.json + NAME.webp)", file=sys.stderr)
        return 2
    if args.photos is not None and not args.photos.is_dir():
        print(f"error: --photos {str(args.photos)!r} is not a folder", file=sys.stderr)
        return 2
    out = args.out
    log_file = None

    def log(entry: dict) -> None:
        nonlocal log_file
        if log_file is None:
            out.mkdir(parents=True, exist_ok=True)
            _OUT["out"] = out
            log_file = open(out / "train-log.jsonl", "a", buffering=1)
        entry = {"t": round(time.perf_counter() - t0, 2), **entry}
        line = json.dumps(entry)
        log_file.write(line + "\n")
        log_file.flush()
        print(line, flush=True)

    device = args.device
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    log({"event": "start", "args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__})

    from diffusers import AutoencoderKL, EulerDiscreteScheduler

    from puppet_master.models import UNetDragSpatioTemporalConditionModel
    from puppet_master.pipelines import PuppetMasterPipeline

    photos = read_images(args.photos) if args.photos else []
    examples = load_split_clips(args.data, limit=args.max_clips, workers=min(16, os.cpu_count() or 1))
    log({"event": "data", "clips": len(examples), "photos": len(photos), "val": {k: len(v) for k, v in vals.items()},
         "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"})

    # ---- 1. VAE (built on CPU, then moved)
    vae = AutoencoderKL.from_pretrained(args.base, subfolder="vae", torch_dtype=torch.float32)
    frames = torch.from_numpy(np.concatenate([ex.frames for ex in examples])).to(device)
    photo_t = [torch.from_numpy(np.array(p)).to(device) for p in photos if min(p.shape[:2]) >= 16]
    vae_cfg = FastVAEConfig(batch_size=args.vae_batch, seed=args.seed)

    def save_vae(model, step: int) -> None:
        copy = AutoencoderKL.from_config(model.config)
        copy.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
        save_atomic(out, "vae", lambda tmp: copy.to(torch.float16).save_pretrained(tmp))
        log({"stage": "vae", "event": "saved", "step": step})

    vae_budget = args.vae_share * args.budget_s
    vae_report = train_vae_fast(vae, frames, photo_t, vae_cfg, args.vae_steps, vae_budget, log=log, save=save_vae,
                                save_every_s=args.save_every_s, device=device)
    del frames
    vae_report["config"] = vars(vae_cfg)
    log({"stage": "vae", "event": "done", **vae_report})
    from puppet_master.evaluation.metrics import psnr_per_frame, ssim_per_frame

    for name, images in vals.items():
        rec = reconstruct(vae, images, device)
        target = np.stack(images)
        vae_report[f"val_{name}"] = {"psnr": float(psnr_per_frame(rec, target).mean()),
                                     "ssim": float(ssim_per_frame(rec, target).mean()), "frames": len(images)}
        log({"stage": "vae", "event": "val", "name": name, **vae_report[f"val_{name}"]})

    # ---- 2. latents of every clip and its mirror image
    t_enc = time.perf_counter()
    data = encode_clips(vae, examples, device, flip=True)
    std = float(data["latents"].std())
    vae.register_to_config(scaling_factor=1.0 / std)
    save_vae(vae, vae_report["steps_done"])
    log({"stage": "encode", "clips": int(data["latents"].shape[0]), "latent_std": std,
         "moving_clips": int((data["moving"] >= 0.04).sum()), "s": time.perf_counter() - t_enc})

    # ---- 3. drag UNet from the base model's (built on CPU, then moved)
    unet = UNetDragSpatioTemporalConditionModel.from_pretrained(args.base, subfolder="unet", torch_dtype=torch.float32)
    scheduler = EulerDiscreteScheduler.from_pretrained(args.base, subfolder="scheduler")
    vae_cpu = AutoencoderKL.from_config(vae.config)
    vae_cpu.load_state_dict({k: v.detach().float().cpu() for k, v in vae.state_dict().items()})
    vae_cpu.to(torch.float16)

    def save_pipeline(ema_unet, step: int) -> None:
        unet_cpu = UNetDragSpatioTemporalConditionModel.from_config(ema_unet.config)
        unet_cpu.load_state_dict({k: v.detach().float().cpu() for k, v in ema_unet.state_dict().items()})
        pipe = PuppetMasterPipeline(vae=vae_cpu, unet=unet_cpu.to(torch.float16), scheduler=scheduler)
        save_atomic(out, "pipeline", lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
        log({"stage": "unet", "event": "saved", "step": step})

    unet_cfg = UNetRecipeConfig(batch_size=args.unet_batch, lr=args.unet_lr, seed=args.seed)
    reserve = 12.0  # final export and report
    unet_budget = args.budget_s - (time.perf_counter() - t0) - reserve
    unet_report = train_unet_in_memory(unet, data, 1.0 / std, unet_cfg, args.unet_steps, unet_budget, device, log=log,
                                       save=save_pipeline, save_every_s=args.save_every_s)
    unet_report["config"] = vars(unet_cfg)
    log({"stage": "unet", "event": "done", **unet_report})
    report = {"vae": vae_report, "unet": unet_report, "latent_std": std, "scaling_factor": 1.0 / std,
              "clips": len(examples), "seconds": time.perf_counter() - t0,
              "complete": vae_report["steps_done"] == vae_report["steps_planned"]
                          and unet_report["steps_done"] == unet_report["steps_planned"],
              "repeat": f"--vae-steps {vae_report['steps_done']} --unet-steps {unet_report['steps_done']} "
                        f"--vae-batch {args.vae_batch} --unet-batch {args.unet_batch} --unet-lr {args.unet_lr} "
                        f"--seed {args.seed}"}
    # a stage cut short by the budget ran a schedule planned for steps_planned: repeat with
    # --vae-steps / --unet-steps = steps_planned and stop at steps_done to reproduce it exactly
    tmp = out / ".report.json.partial"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out / "report.json")
    log({"event": "end", "seconds": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
