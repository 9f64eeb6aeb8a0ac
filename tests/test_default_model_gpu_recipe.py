"""The default model's accelerator recipe: device-side VAE batches, in-memory UNet training, the script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from puppet_master.training.recipe import UNetRecipeConfig, encode_clips, lr_factor, train_unet_in_memory
from puppet_master.training.vae import (FastVAEConfig, make_image_vae, random_crops, recolour,
                                        synthetic_object_images, train_vae_fast)
from puppet_master.video import write_video

ROOT = Path(__file__).resolve().parents[1]


def test_synthetic_objects_are_seeded_pictures_on_a_light_background():
    a = synthetic_object_images(6, 32, torch.Generator().manual_seed(1))
    b = synthetic_object_images(6, 32, torch.Generator().manual_seed(1))
    c = synthetic_object_images(6, 32, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    corners = a[:, :, 0, 0]  # the border is background unless a shape covers it
    assert (corners > 0.4).float().mean() > 0.5
    assert (a.amin(dim=1) < 0.5).any(), "some object pixels are not near-white"


def test_recolour_keeps_white_and_shape():
    x = torch.ones(8, 3, 8, 8)
    x[:, 0, 2:5, 2:5] = -0.5
    y = recolour(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :, 0, 0], torch.ones(8, 3))
    assert not torch.equal(y[:, :, 3, 3], x[:, :, 3, 3])


def test_native_crops_are_windows_of_their_image():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8))
    crops = random_crops(images, 6, 16, torch.Generator().manual_seed(3), native_share=1.0)
    assert crops.shape == (6, 3, 16, 16)
    pixels = ((crops + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for crop in pixels:
        found = False
        for img in images.numpy():
            for view in (img, img[:, ::-1]):
                for y in range(view.shape[0] - 15):
                    for x in range(view.shape[1] - 15):
                        if np.array_equal(view[y : y + 16, x : x + 16], crop):
                            found = True
        assert found, "a native-scale crop is an exact (possibly mirrored) window of one image"


def test_lr_factor_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert lr_factor(9, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(100, 100, 10, floor=0.1) == pytest.approx(0.1)


def test_train_vae_fast_respects_steps_and_budget():
    vae = make_image_vae((8, 16), latent_channels=4)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    photos = [torch.from_numpy(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8))]
    cfg = FastVAEConfig(crop=16, batch_size=6, warmup_steps=2)
    saved, logged = [], []
    before = [p.detach().clone() for p in vae.parameters()]
    report = train_vae_fast(vae, frames, photos, cfg, steps=3, budget_s=600, log=logged.append,
                            save=lambda m, s: saved.append(s))
    assert report["steps_done"] == 3 and report["steps_planned"] == 3 and saved[-1] == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert not vae.training
    none = train_vae_fast(vae, frames, photos, cfg, steps=5, budget_s=0.0)
    assert none["steps_done"] == 0


def _tiny_unet():
    from puppet_master.models import UNetDragSpatioTemporalConditionModel
    from puppet_master.pipelines.components import SIZES

    kw = dict(SIZES["tiny"]["unet"], in_channels=8, out_channels=4, num_frames=3, drag_warp_image_latents=True)
    return UNetDragSpatioTemporalConditionModel(**kw)


def test_in_memory_unet_training_moves_the_ema_and_saves():
    unet = _tiny_unet()
    g = torch.Generator().manual_seed(0)
    data = {"latents": torch.randn(4, 3, 4, 8, 8, generator=g), "drags": torch.zeros(4, 3, 5, 4),
            "moving": torch.tensor([0.0, 0.1, 0.0, 0.2])}
    data["drags"][:, :, 0] = torch.tensor([0.5, 0.5, 0.6, 0.5])
    start = {k: v.clone() for k, v in unet.state_dict().items()}
    saved = []
    cfg = UNetRecipeConfig(batch_size=2, warmup_steps=1, ema_decay=0.5)
    report = train_unet_in_memory(unet, data, 0.8, cfg, steps=2, budget_s=600, device="cpu",
                                  save=lambda m, s: saved.append((s, m)))
    assert report["steps_done"] == 2 and np.isfinite(report["loss"])
    step, ema = saved[-1]
    assert step == 2
    changed = [k for k, v in ema.state_dict().items() if not torch.equal(v, start[k])]
    assert changed, "the EMA weights moved"
    assert any(not torch.equal(ema.state_dict()[k], unet.state_dict()[k]) for k in changed), "EMA ≠ raw weights"


def test_encode_clips_mirrors_and_measures_motion():
    from puppet_master.data.splits import EvalExample

    vae = make_image_vae((8, 16), latent_channels=4).eval()
    frames = np.full((3, 16, 16, 3), 255, np.uint8)
    frames[:, 4:8, 2:6] = (200, 20, 20)
    drags = torch.zeros(3, 5, 4)
    drags[:, 0] = torch.tensor([[0.25, 0.4, 0.25, 0.4], [0.25, 0.4, 0.3, 0.4], [0.25, 0.4, 0.45, 0.4]])
    data = encode_clips(vae, [EvalExample("a", frames, drags)], "cpu", flip=True)
    assert data["latents"].shape == (2, 3, 4, 8, 8)
    torch.testing.assert_close(data["moving"], torch.tensor([0.2, 0.2]))
    torch.testing.assert_close(data["drags"][1, :, 0, 0], 1 - drags[:, 0, 0])


@pytest.mark.slow
def test_gpu_recipe_script_runs_end_to_end_on_cpu(tmp_path):
    from puppet_master.pipelines.components import make_scheduler

    base = tmp_path / "base"
    make_image_vae((8, 16, 16, 16), latent_channels=4, scaling_factor=0.7).save_pretrained(base / "vae")
    unet = _tiny_unet()
    unet.register_to_config(num_frames=14)
    unet.save_pretrained(base / "unet")
    make_scheduler().save_pretrained(base / "scheduler")
    data = tmp_path / "clips"
    data.mkdir()
    for i in range(2):
        video = np.full((14, 64, 64, 3), 255, np.uint8)
        for f in range(14):
            video[f, 20 + f : 36 + f, 10:30] = (30 * i, 120, 200)
        write_video(video, data / f"c{i}.gif")
        (data / f"c{i}.json").write_text(json.dumps({"category": "Box", "drags": [{"start": [20, 28], "end": [20, 41]}]}))
    val = tmp_path / "val"
    val.mkdir()
    import PIL.Image

    PIL.Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(val / "v.png")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "default-model" / "train_default_model_gpu.py"), "--data", str(data),
                          "--base", str(base), "--out", str(out), "--vae-steps", "2", "--unet-steps", "2",
                          "--vae-batch", "2", "--unet-batch", "1", "--device", "cpu", "--val", f"grey={val}"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["vae"]["steps_done"] == 2 and report["unet"]["steps_done"] == 2 and report["complete"]
    from puppet_master.pipelines import PuppetMasterPipeline

    pipe = PuppetMasterPipeline.from_pretrained(out / "pipeline")
    assert pipe.vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    assert pipe.unet.config.drag_warp_image_latents
    from safetensors import safe_open

    for part in ("unet", "vae"):
        with safe_open(str(out / "pipeline" / part / "diffusion_pytorch_model.safetensors"), "pt") as fh:
            assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"F16"}, "stored in float16 as shipped"
    assert set(report["vae"]["val_grey"]) == {"psnr", "ssim", "frames"}
    lines = [json.loads(line) for line in (out / "train-log.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end"
