"""Pieces of the default model's recipe: VAE training, mirrored latents, the small assembly."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from puppet_master.training.cache import flip_example
from puppet_master.training.config import load_config
from puppet_master.training.vae import CropDataset, VAETrainConfig, train_vae
from puppet_master.pipelines import DEFAULT_MODEL_DIR
from puppet_master.video import write_video

REPO = Path(__file__).resolve().parent.parent


def _split(folder, n=3, size=64, frames=4):
    """A split folder of moving coloured squares on white (NAME.json + NAME.gif)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        video = np.full((frames, size, size, 3), 255, np.uint8)
        colour = rng.integers(0, 200, 3)
        for f in range(frames):
            video[f, 16 + 2 * f : 40 + 2 * f, 12:36] = colour
        write_video(video, folder / f"c{i}.gif")
        (folder / f"c{i}.json").write_text(json.dumps({"category": "Box", "drags": [{"start": [20, 20], "end": [20, 26]}]}))
    return folder


def test_crop_dataset_is_deterministic_and_in_range(tmp_path):
    frames = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(3)]
    ds = CropDataset(frames, [], crop=32, length=10, photo_share=0.5, seed=3)
    a, b = ds[4], ds[4]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(ds[4], ds[5])
    assert a.min() >= -1 and a.max() <= 1


def test_train_vae_learns_resumes_and_sets_the_scaling_factor(tmp_path):
    data = _split(tmp_path / "split", n=12)
    cfg = VAETrainConfig(data=[str(data)], output_dir=str(tmp_path / "run"), block_out_channels=(8, 16, 16),
                         latent_channels=4, crop=32, batch_size=4, max_steps=40, lr=2e-3, checkpoint_every=20,
                         use_photos=False)
    short = dataclasses.replace(cfg, max_steps=20)
    train_vae(short, progress=False)
    first = json.loads((tmp_path / "run" / "vae-report.json").read_text())
    report = train_vae(cfg, progress=False)  # resumes from step 20 of the same folder
    assert report["steps"] == 40 and first["steps"] == 20
    assert report["held_out_psnr_db"] > first["held_out_psnr_db"]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tmp_path / "run" / "vae")
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor == pytest.approx(1 / report["latent_std"])
    x = torch.zeros(1, 3, 64, 64)
    assert vae.encode(x).latent_dist.mode().shape == (1, 4, 16, 16)


def test_flip_example_mirrors_used_slots_only():
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    drags = torch.zeros(2, 3, 4)
    drags[:, 0] = torch.tensor([[0.25, 0.5, 0.25, 0.5], [0.25, 0.5, 0.4, 0.6]])
    out_frames, out = flip_example(frames, drags)
    np.testing.assert_array_equal(out_frames[:, :, 0], frames[:, :, -1])
    torch.testing.assert_close(out[:, 0], torch.tensor([[0.75, 0.5, 0.75, 0.5], [0.75, 0.5, 0.6, 0.6]]))
    assert out[:, 1:].eq(0).all(), "unused slots stay all zeros"
    back_frames, back = flip_example(out_frames, out)
    np.testing.assert_array_equal(back_frames, frames)
    torch.testing.assert_close(back, drags)


def test_list_overrides_index_sources():
    cfg = load_config(None, ["data.sources=[{type: synthetic}, {type: synthetic}]", "data.sources.1.num_clips=7"])
    assert [s.num_clips for s in cfg.data.sources] == [64, 7]


