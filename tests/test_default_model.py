"""The embedded default model (src/puppet_master/assets/default-model) loads and animates its example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import puppet_master
from puppet_master.cli import main as cli_main
from puppet_master.drags import DragSet
from puppet_master.evaluation.tracking import DISTracker
from puppet_master.pipelines import DEFAULT_MODEL_DIR, PuppetMasterPipeline, load_pipeline
from puppet_master.preprocessing import load_image, prepare_input
from puppet_master.video import read_video

EXAMPLES = Path(puppet_master.__file__).parent / "assets" / "examples"


@pytest.fixture(scope="module")
def default_pipe():
    return load_pipeline("default")


def test_default_model_ships_within_the_size_budget():
    files = [f for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()]
    assert (DEFAULT_MODEL_DIR / "model_index.json").is_file()
    assert (DEFAULT_MODEL_DIR / "README.md").is_file(), "the model card lives beside the weights"
    assert (DEFAULT_MODEL_DIR / "training.json").is_file(), "and so does their provenance"
    for config in DEFAULT_MODEL_DIR.rglob("*.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), f"{config} names a local folder"
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert {f.parent.name for f in weights} == {"unet", "vae"}
    assert sum(f.stat().st_size for f in files) <= 40 * 1000 * 1000


def test_from_pretrained_default_is_the_embedded_model(default_pipe):
    pipe = PuppetMasterPipeline.from_pretrained("default")
    assert type(pipe.unet) is type(default_pipe.unet)
    a = dict(pipe.unet.named_parameters())
    b = dict(default_pipe.unet.named_parameters())
    assert a.keys() == b.keys()
    name = next(iter(a))
    # stored in fp16; load_pipeline upcasts on CPU (from_pretrained keeps the stored dtype)
    assert default_pipe.unet.dtype == torch.float32 and default_pipe.vae.dtype == torch.float32
    assert torch.equal(a[name].float(), b[name])


# The shipped model (training.json) follows the laptop's and the bucket's drags
# (96-98 px of 99, 65-70 px of 76 at 10 and 50 steps); the cabinet's drawer does not open
# (model card, "Limitations"), so that example is not asserted on.
@pytest.mark.slow
@pytest.mark.parametrize("example", ["laptop", "bucket"])
def test_default_model_keeps_the_image_and_moves_the_dragged_part(default_pipe, example):
    image = load_image(EXAMPLES / f"{example}.png")
    drags = DragSet.from_json(EXAMPLES / f"{example}-drags.json", width=image.width, height=image.height, num_frames=14)
    square, model_drags, _ = prepare_input(image, drags, 256)

    def frames(**extra):
        video = default_pipe(
            square, model_drags, num_frames=14, height=256, width=256, num_inference_steps=10,
            generator=torch.Generator().manual_seed(0), output_type="np", **extra,
        ).frames[0]
        assert video.shape == (14, 256, 256, 3) and np.isfinite(video).all()
        return (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)

    # frame 0 is the input image: the shipped first-frame tie holds its latent at the input's (all but the
    # last step's output, tie_release_sigma), and detail transfer restores what the VAE blurs (target: >= 28 dB)
    ref = np.asarray(square.convert("RGB").resize((256, 256)), dtype=np.float64)
    mse = np.mean((frames()[0].astype(np.float64) - ref) ** 2)
    assert mse <= 255.0**2 / 10 ** (28.0 / 10), mse

    # the UNet moves the drag origin more than the background (points tracked with OpenCV DIS flow); measured
    # without detail transfer, whose moved texture would follow the drag whatever the UNet generated
    generated = frames(detail_transfer_radius=0)
    traj = np.asarray(model_drags.trajectories, dtype=np.float64)[0]
    ys, xs = np.mgrid[8:256:16, 8:256:16]
    grid = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    far = np.linalg.norm(grid - traj[0], axis=1) > 80
    tracks = DISTracker().track(generated, np.concatenate([traj[:1], grid[far]]))
    moved = np.linalg.norm(tracks[:, -1] - tracks[:, 0], axis=1)
    assert moved[0] > 2.0 and moved[0] > 2 * np.median(moved[1:]), (moved[0], np.median(moved[1:]))


def test_example_drags_are_valid_json_in_pixels():
    for f in EXAMPLES.glob("*-drags.json"):
        meta = json.loads(f.read_text())
        assert meta["coordinates"] == "pixels" and meta["drags"]


def test_animate_without_model_uses_the_default_model(tmp_path):
    """The README's main job: `animate` with no --model writes a video from the embedded model."""
    out = tmp_path / "laptop.mp4"
    try:
        cli_main(["animate", str(EXAMPLES / "laptop.png"), "--drags-json", str(EXAMPLES / "laptop-drags.json"),
                  "--output", str(out), "--steps", "2", "-q"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    assert code == 0
    frames = read_video(out)
    assert frames.shape == (14, 256, 256, 3)
    # not noise: frame 0 resembles the example image (mp4 compression and 2 steps allowed for)
    ref = np.asarray(load_image(EXAMPLES / "laptop.png").convert("RGB").resize((256, 256)), dtype=np.float64)
    assert np.abs(frames[0].astype(np.float64) - ref).mean() < 25.0


def test_animate_sampling_settings_reach_the_pipeline(tmp_path):
    """`animate --detail-transfer-radius 0 --warp-init-sigma 0` samples and decodes as the paper does."""
    ref = np.asarray(load_image(EXAMPLES / "laptop.png").convert("RGB").resize((256, 256)), dtype=np.float64)
    errors = {}
    for name, extra in (("shipped", []), ("paper", ["--detail-transfer-radius", "0", "--warp-init-sigma", "0"])):
        out = tmp_path / f"{name}.gif"
        try:
            cli_main(["animate", str(EXAMPLES / "laptop.png"), "--drags-json", str(EXAMPLES / "laptop-drags.json"),
                      "--output", str(out), "--steps", "2", "--dtype", "fp32", "-q", *extra])
            code = 0
        except SystemExit as exc:
            code = exc.code
        assert code == 0
        errors[name] = np.abs(read_video(out)[0].astype(np.float64) - ref).mean()
    # the shipped settings start from the warped input and restore its detail: frame 0 is much closer to it
    assert errors["shipped"] < 0.5 * errors["paper"], errors



@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    """README "Python API": the first example, copied verbatim, makes its video (no path to replace, no GPU)."""
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'from_pretrained("default")' in code
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    frames = read_video(tmp_path / "cabinet.mp4")
    assert frames.shape[0] == 14 and frames.shape[1:] == (256, 256, 3)
