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
    ("ok.png", ["--drag", "1,1:2,2", "--chroma-anchor-sigma", "-1"], "--chroma-anchor-sigma must be a finite number from 0"),
    ("ok.png", ["--drag", "1,1:2,2", "--chroma-anchor-sigma", "500"], "chroma_anchor_sigma must be between 0"),
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
    (["--method", "warp", "--chroma-anchor-sigma", "8"], "add --method model"),
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


# ----------------------------------------------------------------------------------- SAM checkpoint
def _sam_payload(path: Path, fmt: str) -> Path:
    """A checkpoint that runs a shell command when unpickled: torch's zip or legacy format, or a plain pickle."""
    if fmt == "pickle":
        path.write_bytes(pickle.dumps({"image_encoder.weight": _Payload()}))
    else:
        torch.save({"image_encoder.weight": _Payload(), "mask_decoder.bias": torch.zeros(2)}, path,
                   _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_a_sam_checkpoint_never_runs_code_even_with_torch_told_to_unpickle(tmp_path, monkeypatch, fmt):
    from puppet_master.entity import load_sam_state_dict
    from puppet_master.errors import UserInputError

    path = _sam_payload(tmp_path / "sam.pth", fmt)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # makes a bare torch.load (segment_anything's) unpickle
    MARKER.unlink(missing_ok=True)
    with pytest.raises(UserInputError, match="nothing was run|not a readable torch file") as exc:
        load_sam_state_dict(path)
    assert "weights_only` set to `False`" not in str(exc.value)  # torch's advice to run the file is not passed on
    assert not MARKER.exists()
    if fmt == "zip":  # the threat is real: torch.load without the flag runs the payload under that variable
        subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r})"], capture_output=True,
                       timeout=300, env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
        assert MARKER.exists()
        MARKER.unlink()


def test_sam_checkpoints_that_load_and_the_size_bound(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from puppet_master import limits
    from puppet_master.entity import load_sam_state_dict
    from puppet_master.entity.masks import sam_model_type
    from puppet_master.errors import UserInputError

    weights = {"image_encoder.patch_embed.proj.weight": torch.ones(768, 3, 2, 2), "mask_decoder.bias": torch.zeros(3)}
    torch.save(weights, tmp_path / "sam.pth")
    torch.save({"model": weights}, tmp_path / "wrapped.pth")
    save_file(weights, str(tmp_path / "sam.safetensors"))
    for name in ("sam.pth", "wrapped.pth", "sam.safetensors"):
        state = load_sam_state_dict(tmp_path / name)
        assert sorted(state) == sorted(weights) and torch.equal(state["mask_decoder.bias"], torch.zeros(3))
        assert sam_model_type(state) == "vit_b"
    # a compressed record that inflates past the limit is refused before torch.load allocates it
    (tmp_path / "bomb.pth").write_bytes(_deflated_storage_payload(32 << 20))
    monkeypatch.setattr(limits, "MAX_CHECKPOINT_BYTES", 16 << 20)
    with pytest.raises(UserInputError, match=r"declares 32(\.0)? MiB of tensor data, more than the 16 MiB limit"):
        load_sam_state_dict(tmp_path / "bomb.pth")
    for kind in ("fifo", "zero"):
        with pytest.raises(UserInputError, match="is not a file"):
            load_sam_state_dict(_special(tmp_path, f"{kind}.pth", kind))


def test_animate_with_a_planted_sam_checkpoint_runs_nothing(corpus, tmp_path, capsys, monkeypatch):
    """Through the command line, with the variable that makes a bare torch.load unpickle: one error line and no
    code run, whether or not the optional segment_anything package is installed."""
    import importlib.util

    path = _sam_payload(tmp_path / "sam.pth", "zip")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    MARKER.unlink(missing_ok=True)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = _cli(["animate", corpus / "ok.png", "--method", "draganything", "--segmenter", "sam",
                              "--sam-checkpoint", path, "--drag", "30,20:60,40", "-o", out / "v.gif", "--model",
                              tmp_path / "no-model", "-q"], capsys)
    installed = importlib.util.find_spec("segment_anything") is not None
    _assert_refused(code, stdout, err, "nothing was run" if installed else "SAM is not installed", {}, out)
    assert not MARKER.exists()


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


# ------------------------------------------------------------------------ bounded resources (limits)
# Bad inputs that could block, read without end or allocate gigabytes run through the command line in a
# subprocess whose address space is limited to 8 GiB, with a time limit: a regression fails there instead
# of hanging the suite or taking the machine down. One subprocess runs a whole batch of cases in turn.
_BATCH = r"""
import contextlib, io, json, sys
from puppet_master.cli import main

results = []
for argv in json.load(open(sys.argv[1])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # e.g. a MemoryError under the address-space limit
            code = 99
            print(f"{type(exc).__name__}: {exc}"[:500], file=sys.stderr)
    results.append({"code": code, "err": [l for l in err.getvalue().splitlines() if l.strip()]})
print(json.dumps(results))
"""

_EIGHT_GIB = 8 << 30


def _limit_resources():
    """``preexec_fn``: at most 8 GiB of address space, and no file written past 1 GiB (SIGXFSZ ends the process)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_EIGHT_GIB, _EIGHT_GIB))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))


def _run_batch(cases: dict, folder: Path) -> dict:
    """Run ``{name: argv}`` through ``puppet_master.cli.main`` in one bounded subprocess (:func:`_limit_resources`,
    10 minutes): ``{name: {"code": exit status, "err": stderr lines}}``."""
    names = sorted(cases)
    (folder / "cases.json").write_text(json.dumps([[str(a) for a in cases[n]] for n in names]))
    proc = subprocess.run([sys.executable, "-c", _BATCH, str(folder / "cases.json")], capture_output=True, text=True,
                          timeout=600, preexec_fn=_limit_resources, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(zip(names, json.loads(proc.stdout.strip().splitlines()[-1])))


def _special(folder: Path, name: str, kind: str) -> Path:
    """``folder/name`` as a FIFO, a symbolic link to /dev/zero, or a folder."""
    path = folder / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return path


SPECIAL_KINDS = ["fifo", "zero", "folder"]
KIND_WORDS = {"fifo": "FIFO", "zero": "character device", "folder": "folder"}


def _model_copy(source: Path, target: Path) -> Path:
    """A pipeline folder whose files link to ``source``'s (config files copied, so a test may change them)."""
    for f in sorted(source.rglob("*")):
        dst = target / f.relative_to(source)
        if f.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif f.suffix == ".json":
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f)
    return target


