"""The tiny decoder (and encoder) distilled from an image VAE: training, resuming, its latent space, the pipeline on it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from puppet_master.errors import UserInputError
from puppet_master.models import AutoencoderKLTinyDecoder
from puppet_master.pipelines import PuppetMasterPipeline, build_components
from puppet_master.pipelines.components import make_image_vae
from puppet_master.training.tiny_vae import TinyVAEConfig, distil_tiny_vae, load_teacher_vae, make_tiny_vae
from puppet_master.video import write_video


def _split(folder, n=12, size=64, frames=4):
    """Clips of coloured squares moving on white (NAME.json + NAME.gif)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        video = np.full((frames, size, size, 3), 255, np.uint8)
        colour = rng.integers(0, 200, 3)
        for f in range(frames):
            video[f, 10 + 3 * f : 34 + 3 * f, 8 + i : 30 + i] = colour
        write_video(video, folder / f"c{i}.gif")
        (folder / f"c{i}.json").write_text(json.dumps({"drags": [{"start": [20, 20], "end": [20, 26]}]}))
    return folder


def _teacher(tmp_path):
    torch.manual_seed(0)
    vae = make_image_vae((8, 16, 16), latent_channels=4, scaling_factor=0.7).eval()
    vae.save_pretrained(tmp_path / "teacher")
    return load_teacher_vae(tmp_path / "teacher")


def test_tiny_decoder_learns_the_teachers_decoder_keeps_its_encoder_and_resumes(tmp_path):
    teacher = _teacher(tmp_path)
    data = _split(tmp_path / "split")
    cfg = TinyVAEConfig(data=[str(data)], output_dir=str(tmp_path / "run"), decoder_channels=16,
                        num_decoder_blocks=(1, 1, 1), crop=32, batch_size=4, max_steps=80, lr=2e-3,
                        checkpoint_every=20, use_photos=False)
    first = distil_tiny_vae(dataclasses.replace(cfg, max_steps=20), teacher, progress=False)
    report = distil_tiny_vae(cfg, teacher, progress=False)  # resumes from step 20 of the same folder
    assert first["steps"] == 20 and report["steps"] == 80
    assert report["held_out_decoder_psnr_db"] > first["held_out_decoder_psnr_db"] + 3
    assert report["held_out_encoder_rmse"] == 0.0  # the teacher's encoder, untouched by training
    assert report["decoder_parameters"] < report["teacher_decoder_parameters"]
    student = AutoencoderKLTinyDecoder.from_pretrained(tmp_path / "run" / "vae")
    assert student.config.scaling_factor == pytest.approx(0.7) and student.config.latent_channels == 4
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(student.encode(x).latent_dist.mode(), teacher.encode(x).latent_dist.mode())
        assert student.decode(torch.zeros(1, 4, 16, 16)).sample.shape == (1, 3, 64, 64)
    assert json.loads((tmp_path / "run" / "vae-report.json").read_text())["steps"] == 80


def test_distilled_encoder_learns_the_teachers_latents(tmp_path):
    teacher = _teacher(tmp_path)
    data = _split(tmp_path / "split")
    cfg = TinyVAEConfig(data=[str(data)], output_dir=str(tmp_path / "run"), encoder="distil", encoder_channels=16,
                        decoder_channels=16, num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), crop=32,
                        batch_size=4, max_steps=60, lr=2e-3, checkpoint_every=30, use_photos=False)
    first = distil_tiny_vae(dataclasses.replace(cfg, max_steps=10), teacher, progress=False)
    report = distil_tiny_vae(cfg, teacher, progress=False)
    assert report["held_out_encoder_rmse"] < 0.8 * first["held_out_encoder_rmse"]
    assert report["held_out_decoder_psnr_db"] > first["held_out_decoder_psnr_db"] + 3
    student = AutoencoderTiny.from_pretrained(tmp_path / "run" / "vae")
    assert student.config.scaling_factor == pytest.approx(0.7)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert student.encode(x).latents.shape == teacher.encode(x).latent_dist.mode().shape == (2, 4, 16, 16)


