"""A corpus of bad inputs, built here (small files, no network), run through the command line.

Every case asserts the contract of docs and README ("Safety and bad input"): exit status 2,
exactly one ``error:`` line naming the problem, no traceback, and no new or changed file
in the output location (existing outputs untouched). Most cases call the command line
in-process (``puppet_master.cli.main``); a few run it as a real subprocess.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from puppet_master.cli import main
from puppet_master.video import write_video

MARKER = Path("/tmp/puppet_master_payload_ran")


class _Payload:
    """Unpickling this runs a shell command that writes :data:`MARKER` (if anything unpickles it)."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class _Call:
    """Pickles as a call of ``fn(*args)``: lets a test write crafted tensors and scalars."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


#: numpy's scalar constructor, the global a pickled numpy scalar calls (``numpy._core`` from numpy 2 on)
_NUMPY_SCALAR = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar


def _cli(argv, capsys):
    """Run the CLI in-process: ``(exit code, stdout, stderr lines)``."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its content hash (what "nothing new or changed" compares)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): f"-> {os.readlink(p)}" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def _assert_refused(code, out, err, message, before, folder):
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message.lower() in err[0].lower(), err
    assert "Traceback" not in out + "\n".join(err)
    assert _snapshot(folder) == before, "the output location changed"


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` pixels (no pixel data: a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------- animate
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    arr = np.full((60, 100, 4), 0, np.uint8)
    arr[15:45, 25:75] = (200, 60, 40, 255)
    PIL.Image.fromarray(arr).save(d / "ok.png")
    (d / "bomb.png").write_bytes(_png_header(20000, 20000))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    (d / "truncated.png").write_bytes((d / "ok.png").read_bytes()[:60])
    (d / "folder.png").mkdir()
    drag = {"start": [30, 20], "end": [60, 40]}
    specs = {
        "size_dict": {"image_size": {"a": 1}, "drags": [drag]},
        "size_inf": '{"image_size": [1e999, 64], "drags": [{"start": [30, 20], "end": [60, 40]}]}',
        "size_float": {"image_size": [100.5, 60], "drags": [drag]},
        "size_huge": {"image_size": [10**9, 60], "drags": [drag]},
        "bool_coord": {"drags": [{"start": [30, True], "end": [60, 40]}]},
        "str_coord": {"drags": [{"start": ["30", 20], "end": [60, 40]}]},
        "three_coords": {"drags": [{"start": [30, 20, 1], "end": [60, 40]}]},
        "drags_string": {"drags": "30,20:60,40"},
        "drags_empty": {"drags": []},
        "drag_not_object": {"drags": [[30, 20]]},
        "no_end": {"drags": [{"start": [30, 20]}]},
        "too_many": {"drags": [drag] * 6},
        "short_trajectory": {"drags": [{"trajectory": [[30, 20], [40, 30]]}]},
        "start_outside": {"drags": [{"start": [130, 20], "end": [60, 40]}]},
        "far_outside": {"drags": [{"start": [30, 20], "end": [900, 40]}]},
        "bad_coordinates": {"coordinates": "inches", "drags": [drag]},
        "not_an_object": 42,
    }
    for name, spec in specs.items():
        (d / f"{name}.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    (d / "latin1.json").write_bytes('{"drags": [{"start": [30, 20], "end": [60, 40]}], "note": "caf\xe9"}'.encode("latin-1"))
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "big.json").write_text(" " * (2 << 20) + "{}")
    return d


ANIMATE_CASES = [
    # (image, extra arguments, expected words in the error)
    ("bomb.png", ["--drag", "1,1:2,2"], "megapixel limit"),
    ("empty.png", ["--drag", "1,1:2,2"], "cannot read image"),
    ("text.png", ["--drag", "1,1:2,2"], "cannot read image"),
    ("truncated.png", ["--drag", "1,1:2,2"], "cannot read image"),
    ("folder.png", ["--drag", "1,1:2,2"], "is not a file"),
    ("ok.png", ["--drags-json", "size_dict.json"], "image_size"),
    ("ok.png", ["--drags-json", "size_inf.json"], "finite"),
    ("ok.png", ["--drags-json", "size_float.json"], "whole numbers"),
    ("ok.png", ["--drags-json", "size_huge.json"], "image_size"),
    ("ok.png", ["--drags-json", "latin1.json"], "not UTF-8"),
    ("ok.png", ["--drags-json", "deep.json"], "nested too deeply"),
    ("ok.png", ["--drags-json", "big.json"], "larger than"),
    ("ok.png", ["--drags-json", "bool_coord.json"], "must be a number"),
    ("ok.png", ["--drags-json", "str_coord.json"], "must be a number"),
    ("ok.png", ["--drags-json", "three_coords.json"], "[x, y]"),
    ("ok.png", ["--drags-json", "drags_string.json"], "non-empty list"),
    ("ok.png", ["--drags-json", "drags_empty.json"], "non-empty list"),
    ("ok.png", ["--drags-json", "drag_not_object.json"], "must be an object"),
    ("ok.png", ["--drags-json", "no_end.json"], '"start" and "end"'),
    ("ok.png", ["--drags-json", "too_many.json"], "at most 5"),
    ("ok.png", ["--drags-json", "short_trajectory.json"], "14 frames"),
    ("ok.png", ["--drags-json", "start_outside.json"], "starts outside the image"),
    ("ok.png", ["--drags-json", "far_outside.json"], "more than one image size outside"),
    ("ok.png", ["--drags-json", "bad_coordinates.json"], '"coordinates"'),
    ("ok.png", ["--drags-json", "not_an_object.json"], '"drags" list'),
    ("ok.png", ["--drags-json", "missing.json"], "cannot read"),
    ("ok.png", ["--drag", "1,nan:2,2"], "non-finite"),
    ("ok.png", ["--drag", "1,1:2,2", "--drags-json", "size_dict.json"], "not both"),
    ("ok.png", ["--drag", "1,1:2,2", "--detail-transfer-radius", "-1"], "--detail-transfer-radius must be a finite number from 0"),
    ("ok.png", ["--drag", "1,1:2,2", "--warp-init-sigma", "nan"], "--warp-init-sigma must be a finite number from 0"),
]


@pytest.mark.parametrize("image, extra, message", ANIMATE_CASES, ids=[f"{c[0]}-{'-'.join(c[1])[:40]}" for c in ANIMATE_CASES])
def test_animate_refuses_bad_input(corpus, tmp_path, tiny_pipeline_dir, capsys, image, extra, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "previous.gif").write_bytes(b"GIF89a an earlier result")
    before = _snapshot(out_dir)
    extra = [str(corpus / e) if e.endswith(".json") else e for e in extra]
    code, out, err = _cli(["animate", corpus / image, *extra, "--model", tiny_pipeline_dir, "-o", out_dir / "v.gif",
                           "--steps", "1", "--frames", "14", "--size", "64", "-q"], capsys)
    _assert_refused(code, out, err, message, before, out_dir)


@pytest.mark.parametrize("name, message", [
    ("x" * 256 + ".gif", "not a usable file name"),
    ("previous.gif", "--overwrite"),
    ("video.avi", ".mp4"),
    ("file.txt/v.gif", "is not a folder"),
    ("missing/v.gif", "does not exist"),
    ("dangling.gif", "--overwrite"),
])
def test_animate_checks_the_output_before_sampling(corpus, tmp_path, tiny_pipeline_dir, capsys, name, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "previous.gif").write_bytes(b"GIF89a an earlier result")
    (out_dir / "file.txt").write_text("a file, not a folder")
    (out_dir / "dangling.gif").symlink_to(tmp_path / "nowhere" / "x.gif")
    before = _snapshot(out_dir)
    code, out, err = _cli(["animate", corpus / "ok.png", "--drag", "30,20:60,40", "--model", tiny_pipeline_dir,
                           "-o", out_dir / name, "--steps", "1", "--frames", "3", "--size", "64", "-q"], capsys)
    _assert_refused(code, out, err, message, before, out_dir)


def test_animate_subprocess_decompression_bomb(corpus, tmp_path):
    exe = shutil.which("puppet-master") or str(Path(sys.executable).parent / "puppet-master")
    proc = subprocess.run([exe, "animate", str(corpus / "bomb.png"), "--drag", "1,1:2,2", "-o", str(tmp_path / "v.gif")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(err) == 1 and "megapixel limit" in err[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_animate_accepts_a_trajectory_leaving_the_image_and_an_animated_gif(tmp_path, tiny_pipeline_dir, capsys):
    frames = [PIL.Image.new("RGB", (64, 48), (40 * i, 200, 255 - 40 * i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    # a part moving out of view: starts on the image, ends 20 px past its right edge
    spec = {"drags": [{"trajectory": [[40 + 12 * n, 24] for n in range(4)]}]}
    (tmp_path / "d.json").write_text(json.dumps(spec))
    code, out, err = _cli(["animate", tmp_path / "anim.gif", "--drags-json", tmp_path / "d.json", "--model",
                           tiny_pipeline_dir, "-o", tmp_path / "v.gif", "--steps", "1", "--frames", "4", "--size", "64",
                           "--overlay", "-q", "--threads", "1"], capsys)
    assert code == 0, err
    assert err[0] == "note: anim.gif is animated (3 frames): the first frame is used" and len(err) == 2
    assert err[1].startswith(f"wrote {tmp_path / 'v.gif'} (4 frames, 64x64)")  # -q keeps the result's line
    from puppet_master.video import read_video

    video = read_video(tmp_path / "v.gif")
    assert video.shape == (4, 64, 64, 3)
    # the overlay draws the drag up to the frame's right edge in the last frame
    red = (video[-1, :, -3:, 0].astype(int) - video[-1, :, -3:, 2].astype(int)) > 60
    assert red.any()
    assert torch.get_num_threads() == 1
    torch.set_num_threads(os.cpu_count() or 1)


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", np.full((8, 8), 32896, np.uint16), 128),  # 16-bit mid grey
    ("I", np.full((8, 8), 40000, np.int32), round(40000 / 65535 * 255)),
    ("F", np.full((8, 8), 0.25, np.float32), 64),
])
def test_high_bit_depth_images_are_rescaled_not_clipped(tmp_path, mode, values, expected):
    from puppet_master.preprocessing import load_image

    image = PIL.Image.fromarray(values)
    path = tmp_path / ("g.png" if mode == "I;16" else "g.tif")
    image.save(path)
    assert PIL.Image.open(path).mode == mode
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (8, 8, 3) and abs(float(loaded.mean()) - expected) <= 1


# ---------------------------------------------------------------------------------------- evaluate
def _eval_gif(path: Path, frames: int = 14) -> None:
    rng = np.random.default_rng(0)
    write_video(rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8), path, fps=7)


def _good_drags() -> torch.Tensor:
    d = torch.zeros(1, 14, 5, 4)
    d[0, :, 0, :2] = torch.tensor([0.5, 0.5])
    d[0, :, 0, 2] = torch.linspace(0.5, 0.7, 14)
    d[0, :, 0, 3] = 0.5
    return d


def _bad_batches() -> dict:
    """name → (pickle bytes, gif kind, expected words): one unreadable Drag-a-Move example each."""
    with warnings.catch_warnings():  # a typed storage is what torch.save pickles; torch warns they are deprecated
        warnings.simplefilter("ignore", UserWarning)
        storage = torch.zeros(1).storage()
    return {
        "drags_string": (pickle.dumps({"drags": "0.5,0.5"}), "ok", "'drags' must be a float tensor"),
        "drags_none": (pickle.dumps({"drags": None}), "ok", "'drags' must be a float tensor"),
        # {"drags": [[[...]]]} nested 200,000 deep, written opcode by opcode (pickle.dumps would recurse)
        "drags_deep": (b"\x80\x04}\x8c\x05drags" + b"(" * 200_000 + b"l" * 200_000 + b"s.", "ok", "nested"),
        "drags_ints": (pickle.dumps({"drags": torch.zeros(1, 14, 5, 4, dtype=torch.int64)}), "ok", "float"),
        "drags_nan": (pickle.dumps({"drags": _good_drags() * float("nan")}), "ok", "non-finite"),
        "drags_start_outside": (pickle.dumps({"drags": _good_drags() + 1.0}), "ok", "starts outside"),
        "no_drags": (pickle.dumps({"latents": 1}), "ok", "no 'drags' entry"),
        "not_a_dict": (pickle.dumps([1, 2, 3]), "ok", "no 'drags' entry"),
        "numpy_empty_scalar": (pickle.dumps({"drags": _Call(_NUMPY_SCALAR, np.dtype("f4"), b"")}), "ok",
                               "4 bytes"),
        "numpy_object_dtype": (pickle.dumps({"drags": _Call(_NUMPY_SCALAR, np.dtype("O"), b"")}), "ok",
                               "numpy dtype"),
        "binbytes8_2_40": (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc", "ok", "only 3 remain"),
        "tensor_as_storage": (pickle.dumps({"drags": _Call(torch._utils._rebuild_tensor_v2, torch.zeros(3), 0, (3,), (1,),
                                                           False, collections.OrderedDict())}), "ok", "not a storage"),
        "zero_stride_962gb": (pickle.dumps({"drags": _Call(torch._utils._rebuild_tensor_v2, storage, 0, (14, 2**31, 4),
                                                           (0, 0, 0), False, collections.OrderedDict())}), "ok",
                              "element limit"),
        "zero_stride_small": (pickle.dumps({"drags": _Call(torch._utils._rebuild_tensor_v2, storage, 0, (14, 5, 4),
                                                           (0, 0, 0), False, collections.OrderedDict())}), "ok",
                              "does not fit its storage"),
        "payload": (pickle.dumps({"drags": _Payload()}), "ok", "refusing to unpickle"),
        "truncated": (pickle.dumps({"drags": _good_drags()})[:100], "ok", "cannot read pickle"),
        "gif_empty": (pickle.dumps({"drags": _good_drags()}), "empty", "cannot read video"),
        "gif_corrupt": (pickle.dumps({"drags": _good_drags()}), "corrupt", "cannot read video"),
        "gif_missing": (pickle.dumps({"drags": _good_drags()}), "missing", "no ground-truth video"),
        "gif_frames": (pickle.dumps({"drags": _good_drags()}), "short", "frames"),
    }


BAD_BATCHES = _bad_batches()


def _write_batch(folder: Path, name: str, data: bytes, gif: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pkl").write_bytes(data)
    if gif == "ok":
        _eval_gif(folder / f"{name}.gif")
    elif gif == "short":
        _eval_gif(folder / f"{name}.gif", frames=5)
    elif gif == "empty":
        (folder / f"{name}.gif").write_bytes(b"")
    elif gif == "corrupt":
        (folder / f"{name}.gif").write_bytes(b"GIF89a" + os.urandom(64))


@pytest.mark.parametrize("name", sorted(BAD_BATCHES))
def test_evaluate_refuses_a_folder_of_only_unreadable_batches(tmp_path, capsys, name):
    data, gif, message = BAD_BATCHES[name]
    _write_batch(tmp_path / "data", "00000", data, gif)
    MARKER.unlink(missing_ok=True)
    out = tmp_path / "eval"
    code, stdout, err = _cli(["evaluate", "--data", tmp_path / "data", "--method", "static", "--out", out, "-q"], capsys)
    _assert_refused(code, stdout, err, message, {}, out)
    assert "can be read" in err[0]
    assert not out.exists() and not MARKER.exists()


@pytest.mark.parametrize("args, message", [
    (["--i3d", "CORRUPT"], "cannot load the I3D detector"),
    (["--i3d", "MISSING"], "does not exist"),
    (["--tracker", "cotracker", "--cotracker-checkpoint", "CORRUPT"], ""),  # no package or unreadable: one line
    (["--method", "warp", "--method", "draw"], "unknown --method"),
    (["--out", "FILE"], "is not a folder"),
    (["--method", "model", "--detail-transfer-radius", "inf"], "--detail-transfer-radius must be a finite number from 0"),
    (["--method", "static", "--warp-init-sigma", "2"], "add --method model"),
])
def test_evaluate_refuses_bad_options(shared_dir, tmp_path, capsys, args, message):
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not a TorchScript archive")
    (tmp_path / "file").write_text("x")
    subst = {"CORRUPT": str(tmp_path / "corrupt.pt"), "MISSING": str(tmp_path / "none.pt"), "FILE": str(tmp_path / "file")}
    args = [subst.get(a, a) for a in args]
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", shared_dir / "data" / "dragamove-test-dev", "--limit", "1", "-q"]
    argv += args if "--out" in args else [*args, "--out", out]
    before = _snapshot(tmp_path)
    code, stdout, err = _cli(argv, capsys)
    _assert_refused(code, stdout, err, message, before, tmp_path)


def test_evaluate_subprocess_unsafe_pickle(tmp_path):
    data, gif, _ = BAD_BATCHES["payload"]
    _write_batch(tmp_path / "data", "00000", data, gif)
    MARKER.unlink(missing_ok=True)
    exe = shutil.which("puppet-master") or str(Path(sys.executable).parent / "puppet-master")
    proc = subprocess.run([exe, "evaluate", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "eval"), "-q"],
                          capture_output=True, text=True, timeout=300)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(err) == 1 and "refusing to unpickle" in err[0], proc.stderr
    assert not MARKER.exists() and not (tmp_path / "eval").exists()


def test_evaluate_scores_drags_leaving_the_frame_and_reports_unreadable_examples(shared_dir, tmp_path, capsys):
    """All 20 dev examples, one whose drag leaves the frame (as in the published set) and one corrupt: the run completes."""
    from puppet_master.data.safe_pickle import safe_load_pickle

    dev = shared_dir / "data" / "dragamove-test-dev"
    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(dev.iterdir()):
        (data / f.name).symlink_to(f)
    batch = safe_load_pickle(dev / "00000.pkl")
    drags = batch["drags"].clone()
    used = drags[0].abs().sum(dim=(0, 2)) > 0
    k = int(torch.nonzero(used)[0])
    drags[0, :, k, 2] = torch.linspace(float(drags[0, 0, k, 0]), 1.10, drags.shape[1])  # x leaves the frame
    (data / "00090.pkl").write_bytes(pickle.dumps({**batch, "drags": drags}))
    (data / "00090.gif").symlink_to(dev / "00000.gif")
    (data / "00091.pkl").symlink_to(dev / "00001.pkl")
    (data / "00091.gif").write_bytes(b"")
    out = tmp_path / "eval"
    code, stdout, err = _cli(["evaluate", "--data", data, "--method", "static", "--out", out, "--no-videos", "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["num_examples"] == 21
    assert [s["name"] for s in report["skipped"]] == ["00091"] and "cannot read video" in report["skipped"][0]["reason"]
    assert "00090" in [r["name"] for r in report["per_example"]]
    assert "00091" in (out / "report.md").read_text()
    assert not (out / "videos").exists()  # --no-videos: nothing but the report


# ---------------------------------------------------------------------------------------- train
def _tiny_train_args(run: Path, *extra) -> list[str]:
    repo = Path(__file__).resolve().parent.parent
    return ["train", "--config", str(repo / "configs" / "tiny.yaml"), "-q", f"output_dir={run}", "data.num_frames=3",
            "data.batch_size=1", "log_with=none", "validate_every=1000", "export_pipeline=false", *extra]


@pytest.mark.parametrize("content, extra, message", [
    (b"\xff\xfe\x00binary\x00\x9c", [], "not UTF-8"),
    (b"model:\n  unet:\n    layers_per_blok: 2\n", [], "model.unet.layers_per_blok"),
    (b"[" * 100_000, [], "config"),
    (b"- a\n- b\n", [], "mapping"),
    (b"max_steps: -3\n", [], "max_steps"),
    (b"", ["model.unet={layers_per_blok: 2}"], "did you mean layers_per_block"),
    (b"", ["optim.lr=" + "[" * 50_000], "nested too deeply"),
    (b"", ["resume=/no/such/checkpoint"], "does not exist"),
])
def test_train_refuses_bad_configs(tmp_path, capsys, content, extra, message):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    run = tmp_path / "run"
    argv = _tiny_train_args(run, *extra)
    if content:
        argv[2] = str(config)
    code, out, err = _cli(argv, capsys)
    _assert_refused(code, out, err, message, {}, run)


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    """A tiny run stopped at step 1 with a checkpoint (EMA on)."""
    run = tmp_path_factory.mktemp("train") / "run"
    with pytest.raises(SystemExit) as exc:
        main(_tiny_train_args(run, "max_steps=1", "checkpoint_every=1"))
    assert exc.value.code in (0, None)
    ckpt = run / "checkpoints" / "step-00000001"
    assert (ckpt / "ema.safetensors").is_file() and (ckpt / "ema.json").is_file()
    assert not list(ckpt.glob("custom_checkpoint_*"))  # the EMA is never pickled
    return run


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("plant, message", [
    ("custom_checkpoint_0.pkl", "never loads"),
    ("optimizer.bin", "not plain data"),
    ("scheduler.bin", "not plain data"),
    ("legacy_ema", "old pickle format"),
    ("trainer_state", "step number"),
])
def test_resume_never_runs_code_from_a_checkpoint(checkpoint_run, tmp_path, capsys, plant, message):
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    ckpt = run / "checkpoints" / "step-00000001"
    payload = pickle.dumps(_Payload())
    if plant == "legacy_ema":
        (ckpt / "ema.safetensors").unlink()
        (ckpt / "ema.json").unlink()
        (ckpt / "custom_checkpoint_0.pkl").write_bytes(payload)
    elif plant == "trainer_state":
        (ckpt / "trainer_state.json").write_text('{"global_step": "1; rm -rf /"}')
    else:
        (ckpt / plant).write_bytes(payload)
    MARKER.unlink(missing_ok=True)
    before = _snapshot(run)
    code, out, err = _cli(_tiny_train_args(run, "max_steps=2", "checkpoint_every=1", "resume=latest"), capsys)
    _assert_refused(code, out, err, message, before, run)
    assert not MARKER.exists(), "the checkpoint's payload ran"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_resume_ignores_a_payload_in_the_rng_state_and_export_refuses_a_legacy_payload(checkpoint_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    ckpt = run / "checkpoints" / "step-00000001"
    (ckpt / "random_states_0.pkl").write_bytes(pickle.dumps(_Payload()))
    MARKER.unlink(missing_ok=True)
    # accelerate reads the RNG state with weights_only=True: the payload is refused and the run goes on
    code, out, err = _cli(_tiny_train_args(run, "max_steps=2", "checkpoint_every=1", "resume=latest"), capsys)
    assert code in (0, None) and not MARKER.exists(), err
    assert (run / "checkpoints" / "step-00000002" / "ema.safetensors").is_file()
    # export-checkpoint reads an old-format EMA pickle with weights_only=True: a payload is refused there too
    (ckpt / "ema.safetensors").unlink()
    (ckpt / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps({"shadow_params": [_Payload()]}))
    code, out, err = _cli(["export-checkpoint", ckpt, "--base", tmp_path / "none", "-o", tmp_path / "exported"], capsys)
    _assert_refused(code, out, err, "nothing was run", {}, tmp_path / "exported")
    assert not MARKER.exists()


def test_old_checkpoint_ema_exports_and_matches_the_new_format(checkpoint_run, tmp_path):
    """The fix the resume error names: export-checkpoint reads an old-format EMA (tensors only)."""
    from diffusers.training_utils import EMAModel

    from puppet_master.training.ema_state import read_ema_state
    from puppet_master.training.export import load_ema_weights

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_run / "checkpoints" / "step-00000001", ckpt)
    names, shadow, settings = read_ema_state(ckpt)
    ema = EMAModel([torch.nn.Parameter(t.clone()) for t in shadow], decay=settings["decay"])
    torch.save(ema.state_dict(), ckpt / "custom_checkpoint_0.pkl")
    (ckpt / "ema.safetensors").unlink()
    legacy = load_ema_weights(ckpt)
    assert len(legacy) == len(names) and all(torch.equal(a, b) for a, b in zip(legacy, shadow))


# ---------------------------------------------------------------------------------------- data build
def test_a_config_error_stops_the_build_with_one_line(tmp_path, capsys):
    from puppet_master.data.build import BuildConfig, BuildConfigError, build
    from puppet_master.data.sources import AssetTask

    out = tmp_path / "ds"
    cfg = BuildConfig(out=str(out), stages=("curate",), curation_model=str(tmp_path / "missing.json"))
    with pytest.raises(BuildConfigError, match="curation model"):
        build([AssetTask("a", "procedural", kind="laptop", seed=1)], cfg, workers=1, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------------------------------- demo
def test_demo_upload_errors_name_the_reason_and_outputs_are_bounded(corpus, tiny_pipeline_dir, tmp_path):
    import gradio as gr
    from gradio.data_classes import ImageData

    from puppet_master.app import demo as demo_module
    from puppet_master.app.demo import OutputFolder, build_demo
    from puppet_master.options import PuppetMasterOptions
    from puppet_master.pipelines.loading import load_pipeline

    demo = build_demo(load_pipeline(str(tiny_pipeline_dir)), PuppetMasterOptions(size=64, frames=3))
    upload = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "upload")
    assert not Path(demo_module.__file__).with_suffix(".pyi").exists()  # Gradio wrote no stub into the package
    for name, words in [("bomb.png", "megapixel limit"), ("text.png", "cannot read image"), ("empty.png", "cannot read")]:
        with pytest.raises(gr.Error) as exc:
            upload.preprocess(ImageData(path=str(corpus / name), orig_name="holiday.png"))
        assert words in exc.value.message and "'holiday.png'" in exc.value.message, exc.value.message
    assert upload.preprocess(ImageData(path=str(corpus / "ok.png"), orig_name="ok.png")).mode == "RGBA"

    folder = OutputFolder(max_files=3)
    paths = []
    for _ in range(5):
        paths.append(folder.new_file(".mp4"))
        paths[-1].write_bytes(b"video")
    assert sorted(p.name for p in folder.path.iterdir()) == [p.name for p in paths[-3:]]
    folder.cleanup()
    assert not folder.path.exists()