@pytest.fixture(scope="module")
def special_files(tmp_path_factory, corpus, tiny_pipeline_dir):
    """A FIFO, /dev/zero behind a symbolic link, or a folder given where each reader expects a file.

    name → (output folder, result); ``evaluate`` cases hold one good example beside the special one.
    """
    d = tmp_path_factory.mktemp("special")
    cases, outs = {}, {}
    for kind in SPECIAL_KINDS:
        k = d / kind
        k.mkdir()
        for where in ("image", "drags_json", "mask"):
            special = _special(k, {"image": "in.png", "drags_json": "d.json", "mask": "m.png"}[where], kind)
            out = outs[f"animate-{where}-{kind}"] = k / f"out-{where}"
            argv = ["animate", special if where == "image" else corpus / "ok.png", "-o", out / "v.gif", "--model",
                    k / "no-model", "-q"]
            argv += ["--drags-json", special] if where == "drags_json" else ["--drag", "30,20:60,40"]
            argv += ["--method", "draganything", "--mask", special] if where == "mask" else []
            cases[f"animate-{where}-{kind}"] = argv
        config = _special(k, "config.yaml", kind)
        outs[f"train-config-{kind}"] = k / "run"
        cases[f"train-config-{kind}"] = ["train", "--config", config, "-q", f"output_dir={k / 'run'}"]
        for layout in ("pkl", "split_json"):
            data = k / f"data-{layout}"
            data.mkdir()
            if layout == "pkl":
                _write_batch(data, "00000", pickle.dumps({"drags": _good_drags()}), "ok")
                _eval_gif(data / "00001.gif")
                _special(data, "00001.pkl", kind)
            else:
                _eval_gif(data / "a.gif")
                (data / "a.json").write_text(json.dumps({"drags": [{"start": [16, 16], "end": [20, 16]}]}))
                _eval_gif(data / "b.gif")
                _special(data, "b.json", kind)
            outs[f"evaluate-{layout}-{kind}"] = k / f"eval-{layout}"
            cases[f"evaluate-{layout}-{kind}"] = ["evaluate", "--data", data, "--method", "static", "--out",
                                                  k / f"eval-{layout}", "--no-videos", "-q"]
        for flag in ("--i3d", "--cotracker-checkpoint"):
            name = f"evaluate{flag}-{kind}"
            outs[name] = k / f"eval{flag}"
            cases[name] = ["evaluate", "--data", k / "data-pkl", "--out", outs[name], "-q", flag,
                           _special(k, f"{flag[2:]}.pt", kind)] + (["--tracker", "cotracker"] if "cotracker" in flag else [])
        if kind != "folder":
            model = _model_copy(tiny_pipeline_dir, k / "model")
            (model / "unet" / "config.json").unlink()
            _special(model / "unet", "config.json", kind)
            outs[f"model-config-{kind}"] = k / "out-model"
            cases[f"model-config-{kind}"] = ["animate", corpus / "ok.png", "--drag", "30,20:60,40", "--model", model,
                                             "-o", k / "out-model" / "v.gif", "--size", "64", "-q"]
    for name, out in outs.items():
        if name.startswith("animate") or name.startswith("model"):
            out.mkdir()
    results = _run_batch(cases, d)
    return {name: (outs[name], results[name]) for name in cases}