def test_teacher_and_sizes_are_checked(tmp_path, tiny_pipeline_dir):
    with pytest.raises(UserInputError, match="AutoencoderKLTemporalDecoder"):
        load_teacher_vae(tiny_pipeline_dir)  # SVD's temporal decoder: no per-frame latent space to distil
    with pytest.raises(UserInputError, match="no VAE there"):
        load_teacher_vae(tmp_path)
    teacher = _teacher(tmp_path)
    with pytest.raises(UserInputError, match="give 3 block counts per level"):
        make_tiny_vae(teacher, TinyVAEConfig(num_decoder_blocks=(1, 1, 1, 1)))
    with pytest.raises(UserInputError, match="give 3 block counts per level"):
        make_tiny_vae(teacher, TinyVAEConfig(encoder="distil", num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1)))
    with pytest.raises(ValueError, match="the decoder needs 2 levels like the encoder"):
        AutoencoderKLTinyDecoder(down_block_types=("DownEncoderBlock2D",) * 2, block_out_channels=(8, 16),
                                 decoder_block_out_channels=(8,), num_decoder_blocks=(1,))
    with pytest.raises(UserInputError, match="encoder must be 'teacher'"):
        make_tiny_vae(teacher, TinyVAEConfig(encoder="both"))
    with pytest.raises(UserInputError, match="multiple of the VAE stride 4"):
        distil_tiny_vae(TinyVAEConfig(data=[str(tmp_path)], output_dir=str(tmp_path / "o"), crop=30,
                                      num_decoder_blocks=(1, 1, 1)), teacher)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("encoder", ["teacher", "distil"])
def test_pipeline_samples_with_a_tiny_decoder(tmp_path, encoder):
    """A tiny-decoder VAE in place of the image VAE: its latents condition, its decoder decodes (channels-last)."""
    from puppet_master.pipelines import load_pipeline

    torch.manual_seed(0)
    teacher = make_image_vae((8, 16, 16, 16), latent_channels=4, scaling_factor=0.7)
    tiny = make_tiny_vae(teacher, TinyVAEConfig(encoder=encoder, encoder_channels=8, decoder_channels=8)).eval()
    PuppetMasterPipeline(**build_components("tiny", seed=0, with_image_encoder=False, vae=tiny)).save_pretrained(tmp_path / "m")
    pipe = load_pipeline(tmp_path / "m")  # the CLI's loader: model_index.json names the VAE's class
    assert type(pipe.vae) is type(tiny) and pipe.vae_scale_factor == 8
    image = torch.rand(3, 64, 64)
    x = image[None] * 2 - 1
    with torch.no_grad():
        expected_latent = (teacher.encode(x).latent_dist.mode() if encoder == "teacher"
                           else pipe.vae.encode(x).latents)
        assert torch.allclose(pipe.encode_first_frame(x), expected_latent, atol=1e-6)
        z = torch.randn(1, 2, 4, 8, 8)
        decoded = pipe.decode_latents(z)
        expected = pipe.vae.decode(z[0].contiguous() / 0.7).sample
    assert torch.allclose(decoded[0], expected, atol=1e-5)
    out = pipe(image, torch.zeros(1, 3, 5, 4), num_frames=3, height=64, width=64, num_inference_steps=2,
               output_type="np", tie_first_frame=True, detail_transfer_radius=1.0,
               generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 3, 64, 64, 3) and np.isfinite(out).all()
    # frame 0 is tied to the input's latent and gets the input's details back: the input, to 8-bit rounding
    assert np.abs(out[0, 0] - image.permute(1, 2, 0).numpy()).max() < 2 / 255


def test_distil_vae_command_refuses_a_temporal_vae_with_one_error_line(tmp_path, tiny_pipeline_dir):
    data = _split(tmp_path / "split", n=4)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "puppet_master.cli", "distil-vae", "--data", str(data), "--out", str(out),
                          "--teacher", str(tiny_pipeline_dir), "--steps", "1", "-q"], capture_output=True, text=True)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and lines[-1].startswith("error:") and "AutoencoderKL" in lines[-1]
    assert "Traceback" not in run.stderr and not out.exists()
    bad = subprocess.run([sys.executable, "-m", "puppet_master.cli", "distil-vae", "--data", str(data), "--out", str(out),
                          "--precision", "fp8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--precision must be auto, bf16 or fp32" in bad.stderr and not out.exists()
    bad = subprocess.run([sys.executable, "-m", "puppet_master.cli", "distil-vae", "--data", str(data), "--out", str(out),
                          "--encoder", "none"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--encoder must be teacher or distil" in bad.stderr and not out.exists()
