import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from puppet_master.cli import main
from puppet_master.video import read_video


@pytest.fixture()
def image_file(tmp_path) -> Path:
    arr = np.zeros((60, 100, 4), np.uint8)  # RGBA, transparent background
    arr[15:45, 25:75] = (200, 60, 40, 255)
    path = tmp_path / "object.png"
    PIL.Image.fromarray(arr).save(path)
    return path


def _cli(*args):
    """Run the CLI in-process; return (exit code, stderr lines)."""
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code


def test_animate_happy_path_subprocess(tmp_path, image_file, tiny_pipeline_dir):
    out = tmp_path / "video.gif"
    exe = shutil.which("puppet-master") or str(Path(sys.executable).parent / "puppet-master")
    proc = subprocess.run(
        [exe, "animate", str(image_file), "--drag", "30,20:60,40", "--model", str(tiny_pipeline_dir),
         "--output", str(out), "--steps", "2", "--frames", "6", "--size", "64", "--seed", "3", "--overlay", "-q"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # -q: no progress, loading bar or library chatter; the result's line stays
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(f"wrote {out} (6 frames, 64x64)")
    frames = read_video(out)
    assert frames.shape == (6, 64, 64, 3)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_animate_mp4_and_drags_json(tmp_path, image_file, tiny_pipeline_dir):
    spec = {"image_size": [100, 60], "drags": [{"start": [30, 20], "end": [60, 40]},
                                                  {"trajectory": [[70, 30], [72, 31], [74, 32], [76, 33]]}]}
    (tmp_path / "drags.json").write_text(json.dumps(spec))
    out = tmp_path / "video.mp4"
    code = _cli("animate", image_file, "--drags-json", tmp_path / "drags.json", "--model", tiny_pipeline_dir,
                "-o", out, "--steps", "1", "--frames", "4", "--size", "64", "-q")
    assert code == 0
    frames = read_video(out)
    assert frames.shape[0] == 4 and frames.shape[1:3] == (64, 64)


def test_animate_bf16_is_close_to_fp32(tmp_path, image_file):
    """--dtype bf16 on the shipped model: computed in bf16 (not silently fp32), yet the same video."""
    common = ["--drag", "30,20:60,40", "--steps", "4", "--size", "64", "--seed", "1", "-q"]
    assert _cli("animate", image_file, "-o", tmp_path / "fp32.gif", "--dtype", "fp32", *common) == 0
    assert _cli("animate", image_file, "-o", tmp_path / "bf16.gif", "--dtype", "bf16", *common) == 0
    a, b = (read_video(tmp_path / f"{d}.gif").astype(np.float64) for d in ("fp32", "bf16"))
    assert a.shape == b.shape == (14, 64, 64, 3)
    diff = np.abs(a - b).mean()  # measured 0.9-1.2 grey levels (GIF palettes included)
    assert 0 < diff < 4.0, diff


def test_dtype_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    import torch

    from puppet_master import runtime
    from puppet_master.cli.animate import parse_dtype

    assert parse_dtype("fp32") is torch.float32 and parse_dtype("bf16", "cuda") is torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: native)
        assert parse_dtype("auto", "cpu") is expected
        assert parse_dtype("auto", "cuda:0") is None  # a GPU keeps the stored precision


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png", "--drag", "1,1:2,2"], "does not exist"),
        (["NOTIMAGE", "--drag", "1,1:2,2"], "cannot read image"),
        (["IMAGE", "--drag", "1,1:2"], "X0,Y0:X1,Y1"),
        (["IMAGE", "--drag", "101,1:2,2"], "starts outside the image"),
        (["IMAGE"] + ["--drag", "1,1:2,2"] * 6, "at most 5"),
        (["IMAGE"], "no drags given"),
        (["IMAGE", "--drags-json", "BADJSON"], "not valid JSON"),
        (["IMAGE", "--drag", "1,1:2,2", "--model", "no/such/dir/here"], "does not exist"),
        (["IMAGE", "--drag", "1,1:2,2", "--dtype", "fp8"], "--dtype must be auto or one of"),
    ],
)
def test_bad_input_one_line_exit_2_no_output(tmp_path, image_file, tiny_pipeline_dir, capsys, args, message):
    (tmp_path / "not_an_image.png").write_text("hello")
    (tmp_path / "bad.json").write_text("{oops")
    subst = {"IMAGE": str(image_file), "NOTIMAGE": str(tmp_path / "not_an_image.png"), "BADJSON": str(tmp_path / "bad.json"),
             "missing.png": str(tmp_path / "missing.png")}
    args = [subst.get(a, a) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_pipeline_dir)]
    out = tmp_path / "out.mp4"
    code = _cli("animate", *args, "-o", out, "--steps", "1", "--frames", "4", "--size", "64")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_refuses_to_overwrite_and_unwritable_output(tmp_path, image_file, tiny_pipeline_dir, capsys):
    out = tmp_path / "out.gif"
    out.write_bytes(b"precious")
    code = _cli("animate", image_file, "--drag", "1,1:2,2", "--model", tiny_pipeline_dir, "-o", out)
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    code = _cli("animate", image_file, "--drag", "1,1:2,2", "--model", tiny_pipeline_dir, "-o", tmp_path / "nodir" / "x.gif")
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = _cli("animate", image_file, "--drag", "1,1:2,2", "--model", tiny_pipeline_dir, "-o", tmp_path / "x.avi")
    assert code == 2 and ".mp4" in capsys.readouterr().err
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code = _cli("animate", image_file, "--drag", "1,1:2,2", "--model", tiny_pipeline_dir, "-o", ro / "x.gif")
        assert code == 2 and "not writable" in capsys.readouterr().err
    code = _cli("animate", image_file, "--drag", "1,1:2,2", "--model", tiny_pipeline_dir, "-o", out, "--overwrite",
                "--steps", "1", "--frames", "3", "--size", "64", "-q")
    assert code == 0 and out.read_bytes()[:3] == b"GIF"