SPECIAL_CASES = [f"{reader}-{kind}" for kind in SPECIAL_KINDS for reader in
                 ("animate-image", "animate-drags_json", "animate-mask", "train-config", "model-config", "evaluate--i3d",
                  "evaluate--cotracker-checkpoint")
                 if not (reader == "model-config" and kind == "folder")]


@pytest.mark.parametrize("name", SPECIAL_CASES)
def test_special_files_are_refused_without_reading_them(special_files, name):
    out, result = special_files[name]
    err = result["err"]
    assert result["code"] == 2, result
    assert len(err) == 1 and err[0].startswith("error: ") and "is not a file" in err[0], err
    assert KIND_WORDS[name.rsplit("-", 1)[1]] in err[0], err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name", [f"evaluate-{layout}-{kind}" for layout in ("pkl", "split_json")
                                  for kind in SPECIAL_KINDS])
def test_evaluate_skips_special_files_and_scores_the_rest(special_files, name):
    """One example of the folder is a special file: it is listed as unreadable, the good one is scored."""
    out, result = special_files[name]
    assert result["code"] == 0, result
    report = json.loads((out / "report.json").read_text())
    assert report["num_examples"] == 1 and len(report["skipped"]) == 1, report["skipped"]
    reason = report["skipped"][0]["reason"]
    assert "is not a file" in reason and KIND_WORDS[name.rsplit("-", 1)[1]] in reason, reason


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_training_readers_refuse_special_files(tmp_path, kind):
    """Latent caches, Drag-a-Move batches and built drag samples read by training (in-process: every one of these
    readers reads with a cap, so even a regression of the kind check could not read /dev/zero without end)."""
    from puppet_master.data.dataset import DragVideoDataset
    from puppet_master.errors import UserInputError
    from puppet_master.training.data import DragAMoveLatentDataset, LatentCacheDataset

    for sub, name, make in [("cache", "clip.safetensors", lambda d: LatentCacheDataset(d)),
                            ("batches", "00000.pkl", lambda d: DragAMoveLatentDataset(d)[0]),
                            ("samples", "s.json", lambda d: DragVideoDataset(d))]:
        folder = tmp_path / sub
        folder.mkdir()
        _special(folder, name, kind)
        with pytest.raises(UserInputError, match="is not a file"):
            make(folder)