def test_random_model_small_with_a_trained_vae(tmp_path):
    from puppet_master.pipelines import PuppetMasterPipeline
    from puppet_master.pipelines.components import make_image_vae

    make_image_vae((8, 16, 16, 16, 16), latent_channels=8, scaling_factor=0.5).save_pretrained(tmp_path / "vae")
    run = subprocess.run([sys.executable, "-m", "puppet_master.cli", "random-model", str(tmp_path / "m"), "--size", "small",
                          "--vae", str(tmp_path / "vae")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    pipe = PuppetMasterPipeline.from_pretrained(tmp_path / "m")
    assert pipe.image_encoder is None and pipe.vae_scale_factor == 16 and pipe.vae.config.scaling_factor == 0.5
    assert pipe.unet.config.in_channels == 16 and pipe.unet.config.out_channels == 8
    frames = pipe(torch.rand(3, 128, 128), torch.zeros(1, 3, 5, 4), num_frames=3, height=128, width=128,
                  num_inference_steps=2, output_type="np").frames
    assert frames.shape == (1, 3, 128, 128, 3)
    bad = subprocess.run([sys.executable, "-m", "puppet_master.cli", "random-model", str(tmp_path / "m2"), "--vae",
                          str(tmp_path / "nothing")], capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr and not (tmp_path / "m2").exists()


def test_foreground_mask_and_object_psnr():
    from puppet_master.pipelines.components import make_image_vae
    from puppet_master.training.vae import foreground_mask, reconstruction_psnr

    x = torch.ones(1, 3, 8, 8)
    x[:, 0, 2:4, 2:4] = -1.0  # a cyan square on white
    mask = foreground_mask(x)
    assert mask.shape == (1, 1, 8, 8) and mask.sum() == 4 and mask[0, 0, 2, 2] == 1
    vae = make_image_vae((8, 16), latent_channels=4)
    frame = np.full((32, 32, 3), 255, np.uint8)
    frame[8:20, 8:20] = (200, 30, 30)
    whole, obj = reconstruction_psnr(vae, [frame]), reconstruction_psnr(vae, [frame], foreground=True)
    assert np.isfinite(whole) and np.isfinite(obj) and whole != obj
    assert np.isnan(reconstruction_psnr(vae, [np.full((32, 32, 3), 255, np.uint8)], foreground=True))


def test_chroma_l1_sees_colour_but_not_brightness():
    from puppet_master.training.vae import chroma_l1

    x = torch.zeros(1, 3, 8, 8)
    x[:, 0] = 0.8  # a red-ish image
    grey = x.mean(1, keepdim=True).expand_as(x)
    assert chroma_l1(x, x).item() == 0.0
    assert chroma_l1(x + 0.3, x).item() == pytest.approx(0.0, abs=1e-7)  # brightness change only
    assert chroma_l1(grey, x).item() == pytest.approx((0.8 * 2 / 3 + 0.8 / 3 * 2) / 3)
    weight = torch.ones(1, 1, 8, 8)
    weight[..., :4] = 5.0
    half = x.clone()
    half[..., 4:] = grey[..., 4:]  # colour lost only where the weight is 1
    assert chroma_l1(half, x, weight).item() < chroma_l1(half, x).item()


def _option_pairs(tokens):
    """``--flag value`` pairs and bare ``--flags`` of a command line, without its output folder and -q."""
    pairs, i = set(), 0
    while i < len(tokens):
        if tokens[i].startswith("--") and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            pairs.add((tokens[i], tokens[i + 1]))
            i += 2
        else:
            pairs.add((tokens[i], None))
            i += 1
    return {p for p in pairs if p[0] not in ("--out", "--data", "-q")}


def test_recipe_script_runs_the_stages_that_made_the_shipped_weights():
    """recipes/default-model/train.sh (printed with DRY_RUN=1) = the provenance shipped beside the weights."""
    run = subprocess.run(["bash", str(REPO / "recipes" / "default-model" / "train.sh")], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1"}, timeout=60)
    assert run.returncode == 0, run.stderr
    commands = [shlex.split(line) for line in run.stdout.splitlines() if line.strip()]
    provenance = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())

    # data and VAE: the same options as recorded
    built = [_option_pairs(c[3:]) for c in commands if c[:3] == ["puppet-master", "data", "build"]]
    for recorded in (provenance["data"]["train"], provenance["data"]["held_out"]):
        assert _option_pairs(shlex.split(recorded)[3:]) in built
    vae = next(c for c in commands if c[:2] == ["puppet-master", "train-vae"])
    assert _option_pairs(vae[2:]) == _option_pairs(shlex.split(provenance["vae"]["command"])[2:])
    latents = next(c for c in commands if c[:2] == ["puppet-master", "cache-latents"])
    latents_dir = latents[latents.index("--out") + 1]

    # UNet stages: steps, schedule length, lr, warm-up, seed, EMA, and each starts from the previous one's export
    trains = [c for c in commands if c[:2] == ["puppet-master", "train"]]
    stages = provenance["unet_stages"]
    assert len(trains) == len(stages)
    previous = None
    for tokens, stage in zip(trains, stages):
        assert tokens[2] == "--config"
        cfg = load_config(REPO / tokens[3], [t for t in tokens[4:] if not t.startswith("resume=")])
        assert cfg.output_dir == stage["output_dir"], stage["name"]
        assert (cfg.stop_at_step or cfg.max_steps, cfg.max_steps) == (stage["steps"], stage["lr_schedule_steps"]), stage["name"]
        assert (cfg.optim.lr, cfg.optim.lr_scheduler, cfg.optim.warmup_steps) == (
            stage["lr"], stage["lr_scheduler"], stage["warmup_steps"]), stage["name"]
        assert (cfg.seed, cfg.ema_decay) == (stage["seed"], stage["ema_decay"]), stage["name"]
        assert {s.path for s in cfg.data.sources} == {latents_dir}
        if previous is None:
            assert cfg.model.init == "scratch"
        else:
            assert cfg.model.init == "checkpoint" and cfg.model.pretrained == stage["starts_from"] == f"{previous}/pipeline"
        if cfg.objective == "consistency":  # the last stage: the student of the stage before, its own teacher
            assert stage["name"] == "student" and cfg.distill.teacher == cfg.model.pretrained
        else:
            edm_config = cfg
        previous = cfg.output_dir
    assert edm_config.model.unet["drag_warp_image_latents"] is True
    assert cfg.objective == "consistency"  # the shipped weights are the distilled student

    ship = next(c for c in commands if any(t.endswith("ship_default_model.py") for t in c))
    assert ship[-1] == f"{stages[-1]['output_dir']}/pipeline"
    # the shipped VAE is the tiny one distilled from the student pipeline's, with the recorded options
    distil = next(c for c in commands if c[:2] == ["puppet-master", "distil-vae"])
    assert _option_pairs(distil[2:]) == _option_pairs(shlex.split(provenance["tiny_vae"]["command"])[2:])
    assert distil[distil.index("--teacher") + 1] == ship[-1]
    assert ship[ship.index("--vae") + 1] == distil[distil.index("--out") + 1] + "/vae"
    assert json.loads((DEFAULT_MODEL_DIR / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderKLTinyDecoder"
    # the sampling settings it ships are the shipped model's
    shipped = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    for flag, key in (("--warp-init-sigma", "warp_init_sigma"), ("--detail-transfer-radius", "detail_transfer_radius"),
                      ("--chroma-anchor-sigma", "chroma_anchor_sigma")):
        assert float(ship[ship.index(flag) + 1]) == shipped[key], key
    assert (ship[ship.index("--tie-first-frame") + 1] == "on") == shipped["tie_first_frame"]
    assert float(ship[ship.index("--tie-release-sigma") + 1]) == shipped["tie_release_sigma"]
    # the student's own sampling, stated by its export, is what ships
    assert (shipped["num_inference_steps"], shipped["max_guidance_scale"]) == (cfg.distill.sampler_steps, 1.0)