def test_random_model_command(tmp_path, capsys):
    target = tmp_path / "m"
    assert _cli("random-model", target) == 0
    assert (target / "model_index.json").is_file() and (target / "unet" / "config.json").is_file()
    assert _cli("random-model", target) == 2
    assert "already exists" in capsys.readouterr().err


def test_help_says_pixel_coordinates(capsys):
    assert _cli("animate", "--help") == 0
    text = capsys.readouterr().out
    assert "PIXELS" in text
    # real metavars, the default model named, --threads offered
    assert "animate [OPTIONS] IMAGE" in text and "{" not in text and "<path>" not in text
    assert "-o, --output VIDEO" in text and "--drag X0,Y0:X1,Y1" in text and "--threads N" in text
    assert "[default: (the model shipped in the package)]" in " ".join(text.split())  # however the help wraps


def test_progress_bar_stays_in_a_log():
    from puppet_master.cli.options import progress_bar_config

    # pytest captures stderr (not a terminal): the bar is kept in the log and updates every few seconds
    assert progress_bar_config("denoising", quiet=False) == {"disable": False, "desc": "denoising", "leave": True,
                                                              "mininterval": 5.0}
    assert progress_bar_config("denoising", quiet=True)["disable"] is True


@pytest.mark.parametrize("name", ["cabinet", "laptop", "bucket"])
def test_shipped_examples_are_valid(name):
    from puppet_master.app.demo import EXAMPLES_DIR
    from puppet_master.drags import DragSet
    from puppet_master.preprocessing import load_image

    image = load_image(EXAMPLES_DIR / f"{name}.png")
    drags = DragSet.from_json(EXAMPLES_DIR / f"{name}-drags.json", width=image.width, height=image.height)
    assert image.size == (256, 256) and 1 <= drags.num_drags <= 5 and drags.num_frames == 14