# Memory and time bombs, each refused before the allocation.
def _deflated_storage_payload(nbytes: int) -> bytes:
    """``torch.save`` zip payload of a float storage of ``nbytes`` zeros (``torch.load`` reads it), its data
    record deflate-compressed: about ``nbytes / 1000`` bytes."""
    import io as _io
    import zipfile

    header = _io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.save(torch.zeros(1).storage(), header)
    source = zipfile.ZipFile(_io.BytesIO(header.getvalue()))
    out = _io.BytesIO()
    with zipfile.ZipFile(out, "w", compresslevel=1) as archive:
        for info in source.infolist():
            if info.filename.endswith("/data/0"):
                record = zipfile.ZipInfo(info.filename)
                record.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(record, "w", force_zip64=True) as fh:
                    zeros = bytes(min(nbytes, 16 << 20))
                    for _ in range(nbytes // len(zeros)):
                        fh.write(zeros)
            elif info.filename.endswith("/data.pkl"):  # the storage's element count: nbytes / 4 floats
                record = source.read(info.filename)
                assert b"K\x01t" in record
                archive.writestr(info.filename, record.replace(b"K\x01t", b"J" + struct.pack("<i", nbytes // 4) + b"t"))
            else:
                archive.writestr(info.filename, source.read(info.filename))
    return out.getvalue()


def _storage_batch(payload: bytes, copies: int) -> bytes:
    """A test batch whose ``drags`` list loads the nested storage ``payload`` ``copies`` times (its bytes are
    stored once: the pickle memo refers back to them)."""
    return pickle.dumps({"drags": [_Call(torch.storage._load_from_bytes, payload) for _ in range(copies)]})


def _legacy_storage_claiming(numel: int) -> bytes:
    """A legacy ``torch.save`` payload (what pickle writes for a storage) whose pickle claims ``numel`` floats."""
    import io as _io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        buffer = _io.BytesIO()
        torch.save(torch.zeros(3).storage(), buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    assert b"K\x03N" in data  # BININT1 3 (the element count), then NONE
    return data.replace(b"K\x03N", b"\x8a\x05" + numel.to_bytes(5, "little") + b"N")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory, tiny_pipeline_dir, corpus):
    """name → ((argv, expected words, folder that must stay empty), result of the run)."""
    import imageio_ffmpeg

    d = tmp_path_factory.mktemp("bombs")
    cases = {}

    def evaluate_folder(name, files):
        data = d / name
        data.mkdir()
        for fname, content in files.items():
            if isinstance(content, bytes):
                (data / fname).write_bytes(content)
            else:
                content(data / fname)
        out = d / f"{name}-eval"
        return ["evaluate", "--data", str(data), "--method", "static", "--out", str(out), "-q"], out

    # a 320 MiB storage in ~0.3 MB of deflate (torch.load would inflate it): refused before torch.load
    argv, out = evaluate_folder("deflate", {"00000.pkl": _storage_batch(_deflated_storage_payload(320 << 20), 1),
                                            "00000.gif": _eval_gif})
    cases["pickle_deflated_storage"] = (argv, "more than 256 MiB", out)
    # a 96 MiB storage loaded 8 times: each would fit, together they pass the budget
    argv, out = evaluate_folder("memo", {"00000.pkl": _storage_batch(_deflated_storage_payload(96 << 20), 8),
                                         "00000.gif": _eval_gif})
    cases["pickle_repeated_storage"] = (argv, "more than 256 MiB", out)
    # a legacy storage whose pickle claims 2**34 floats (64 GiB), allocated by torch before reading
    argv, out = evaluate_folder("legacy", {"00000.pkl": _storage_batch(_legacy_storage_claiming(1 << 34), 1),
                                           "00000.gif": _eval_gif})
    cases["pickle_legacy_storage"] = (argv, "more than 256 MiB", out)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()

    def mp4(args):
        def write(path):
            command = [ffmpeg, "-v", "error", "-f", "lavfi", *args, "-c:v", "libx264", "-preset", "ultrafast",
                       "-pix_fmt", "yuv420p", "-y", str(path)]
            if subprocess.run(command, timeout=120).returncode != 0 and "-fps_mode" in command:
                # the ffmpeg of older imageio-ffmpeg releases (before 5.1) knows the option as -vsync
                command[command.index("-fps_mode")] = "-vsync"
                subprocess.run(command, check=True, timeout=120)
            elif not path.is_file():
                raise RuntimeError(f"ffmpeg could not write {path}")
        return write

    drags = json.dumps({"drags": [{"start": [10, 10], "end": [20, 10]}]}).encode()
    # 3 frames of 1024x1024, the last 4000 s later: 5 KB that ffmpeg decodes to ~4000 frames (12 GB)
    gap = ["-i", "color=c=red:s=1024x1024:r=1:d=3", "-vf", "setpts='if(eq(N,2),4000/TB,N/(25*TB))'",
           "-fps_mode", "passthrough", "-video_track_timescale", "25"]
    argv, out = evaluate_folder("mp4_gap", {"a.json": drags, "a.mp4": mp4(gap)})
    cases["split_mp4_decoded_size"] = (argv, "decoded it is larger than 1 GiB", out)
    argv, out = evaluate_folder("mp4_long", {"a.json": drags, "a.mp4": mp4(["-i", "color=c=red:s=64x64:r=25:d=44"])})
    cases["split_mp4_frame_count"] = (argv, "more than 1024 frames", out)
    # YAML aliases: a dozen lines naming one list 10**9 times
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    (d / "alias.yaml").write_text("\n".join(lines + ["optim: {lr: *l8}"]) + "\n")
    run = d / "alias-run"
    argv = _tiny_train_args(run)
    argv[2] = str(d / "alias.yaml")
    cases["yaml_alias_bomb"] = (argv, "expands to more than 100000 values", run)
    # a scheduler config asking diffusers for arrays of 3e8 timesteps
    for name, value in (("float", "3e8"), ("int", "300000000")):
        model = _model_copy(tiny_pipeline_dir, d / f"model-{name}")
        config = model / "scheduler" / "scheduler_config.json"
        assert '"num_train_timesteps": 1000' in config.read_text()
        config.write_text(config.read_text().replace('"num_train_timesteps": 1000', f'"num_train_timesteps": {value}'))
        out = d / f"timesteps-{name}"
        cases[f"scheduler_timesteps_{name}"] = (["animate", str(corpus / "ok.png"), "--drag", "30,20:60,40", "--model",
                                                 str(model), "-o", str(out / "v.gif"), "--size", "64", "-q"],
                                                "num_train_timesteps", out)
    # UNet weights as a .bin whose one record inflates to 320 MiB (torch.save never compresses)
    model = _model_copy(tiny_pipeline_dir, d / "model-deflated")
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(_deflated_storage_payload(320 << 20))
    cases["model_deflated_weights"] = (["animate", str(corpus / "ok.png"), "--drag", "30,20:60,40", "--model", str(model),
                                        "-o", str(d / "deflated" / "v.gif"), "--size", "64", "-q"],
                                       "compressed records", d / "deflated")
    # image sizes bounded after padding and orientation; the sizes a model is run at
    (d / "wide.png").write_bytes(_png_header(65536, 1024))  # 64 megapixels, a 65536² square once padded
    (d / "mask.png").write_bytes(_png_header(20000, 20000))
    animate = ["animate", str(corpus / "ok.png"), "--drag", "30,20:60,40", "--model", str(tiny_pipeline_dir), "-q"]
    cases["wide_image"] = (["animate", str(d / "wide.png"), "--drag", "30,20:60,40", "--model", str(tiny_pipeline_dir),
                            "-o", str(d / "wide" / "v.gif"), "-q"], "padded to a square it is 65536x65536", d / "wide")
    cases["size_100000"] = ([*animate, "--size", "100000", "-o", str(d / "size" / "v.gif")], "--size 100000",
                            d / "size")
    cases["resolution_65536"] = ([*animate[:-3], "--method", "draganything", "--resolution", "65536x65536", "-o",
                                  str(d / "res" / "v.gif")], "--resolution side 65536", d / "res")
    cases["mask_20000"] = ([*animate[:-3], "--method", "draganything", "--mask", str(d / "mask.png"), "-o",
                            str(d / "mask" / "v.gif")], "megapixel limit", d / "mask")
    cases["demo_size"] = (["demo", "--model", str(tiny_pipeline_dir), "--size", "100000"], "--size 100000", d / "demo")
    cases["cache_latents_size"] = (["cache-latents", "--data", str(d / "mp4_long"), "--out", str(d / "cache"),
                                    "--model", str(tiny_pipeline_dir), "--size", "100000"], "--size 100000",
                                   d / "cache")
    for argv, _, folder in cases.values():
        folder.mkdir(exist_ok=True)
    results = _run_batch({name: case[0] for name, case in cases.items()}, d)
    return {name: (case, results[name]) for name, case in cases.items()}


BOMBS = ["pickle_deflated_storage", "pickle_repeated_storage", "pickle_legacy_storage", "split_mp4_decoded_size",
         "split_mp4_frame_count", "yaml_alias_bomb", "scheduler_timesteps_float", "scheduler_timesteps_int",
         "model_deflated_weights",
         "wide_image", "size_100000", "resolution_65536", "mask_20000", "demo_size", "cache_latents_size"]


@pytest.mark.parametrize("name", BOMBS)
def test_memory_bombs_are_refused_before_allocation(bombs, name):
    (argv, message, folder), result = bombs[name]
    err = result["err"]
    assert result["code"] == 2, (name, result)
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "Traceback" not in "\n".join(err)
    assert not folder.exists() or not any(folder.iterdir()), sorted(folder.iterdir())


def test_bounded_readers_and_the_torch_payload_probe(tmp_path):
    from puppet_master import limits
    from puppet_master.errors import UserInputError

    (tmp_path / "small").write_bytes(b"x" * 10)
    assert limits.read_bytes_bounded(tmp_path / "small", "file", 10) == b"x" * 10
    with pytest.raises(UserInputError, match="larger than 9 bytes; set PUPPET_MASTER_MAX_JSON_BYTES"):
        limits.read_bytes_bounded(tmp_path / "small", "file", 9, "MAX_JSON_BYTES")
    for kind in SPECIAL_KINDS:
        path = _special(tmp_path, kind, kind)
        with pytest.raises(UserInputError, match=f"is not a file \\(it is a {KIND_WORDS[kind]}"):
            limits.read_bytes_bounded(path, "file", 1 << 20)
    # a genuine payload declares its data exactly; the crafted ones declare what torch would allocate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        storage = torch.zeros(1000).storage()
    assert limits.torch_payload_bytes(storage.__reduce__()[1][0], "x") == 4000  # the bytes pickle writes
    assert limits.torch_payload_bytes(_legacy_storage_claiming(1 << 34), "x") == 4 << 34
    assert limits.torch_payload_bytes(_deflated_storage_payload(32 << 20), "x") >= 32 << 20
    with pytest.raises(UserInputError, match="not a readable torch file"):
        limits.torch_payload_bytes(b"\x80\x04K\x01.", "x")
    # the YAML-style expansion count stops early, whatever the expanded size
    shared = ["x"] * 10
    for _ in range(12):
        shared = [shared] * 10
    with pytest.raises(UserInputError, match="expands to more than 1000 values"):
        limits.check_expanded_size(shared, "config", max_nodes=1000)


def test_limits_can_be_raised_by_environment_variables(corpus, tmp_path):
    """``PUPPET_MASTER_<LIMIT>`` changes a limit (a 2 MiB drags file is then read); a malformed value is one error line."""
    exe = shutil.which("puppet-master") or str(Path(sys.executable).parent / "puppet-master")
    argv = [exe, "animate", str(corpus / "ok.png"), "--drags-json", str(corpus / "big.json"), "-o", str(tmp_path / "v.gif"),
            "--model", str(tmp_path / "none")]
    for value, message in (("4194304", '"drags" list'), ("lots", "PUPPET_MASTER_MAX_JSON_BYTES must be a whole number")):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "PUPPET_MASTER_MAX_JSON_BYTES": value})
        err = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(err) == 1 and message in err[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- EXIF orientation
# A phone photo is stored sideways with an EXIF orientation tag; viewers show it upright. The tool reads
# it as shown: drags are given in the displayed pixels and the video comes out upright.
_TO_RAW = {3: PIL.Image.Transpose.ROTATE_180, 6: PIL.Image.Transpose.ROTATE_90, 8: PIL.Image.Transpose.ROTATE_270}


def _upright() -> PIL.Image.Image:
    """The picture as displayed: 100 x 60, white, a red block at its top-right corner, a blue one below it."""
    arr = np.full((60, 100, 3), 255, np.uint8)
    arr[0:20, 80:100] = (220, 30, 30)
    arr[40:60, 10:40] = (30, 30, 220)
    return PIL.Image.fromarray(arr)


def _save_rotated(upright: PIL.Image.Image, orientation: int, path: Path) -> Path:
    """Store ``upright`` the way a camera does: pixels turned, an EXIF tag saying how to show them."""
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(_TO_RAW[orientation]).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_images_masks_and_uploads(tmp_path, orientation):
    from puppet_master.app.demo import read_upload
    from puppet_master.entity import load_mask
    from puppet_master.preprocessing import load_image

    upright = _upright()
    raw = _save_rotated(upright, orientation, tmp_path / "photo.png")
    assert PIL.Image.open(raw).size == ((60, 100) if orientation in (6, 8) else (100, 60))
    assert np.array_equal(np.asarray(load_image(raw)), np.asarray(upright))
    assert np.array_equal(np.asarray(read_upload(raw, "photo.png")), np.asarray(upright))
    # a DragAnything mask of the red block, stored the same way, lines up with the displayed image
    mask = np.zeros((60, 100), np.uint8)
    mask[0:20, 80:100] = 255
    loaded = load_mask(_save_rotated(PIL.Image.fromarray(mask), orientation, tmp_path / "mask.png"), size=(100, 60))
    assert np.array_equal(loaded, mask > 0)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_drags_on_a_rotated_photo_are_in_the_displayed_pixels(tmp_path, orientation):
    """A drag on the red block as displayed (x = 90 lies outside the stored image for 6 and 8) is accepted and
    starts on red in the model's input, which is the upright picture's."""
    from puppet_master.cli.animate import AnimateOptions, read_inputs
    from puppet_master.options import PuppetMasterOptions

    _save_rotated(_upright(), orientation, tmp_path / "photo.png")
    _upright().save(tmp_path / "upright.png")
    inputs = {}
    for name in ("photo", "upright"):
        opts = AnimateOptions(image=tmp_path / f"{name}.png", output=tmp_path / "v.gif", drags=["90,10:95,30"],
                              options=PuppetMasterOptions(size=64, frames=4))
        inputs[name] = read_inputs(opts)
    square, drags = inputs["photo"]
    assert np.array_equal(np.asarray(square), np.asarray(inputs["upright"][0]))
    assert np.allclose(drags.trajectories, inputs["upright"][1].trajectories)
    x, y = drags.trajectories[0, 0]
    red, green, blue = np.asarray(square)[int(y), int(x)].astype(int)
    assert red > 150 and green < 100 and blue < 100, (red, green, blue)  # the drag starts on the red block


def test_animate_of_a_rotated_photo_gives_the_upright_video(tmp_path, tiny_pipeline_dir, capsys):
    raw = _save_rotated(_upright(), 6, tmp_path / "photo.png")
    _upright().save(tmp_path / "upright.png")
    for name, image in (("rotated", raw), ("upright", tmp_path / "upright.png")):
        code, _, err = _cli(["animate", image, "--drag", "90,10:95,30", "--model", tiny_pipeline_dir, "-o",
                             tmp_path / f"{name}.gif", "--steps", "1", "--frames", "3", "--size", "64", "-q"], capsys)
        assert code == 0, err
    from puppet_master.video import read_video

    assert np.array_equal(read_video(tmp_path / "rotated.gif"), read_video(tmp_path / "upright.gif"))


# ------------------------------------------------------------------------------------- disk use
DISK_CASES = {"zero": "is not a file (it is a character device)", "fifo": "is not a file (it is a FIFO",
              "sparse": "larger than 2 GiB", "folder": "is not a file (it is a folder)"}


@pytest.fixture(scope="module")
def disk_cases(tmp_path_factory):
    """``data build --source folder`` with a .glb that is /dev/zero, a FIFO, a folder or a (sparse) 3 GiB file;
    run in the bounded subprocess (no file may grow past 1 GiB there)."""
    d = tmp_path_factory.mktemp("disk")
    cases = {}
    for kind in DISK_CASES:
        assets = d / f"assets-{kind}"
        assets.mkdir()
        (assets / "good.glb").write_bytes(b"glTF\x02\x00\x00\x00")
        if kind == "sparse":
            with open(assets / "huge.glb", "wb") as fh:
                fh.truncate(3 << 30)  # no disk space used
        else:
            _special(assets, "huge.glb", kind)
        cases[kind] = ["data", "build", "--source", "folder", "--assets", assets, "--out", d / f"ds-{kind}", "-q"]
    results = _run_batch(cases, d)
    return {kind: (d / f"ds-{kind}", results[kind]) for kind in cases}


@pytest.mark.parametrize("kind", sorted(DISK_CASES))
def test_data_build_refuses_assets_that_would_fill_the_disk(disk_cases, kind):
    """Refused before the build starts: one error line naming the file, no output folder."""
    out, result = disk_cases[kind]
    err = result["err"]
    assert result["code"] == 2 and len(err) == 1 and err[0].startswith("error: "), result
    assert DISK_CASES[kind] in err[0] and "huge.glb" in err[0], err
    assert not out.exists()


_COPY_CASES = r"""
import json, sys
from pathlib import Path
from puppet_master.data.build import BuildConfig, process_asset
from puppet_master.data.sources import AssetTask

records = {}
for name, src, out in json.load(open(sys.argv[1])):
    cfg = {**BuildConfig(out=out, stages=("asset",)).__dict__, "stages": ["asset"]}
    records[name] = process_asset(AssetTask(name, "folder", path=src).to_dict(), cfg)
print(json.dumps(records))
"""


def test_a_folder_asset_is_copied_with_a_byte_budget_and_no_partial_file(tmp_path):
    """The copy itself is bounded (a file swapped or grown after the folder was listed): the asset fails, its
    partial copy is removed and the build goes on. Run with a 4 KiB budget, in the bounded subprocess."""
    (tmp_path / "big.glb").write_bytes(b"x" * 5000)
    (tmp_path / "fits.glb").write_bytes(b"x" * 4000)
    _special(tmp_path, "zero.glb", "zero")
    _special(tmp_path, "fifo.glb", "fifo")
    out = tmp_path / "ds"
    cases = [[name, str(tmp_path / f"{name}.glb"), str(out)] for name in ("big", "fits", "zero", "fifo")]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", _COPY_CASES, str(tmp_path / "cases.json")], capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit_resources,
                          env={**os.environ, "PUPPET_MASTER_MAX_ASSET_BYTES": "4096"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    assert records["big"]["status"] == "failed" and "larger than 4 KiB" in records["big"]["error"], records["big"]
    for name in ("zero", "fifo"):
        assert records[name]["status"] == "failed" and "is not a file" in records[name]["error"], records[name]
    assert sorted(p.name for p in (out / "assets").iterdir()) == ["fits.glb", "fits.json"]  # no partial copies
    assert (out / "assets" / "fits.glb").read_bytes() == b"x" * 4000
    assert json.loads((out / "status" / "big.json").read_text())["status"] == "failed"


def test_data_build_with_ray_missing_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the optional package were not installed
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "a.glb").write_bytes(b"glTF\x02\x00\x00\x00")
    out = tmp_path / "ds"
    code, stdout, err = _cli(["data", "build", "--source", "folder", "--assets", assets, "--out", out, "--executor",
                              "ray", "-q"], capsys)
    _assert_refused(code, stdout, err, 'pip install "puppet-master[ray]"', {}, out)
    assert not out.exists()


# ------------------------------------------------------------------------------- leftovers
def test_animate_removes_the_temporary_file_a_killed_run_left(tmp_path, tiny_pipeline_dir, capsys):
    """SIGKILL cannot be caught: the next run for the same output removes the dead process's temporary file
    (and leaves alone one of a live process or of another output)."""
    from puppet_master.video import _temp_key

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    key = _temp_key(out / "v.mp4")
    stale = out / f".pm-{dead_pid}-{key}-abc123.mp4"
    live = out / f".pm-{os.getpid()}-{key}-def456.mp4"
    other = out / f".pm-{dead_pid}-{_temp_key(out / 'w.mp4')}-ghi789.mp4"
    for f in (stale, live, other):
        f.write_bytes(b"half a video")
    code, _, err = _cli(["animate", tmp_path.parent / "missing.png", "--drag", "1,1:2,2", "-o", out / "v.mp4"], capsys)
    assert code == 2 and not stale.exists() and live.exists() and other.exists(), err
    live.unlink()
    other.unlink()
    assert list(out.iterdir()) == []


_SIGTERM_RUN = r"""
import sys
from puppet_master.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_animate_stopped_by_sigterm_while_writing_leaves_no_temporary_file(tmp_path, tiny_pipeline_dir):
    """SIGTERM arrives while the video is being encoded (its temporary file exists): the run ends as
    after Ctrl-C (status 130) and neither the temporary file nor the output is left."""
    import signal
    import time

    _upright().save(tmp_path / "img.png")
    for attempt in range(5):
        out = tmp_path / f"try{attempt}"
        out.mkdir()
        argv = ["animate", str(tmp_path / "img.png"), "--drag", "20,20:40,30", "--model", str(tiny_pipeline_dir),
                "-o", str(out / "v.mp4"), "--steps", "1", "--frames", "120", "--size", "64"]
        proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_RUN, *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        # the probe file of the output check lives for microseconds before the model loads; after sampling,
        # the encoder's temporary file lives while ffmpeg encodes 120 frames
        sent = False
        deadline = time.time() + 300
        def encoding() -> bool:  # a file listed may be gone by the time it is looked at (the probe file)
            for p in out.iterdir():
                try:
                    if p.name.startswith(".pm-") and p.stat().st_size > 0:
                        return True
                except FileNotFoundError:
                    pass
            return False

        while proc.poll() is None and time.time() < deadline:
            if encoding():
                proc.send_signal(signal.SIGTERM)
                sent = True
                break
            time.sleep(0.002)
        _, stderr = proc.communicate(timeout=300)
        if not sent:
            continue  # encoding finished between two looks: try again
        assert proc.returncode == 130, stderr  # as for Ctrl-C
        assert "Traceback" not in stderr
        assert list(out.iterdir()) == [], list(out.iterdir())
        return
    pytest.fail("the encoder's temporary file was never seen in 5 runs")


def test_a_stopped_cache_latents_leaves_no_new_files(tmp_path, tiny_pipeline_dir, capsys):
    data = tmp_path / "data"
    _write_batch(data, "00000", pickle.dumps({"drags": _Payload()}), "ok")
    out = tmp_path / "cache"
    code, stdout, err = _cli(["cache-latents", "--data", data, "--out", out, "--model", tiny_pipeline_dir, "-q"], capsys)
    _assert_refused(code, stdout, err, "refusing to unpickle", {}, out)
    assert not out.exists()


def test_reports_are_written_atomically(tmp_path):
    from puppet_master.evaluation.runner import _write_atomic

    _write_atomic(tmp_path / "report.json", '{"a": 1}\n')
    assert (tmp_path / "report.json").read_text() == '{"a": 1}\n'
    (tmp_path / "report.md").mkdir()  # the rename fails: no partial file stays beside it
    with pytest.raises(OSError):
        _write_atomic(tmp_path / "report.md", "# report\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]


# ---------------------------------------------------------------------------------------- demo
def test_demo_says_when_the_method_asked_for_is_not_loaded(tiny_pipeline_dir):
    from puppet_master.app.demo import DemoState, build_demo
    from puppet_master.pipelines.loading import load_pipeline

    from puppet_master.options import PuppetMasterOptions

    demo = build_demo(load_pipeline(str(tiny_pipeline_dir)), PuppetMasterOptions(size=64, frames=3, steps=1))
    generate = next(f.fn for f in demo.fns.values() if f.fn.__name__ == "on_generate")
    state = DemoState(image=PIL.Image.new("RGB", (64, 64), (200, 60, 40)), drags=[((20.0, 20.0), (40.0, 30.0))])
    video, download, status = generate(state, False, False, "DragAnything")
    assert video is None and download is None
    assert "DragAnything is not loaded" in status and "--draganything-model" in status, status
    _, _, status = generate(state, False, False, "Magic")
    assert "Magic is not loaded" in status and "choose Puppet-Master" in status, status


def test_demo_removes_the_folders_of_killed_demos(tmp_path):
    from puppet_master.app.demo import DEMO_FOLDER_PREFIX, remove_stale_demo_folders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{DEMO_FOLDER_PREFIX}{int(dead.stdout)}"
    live = tmp_path / f"{DEMO_FOLDER_PREFIX}{os.getpid()}"
    unrelated = tmp_path / f"{DEMO_FOLDER_PREFIX}notes"
    for folder in (stale, live, unrelated):
        (folder / "gradio").mkdir(parents=True)
        (folder / "gradio" / "upload.png").write_bytes(b"x" * 100)
    assert remove_stale_demo_folders(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and unrelated.exists()
