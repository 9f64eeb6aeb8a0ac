"""Bad values at the boundary: every number finite and in range, integers of sane size, paths of the right kind.

Each refusal is checked as in ``test_bad_input.py``: exit status 2, exactly one ``error:``
line naming the problem, no traceback, nothing new or changed in the output location.
Also the options' single definition: one default per option across animate, evaluate and
the demo, overrides passed per call (never saved into the model), ``-q`` keeping the
result's line.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file
from test_bad_input import _assert_refused, _cli, _eval_gif, _png_header, _snapshot, _tiny_train_args

from puppet_master.cli import main

HUGE = "1" * 5000  # more digits than Python converts (4,300)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("values")
    arr = np.zeros((60, 100, 4), np.uint8)
    arr[15:45, 25:75] = (200, 60, 40, 255)
    PIL.Image.fromarray(arr).save(d / "ok.png")
    (d / "bomb_mask.png").write_bytes(_png_header(20000, 20000))
    drag = '{"start": [30, 20], "end": [60, 40]}'
    texts = {
        "huge_int.json": '{"drags": [{"start": [' + HUGE + ', 20], "end": [60, 40]}]}',
        "huge_size.json": '{"image_size": [' + HUGE + ', 60], "drags": [' + drag + ']}',
        "nan.json": '{"drags": [{"start": [NaN, 20], "end": [60, 40]}]}',
        "infinity.json": '{"drags": [{"start": [30, 20], "end": [Infinity, 40]}]}',
        "overflow.json": '{"drags": [{"start": [30, 20], "end": [1e999, 40]}]}',
    }
    for name, text in texts.items():
        (d / name).write_text(text)
    (d / "a_file").write_text("not a folder")
    return d


@pytest.fixture()
def out_dir(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.gif").write_bytes(b"GIF89a an earlier result")
    return out


def _animate(files, model, out, *extra):
    return ["animate", files / "ok.png", "--model", model, "-o", out / "v.gif", "--frames", "3", "--size", "64",
            "--steps", "1", *extra]


# ---------------------------------------------------------------------------------------- animate
ANIMATE_VALUES = [
    # numbers out of range or not finite: refused before the model loads, nothing written
    (["--drag", "30,20:60,40", "--seed", str(2**70)], "--seed must be a whole number from 0 to 4294967295"),
    (["--drag", "30,20:60,40", "--seed", "-1"], "--seed must be a whole number from 0"),
    (["--drag", "30,20:60,40", "--fps", "inf"], "--fps must be a finite number"),
    (["--drag", "30,20:60,40", "--fps", "0"], "--fps must be a finite number from 0.1"),
    (["--drag", "30,20:60,40", "--guidance", "nan"], "--guidance must be a finite number"),
    (["--drag", "30,20:60,40", "--guidance", "inf"], "--guidance must be a finite number"),
    (["--drag", "30,20:60,40", "--guidance", "-3"], "--guidance must be a finite number from 0"),
    (["--drag", "30,20:60,40", "--min-guidance", "nan"], "--min-guidance must be a finite number"),
    (["--drag", "30,20:60,40", "--steps", "100000"], "--steps must be a whole number from 1 to 1000"),
    (["--drag", "30,20:60,40", "--frames", str(2**40)], "--frames must be a whole number from 2"),
    (["--drag", "30,20:60,40", "--warp-init-sigma", "inf"], "--warp-init-sigma must be a finite number"),
    # devices this machine cannot run on
    (["--drag", "30,20:60,40", "--device", "meta"], "--device 'meta'"),
    (["--drag", "30,20:60,40", "--device", "xla"], "--device 'xla'"),
    (["--drag", "30,20:60,40", "--device", "cuda:7"], "cuda"),
    (["--drag", "30,20:60,40", "--device", "gpu0"], "unknown device"),
    # JSON integers past Python's limit, NaN / Infinity and overflowing numbers in a drags file
    (["--drags-json", "huge_int.json"], "integer of 5000 digits"),
    (["--drags-json", "huge_size.json"], "integer of 5000 digits"),
    (["--drags-json", "nan.json"], "not finite (NaN)"),
    (["--drags-json", "infinity.json"], "not finite (Infinity)"),
    (["--drags-json", "overflow.json"], "not finite (1e999)"),
    # the other method's options, one clear line
    (["--drag", "30,20:60,40", "--mask", "ok.png", "--segmenter", "sam"], "--mask, --segmenter: for --method draganything"),
    (["--drag", "30,20:60,40", "--resolution", "64x64"], "--resolution: for --method draganything only"),
    # click's own usage errors: one line too
    (["--drag", "30,20:60,40", "--steps", "many"], "Invalid value for '--steps'"),
    (["--drag", "30,20:60,40", "--stpes", "3"], "No such option: --stpes"),
    (["--drag", "30,20:60,40", "--threads", "0"], "Invalid value for '--threads'"),
]


@pytest.mark.parametrize("extra, message", ANIMATE_VALUES, ids=[" ".join(c[0][-2:])[:40] for c in ANIMATE_VALUES])
def test_animate_refuses_bad_values(files, out_dir, tiny_pipeline_dir, capsys, extra, message):
    before = _snapshot(out_dir)
    extra = [str(files / e) if e.endswith((".json", ".png")) else e for e in extra]
    code, out, err = _cli(_animate(files, tiny_pipeline_dir, out_dir, *extra), capsys)
    _assert_refused(code, out, err, message, before, out_dir)


def test_usage_errors_are_one_line(capsys, tmp_path):
    for argv, message in [
        (["animate", "x.png", "--drag", "1,1:2,2"], "Missing option '--output'"),
        (["evaluate", "--data", tmp_path, "--out", tmp_path / "e", "--limit", "0"], "Invalid value for '--limit'"),
        (["data", "build", "--out", tmp_path / "ds", "--views", "0"], "Invalid value for '--views'"),
        (["no-such-command"], "No such command"),
    ]:
        code, out, err = _cli(argv, capsys)
        _assert_refused(code, out, err, message, {}, tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["train-vae", "--data", "D", "--out", "OUT", "--lr", "inf"], "Invalid value for '--lr': must be a finite number > 0"),
    (["train-vae", "--data", "D", "--out", "OUT", "--lr", "0"], "Invalid value for '--lr': must be a finite number > 0"),
    (["train-vae", "--data", "D", "--out", "OUT", "--fg-weight", "nan"], "'--fg-weight': must be a finite number >= 1"),
    (["train-vae", "--data", "D", "--out", "OUT", "--chroma-weight", "-inf"], "'--chroma-weight': must be a finite"),
    (["train-vae", "--data", "D", "--out", "OUT", "--seed", str(2**64)], "Invalid value for '--seed'"),
    (["random-model", "OUT", "--seed", str(2**70)], "Invalid value for '--seed'"),
    (["data", "generate-assets", "--out", "OUT", "--bad-fraction", "nan"], "'--bad-fraction': must be a finite number"),
    (["data", "build", "--out", "OUT", "--seed", "-1"], "Invalid value for '--seed'"),
    (["demo", "--port", "0"], "Invalid value for '--port'"),
    (["demo", "--steps", "0"], "--steps must be a whole number from 1"),
    (["demo", "--resolution", "64x64"], "--resolution: for DragAnything only; add --draganything-model DIR"),
])
def test_other_numeric_options_are_finite_and_in_range(tmp_path, capsys, argv, message):
    code, out, err = _cli([str(tmp_path / a) if a in ("D", "OUT") else a for a in argv], capsys)
    _assert_refused(code, out, err, message, {}, tmp_path)
    assert not (tmp_path / "OUT").exists()


def test_draganything_refuses_a_decompression_bomb_mask(files, out_dir, tiny_draganything_dir, capsys):
    before = _snapshot(out_dir)
    code, out, err = _cli(["animate", files / "ok.png", "--method", "draganything", "--model", tiny_draganything_dir,
                           "--drag", "30,20:60,40", "--mask", files / "bomb_mask.png", "-o", out_dir / "v.gif",
                           "--frames", "3", "--steps", "1", "--resolution", "128x64"], capsys)
    _assert_refused(code, out, err, "mask", before, out_dir)
    assert "megapixel limit" in err[0], err  # refused from the header, before decoding


@pytest.fixture(scope="module")
def broken_models(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """Copies of the tiny pipeline, each with one config number damaged."""
    root = tmp_path_factory.mktemp("broken")
    damage = {"vae_nan": ("vae/config.json", "scaling_factor", float("nan")),
              "vae_zero": ("vae/config.json", "scaling_factor", 0.0),
              "scheduler_inf": ("scheduler/scheduler_config.json", "sigma_max", float("inf")),
              "index_negative": ("model_index.json", "warp_init_sigma", -1.0),
              "unet_nan": ("unet/config.json", "drag_warp_background", float("nan"))}
    for name, (file, key, value) in damage.items():
        shutil.copytree(tiny_pipeline_dir, root / name)
        config = json.loads((root / name / file).read_text())
        config[key] = value
        (root / name / file).write_text(json.dumps(config))  # writes NaN / Infinity as Python's json does
    return root


@pytest.mark.parametrize("name, message", [
    ("vae_nan", "scaling_factor is nan"),
    ("vae_zero", "scaling_factor is 0.0; it must be > 0"),
    ("scheduler_inf", "sigma_max is inf"),
    ("index_negative", "warp_init_sigma is -1.0; it must be >= 0"),
    ("unet_nan", "drag_warp_background is nan"),
])
def test_a_model_config_with_non_finite_or_out_of_range_numbers_is_refused(files, out_dir, broken_models, capsys,
                                                                           name, message):
    before = _snapshot(out_dir)
    code, out, err = _cli(_animate(files, broken_models / name, out_dir, "--drag", "30,20:60,40"), capsys)
    _assert_refused(code, out, err, message, before, out_dir)


def test_held_warnings_are_shown_after_a_successful_command():
    """Warnings are held while a command runs and shown at its end when it succeeds."""
    code = ("import warnings, puppet_master.cli as cli\n"
            "def cmd():\n    warnings.warn('held until the end', UserWarning)\n    print('done')\n"
            "cli.app.command('warn')(cmd)\ncli.main(['warn'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    assert "UserWarning: held until the end" in proc.stderr


# ---------------------------------------------------------------------------------------- evaluate
def _split_folder(root: Path, bad: dict[str, str]) -> Path:
    """A split folder with two good examples and one bad JSON per entry of ``bad`` (each with a valid video)."""
    root.mkdir()
    good = {"drags": [{"trajectory": [[8 + n, 16] for n in range(14)]}]}
    for name in ("good1", "good2"):
        _eval_gif(root / f"{name}.gif")
        (root / f"{name}.json").write_text(json.dumps(good))
    for name, text in bad.items():
        _eval_gif(root / f"{name}.gif")
        (root / f"{name}.json").write_text(text)
    return root


BAD_SPLIT_JSON = {
    "huge": '{"drags": [{"trajectory": [[' + HUGE + ', 16]]}]}',
    "nan": '{"drags": [{"start": [NaN, 16], "end": [9, 16]}]}',
    "infinity": '{"drags": [{"start": [8, 16], "end": [9, 16]}], "category": Infinity}',
    "deep": "[" * 5000 + "]" * 5000,
    "latin1": '{"drags": [], "note": "caf\xe9"}',
}


def test_evaluate_skips_bad_split_json_and_scores_the_good_examples(tmp_path, capsys):
    data = _split_folder(tmp_path / "split", {k: v for k, v in BAD_SPLIT_JSON.items() if k != "latin1"})
    (data / "latin1.json").write_bytes(BAD_SPLIT_JSON["latin1"].encode("latin-1"))
    _eval_gif(data / "latin1.gif")
    out = tmp_path / "eval"
    code, stdout, err = _cli(["evaluate", "--data", data, "--method", "static", "--out", out, "--no-videos", "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["num_examples"] == 2 and [r["name"] for r in report["per_example"]] == ["good1", "good2"]
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert sorted(reasons) == ["deep", "huge", "infinity", "latin1", "nan"]
    assert "5000 digits" in reasons["huge"] and "not finite" in reasons["nan"] and "not finite" in reasons["infinity"]
    assert "nested too deeply" in reasons["deep"] and "not UTF-8" in reasons["latin1"]
    # -q keeps the results: the report table and the final line
    assert "| static |" in stdout and err == [f"wrote {out / 'report.json'} (2 examples)"]


@pytest.mark.parametrize("layout, args, message", [
    ("videos_file", [], "videos' is a file, not a folder"),
    ("report_md_folder", [], "report.md' is not a file"),
    ("report_json_folder", ["--overwrite"], "report.json' is not a file"),
    ("none", ["--seed", "-5", "--method", "model"], "--seed must be a whole number from 0"),
    ("none", ["--steps", "0", "--method", "model"], "--steps must be a whole number from 1"),
    ("none", ["--guidance", "nan", "--method", "model"], "--guidance must be a finite number"),
    ("none", ["--min-guidance", "inf", "--method", "model"], "--min-guidance must be a finite number"),
    ("none", ["--resolution", "64x64"], "--resolution sets how --method draganything samples"),
    ("none", ["--device", "meta"], "--device 'meta'"),
])
def test_evaluate_checks_its_output_and_values_before_writing(tmp_path, capsys, layout, args, message):
    data = _split_folder(tmp_path / "split", {})
    out = tmp_path / "eval"
    out.mkdir()
    if layout == "videos_file":
        (out / "videos").write_text("a file")
    elif layout == "report_md_folder":
        (out / "report.md").mkdir()
    elif layout == "report_json_folder":
        (out / "report.json").mkdir()
    before, folders = _snapshot(out), sorted(str(p) for p in out.rglob("*"))
    code, stdout, err = _cli(["evaluate", "--data", data, "--method", "static", "--out", out, "-q", *args], capsys)
    _assert_refused(code, stdout, err, message, before, out)
    assert sorted(str(p) for p in out.rglob("*")) == folders


# ---------------------------------------------------------------------------------------- train
@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    (f"seed={2**64}", "seed: Input should be less than or equal to 4294967295"),
    ("seed=true", "seed: must be a number, not true"),
    ("seed=" + HUGE, "integer of 5000 digits"),
    ("max_steps=99999999999999999999999", "too large for a setting"),
    ("optim.betas=[0.9, 1.5]", "optim.betas.1: Input should be less than 1"),
    ("optim.betas=[.nan, 0.9]", "optim.betas.0: must be a finite number"),
    ("optim.betas=fast", "optim.betas"),
    ("optim.lr=.inf", "optim.lr: must be a finite number"),
    ("optim.lr=fast", "optim.lr: Input should be a valid number"),
    ("optim.eps=.nan", "optim.eps: must be a finite number"),
    ("p_mean=.nan", "p_mean: must be a finite number"),
    ("p_std=.inf", "p_std: must be a finite number"),
    ("motion_weight=-.inf", "motion_weight: must be a finite number"),
    ("data.sources.0.weight=.inf", "data.sources.0.weight: must be a finite number"),
    ("output_dir=5", "output_dir: Input should be a valid string"),
    ("output_dir=FILE", "is a file, not a folder"),
    ("output_dir=FILE/run", "is a file, not a folder"),
])
def test_train_refuses_bad_config_values(files, tmp_path, capsys, override, message):
    run = tmp_path / "run"
    argv = _tiny_train_args(run) + [override.replace("FILE", str(files / "a_file"))]
    code, out, err = _cli(argv, capsys)
    _assert_refused(code, out, err, message, {}, run)
    assert not run.exists() and (files / "a_file").read_text() == "not a folder"


def test_train_refuses_a_huge_integer_in_the_config_file(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "configs" / "tiny.yaml").read_text().replace("seed: 0", "seed: " + HUGE))
    argv = _tiny_train_args(tmp_path / "run")
    argv[2] = str(config)
    code, out, err = _cli(argv, capsys)
    _assert_refused(code, out, err, "integer of 5000 digits", {}, tmp_path / "run")


def _without_package(monkeypatch, name: str) -> None:
    """Make ``importlib.util.find_spec(name)`` say the package is not installed (as on a machine without it)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == name else real(n, *a, **k))


def test_train_refuses_a_logger_that_is_not_installed(tmp_path, capsys, monkeypatch):
    _without_package(monkeypatch, "wandb")
    run = tmp_path / "run"
    code, out, err = _cli(_tiny_train_args(run, "log_with=wandb"), capsys)
    _assert_refused(code, out, err, "log_with=wandb needs the wandb package (pip install wandb)", {}, run)
    assert not run.exists()


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    """A tiny run stopped at step 1 with a checkpoint (EMA on)."""
    run = tmp_path_factory.mktemp("train") / "run"
    with pytest.raises(SystemExit) as exc:
        main(_tiny_train_args(run, "max_steps=1", "checkpoint_every=1"))
    assert exc.value.code in (0, None)
    return run


def _damage(ckpt: Path, how: str) -> None:
    def edit_json(name, old, new):
        (ckpt / name).write_text((ckpt / name).read_text().replace(old, new))

    if how == "model_truncated":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "model_garbage":
        (ckpt / "model.safetensors").write_bytes(os.urandom(256))
    elif how == "ema_weights_truncated":
        data = (ckpt / "ema.safetensors").read_bytes()
        (ckpt / "ema.safetensors").write_bytes(data[:100])
    elif how == "ema_infinity":
        edit_json("ema.json", '"decay": 0.999', '"decay": Infinity')
    elif how == "ema_nan":
        edit_json("ema.json", '"power": ', '"power": NaN, "x": ')
    elif how == "ema_out_of_range":
        edit_json("ema.json", '"decay": 0.999', '"decay": 5')
    elif how == "ema_wrong_type":
        edit_json("ema.json", '"use_ema_warmup": false', '"use_ema_warmup": "no"')
    elif how == "ema_huge":
        edit_json("ema.json", '"optimization_step": 1', '"optimization_step": ' + HUGE)
    elif how == "state_huge":
        (ckpt / "trainer_state.json").write_text('{"global_step": ' + HUGE + "}")
    elif how == "beyond_max_steps":
        (ckpt / "trainer_state.json").write_text('{"global_step": 7}')
    else:
        name = "scheduler.bin" if how.startswith("scheduler") else "optimizer.bin"
        state = torch.load(ckpt / name, weights_only=True)
        if how == "scheduler_extra_key":
            state["step"] = 5
        elif how == "scheduler_lrs":
            state["base_lrs"] = ["fast"]
        elif how == "optimizer_lr":
            state["param_groups"][0]["lr"] = "fast"
        elif how == "optimizer_betas":
            state["param_groups"][0]["betas"] = (0.9, float("nan"))
        elif how == "optimizer_state_shape":
            first = next(iter(state["state"].values()))
            first["exp_avg"] = torch.zeros(3)
        torch.save(state, ckpt / name)


@pytest.mark.parametrize("how, message", [
    ("model_truncated", "model.safetensors is not a readable safetensors file"),
    ("model_garbage", "model.safetensors is not a readable safetensors file"),
    ("ema_weights_truncated", "ema.safetensors is not a readable safetensors file"),
    ("ema_infinity", "not finite (Infinity)"),
    ("ema_nan", "not finite (NaN)"),
    ("ema_out_of_range", "decay must be a number from 0 to 1, got 5"),
    ("ema_wrong_type", "use_ema_warmup must be true or false"),
    ("ema_huge", "integer of 5000 digits"),
    ("state_huge", "does not hold a step number"),
    ("beyond_max_steps", "at step 7, beyond max_steps=2"),
    ("scheduler_extra_key", "unexpected entries: step"),
    ("scheduler_lrs", "base_lrs=['fast'] is not a list of finite learning rates"),
    ("optimizer_lr", "lr='fast', not a finite number"),
    ("optimizer_betas", "betas=(0.9, nan), not two numbers in [0, 1)"),
    ("optimizer_state_shape", "exp_avg of shape (3,)"),
])
def test_resume_checks_the_checkpoint_before_training(checkpoint_run, tmp_path, capsys, how, message):
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    _damage(run / "checkpoints" / "step-00000001", how)
    before = _snapshot(run)
    code, out, err = _cli(_tiny_train_args(run, "max_steps=2", "checkpoint_every=1", "resume=latest"), capsys)
    _assert_refused(code, out, err, message, before, run)


def test_refusal_after_a_library_warning_is_still_one_line(checkpoint_run, tmp_path, capsys):
    """torch warns about the pickle protocol of a planted optimizer.bin, then resuming refuses it: one line only."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    (run / "checkpoints" / "step-00000001" / "optimizer.bin").write_bytes(pickle.dumps({"lr": 1.0}, protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, out, err = _cli(_tiny_train_args(run, "max_steps=2", "resume=latest"), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "not plain data" in err[0], err
    assert not seen  # torch's warning was held and dropped with the refusal


def _cache_file(path: Path, frames: int = 3, size: int = 8) -> None:
    """One latent-cache clip as ``cache-latents`` writes it (keys and layout of training/data.py)."""
    g = torch.Generator().manual_seed(len(path.name))
    drags = torch.zeros(frames, 5, 4)
    drags[:, 0, :2] = 0.5
    drags[:, 0, 2] = torch.linspace(0.5, 0.6, frames)
    drags[:, 0, 3] = 0.5
    save_file({"latents": torch.randn(frames, 4, size, size, generator=g), "image_latents": torch.randn(4, size, size),
               "embedding": torch.randn(1, 32, generator=g), "drags": drags}, str(path), metadata={"category": "x"})


@pytest.mark.parametrize("damage, message", [
    ("truncated", "cannot be read"),
    ("missing_key", "lacks the tensor"),
    ("other_shape", "holds latents of shape (3, 4, 16, 16)"),
])
def test_a_damaged_latent_cache_file_stops_training_with_one_line(tmp_path, capsys, damage, message):
    cache = tmp_path / "cache"
    cache.mkdir()
    for i in range(2):
        _cache_file(cache / f"clip{i}.safetensors")
    bad = cache / "clip1.safetensors"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    elif damage == "missing_key":
        save_file({"latents": torch.zeros(3, 4, 8, 8)}, str(bad))
    else:
        _cache_file(bad, size=16)
    run = tmp_path / "run"
    code, out, err = _cli(_tiny_train_args(run, "max_steps=4", "checkpoint_every=1000", "use_ema=false",
                                           f"data.sources=[{{type: latent_cache, path: {cache}}}]"), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "clip1.safetensors" in err[0] and "Traceback" not in out


# ---------------------------------------------------------------------------------------- other commands
def test_export_checkpoint_refuses_to_replace_a_file(checkpoint_run, tiny_pipeline_dir, tmp_path, capsys):
    target = tmp_path / "FILE"
    target.write_text("not a pipeline")
    before = _snapshot(tmp_path)
    code, out, err = _cli(["export-checkpoint", checkpoint_run / "checkpoints" / "step-00000001", "--base",
                           tiny_pipeline_dir, "-o", target, "--overwrite"], capsys)
    _assert_refused(code, out, err, "is a file, not a pipeline folder", before, tmp_path)
    assert not (tmp_path / ".FILE.partial").exists()


@pytest.mark.parametrize("argv, message", [
    (["data", "build", "--out", "FILE", "--num-assets", "1", "-q"], "'FILE' is a file, not a folder"),
    (["data", "build", "--out", "FILE/ds", "--num-assets", "1", "-q"], "is a file, not a folder"),
    (["data", "generate-assets", "--out", "FILE", "--num-assets", "1", "-q"], "is a file, not a folder"),
])
def test_data_commands_refuse_a_file_as_output(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    before = _snapshot(tmp_path)
    code, out, err = _cli([str(tmp_path / a) if a.startswith("FILE") else a for a in argv], capsys)
    _assert_refused(code, out, err, message.replace("'FILE'", repr(str(tmp_path / "FILE"))), before, tmp_path)


def test_objaverse_build_without_the_package_names_the_install(tmp_path, capsys, monkeypatch):
    _without_package(monkeypatch, "objaverse")
    code, out, err = _cli(["data", "build", "--out", tmp_path / "ds", "--source", "objaverse", "--num-assets", "2",
                           "-q"], capsys)
    _assert_refused(code, out, err, "pip install objaverse", {}, tmp_path / "ds")
    assert "puppet-master[objaverse]" in err[0] and not (tmp_path / "ds").exists()


@pytest.mark.parametrize("size, message", [("7", "--size must be a positive multiple of"),
                                           ("-64", "--size must be a positive multiple of")])
def test_cache_latents_refuses_a_size_the_model_cannot_work_at(shared_dir, tiny_pipeline_dir, tmp_path, capsys, size,
                                                              message):
    out = tmp_path / "cache"
    code, stdout, err = _cli(["cache-latents", "--data", shared_dir / "data" / "dragamove-test-dev", "--out", out,
                              "--model", tiny_pipeline_dir, "--size", size, "--limit", "1", "-q"], capsys)
    _assert_refused(code, stdout, err, message, {}, out)
    assert not out.exists()


def test_train_vae_refuses_too_few_frames_before_writing(tmp_path, capsys):
    data = tmp_path / "clips"
    data.mkdir()
    _eval_gif(data / "only.gif")
    (data / "only.json").write_text(json.dumps({"drags": [{"start": [8, 8], "end": [9, 9]}]}))
    out = tmp_path / "vae-run"
    code, stdout, err = _cli(["train-vae", "--data", data, "--out", out, "--steps", "1", "--batch-size", "1",
                              "--crop", "16", "--channels", "8,8", "--no-photos", "-q"], capsys)
    _assert_refused(code, stdout, err, "needs at least 10", {}, out)
    assert "read 3 frames" in err[0] and not out.exists()


# ---------------------------------------------------------------------------------------- options, declared once
def test_each_option_has_one_default_read_from_its_definition(tiny_pipeline_dir, capsys):
    from puppet_master.app.demo import build_demo
    from puppet_master.cli.animate import animate
    from puppet_master.cli.demo import demo as demo_command
    from puppet_master.cli.evaluate import EvaluateOptions, evaluate
    from puppet_master.options import DragAnythingOptions, PuppetMasterOptions
    from puppet_master.pipelines.loading import load_pipeline

    pm, da = PuppetMasterOptions, DragAnythingOptions
    # Puppet-Master's sampling defaults are the loaded model's (model_index.json, else the paper's); DragAnything's
    # are the release's
    assert (pm.default("steps"), da.default("steps"), pm.default("guidance"), da.default("guidance")) == \
           (None, 25, None, 3.0)
    # the command line's flags state each method's default from the definition (what --help prints)
    for command in (animate, evaluate, demo_command):
        steps = inspect.signature(command).parameters["steps"].default
        assert steps.default is None and steps.param_decls == ("--steps",)  # not given: the method's default
        assert f"[default: Puppet-Master from the model, DragAnything {da.default('steps')}]" in steps.help
    assert "[default: Puppet-Master from the model, DragAnything 25]" in main_help("animate", capsys).replace("- ", "-")
    # evaluate samples with the definition's defaults when no flag is given
    opts = EvaluateOptions(data=Path("."), out=Path("."), methods=["model", "draganything"])
    assert opts.options_of("model") == pm() and opts.options_of("draganything") == da()
    # the demo's controls start at the loaded model's values (a demo started without --steps)
    pipe = load_pipeline(str(tiny_pipeline_dir))
    demo = build_demo(pipe, pm(size=64, frames=3))
    controls = {b.elem_id: b for b in demo.blocks.values() if str(getattr(b, "elem_id", "")).startswith("option-")}
    assert controls["option-steps"].value == pipe.sampling_settings()["num_inference_steps"] == 50
    assert controls["option-guidance"].value == pipe.sampling_settings()["max_guidance_scale"] == 5.0
    assert controls["option-seed"].value == pm.default("seed")
    assert set(controls) == {f"option-{n.replace('_', '-')}" for n in pm.options("control")}


def main_help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_a_new_sampling_option_is_one_field(tiny_pipeline_dir, capsys):
    """An option added to a method's definition appears as a flag, a demo control and a call argument."""
    from pydantic import Field

    from puppet_master.app.demo import build_demo
    from puppet_master.cli.options import method_flags
    from puppet_master.options import ANIMATE, EVALUATE, Control, Option, PuppetMasterOptions
    from puppet_master.pipelines.loading import load_pipeline

    class WithScheduler(PuppetMasterOptions):
        scheduler: Annotated[Literal["euler", "heun"], Option("--scheduler", "NAME", call="scheduler",
                                                              control=Control("Scheduler"))] = Field(
            "euler", description="Sampler.")

    for where in (ANIMATE, EVALUATE):
        command = method_flags([WithScheduler], where)(lambda **flags: flags)
        param = inspect.signature(command).parameters["scheduler"]
        assert param.default.param_decls == ("--scheduler",) and "[default: euler]" in param.default.help
    assert WithScheduler(scheduler="heun").call_kwargs()["scheduler"] == "heun"
    assert "must be one of euler, heun" in str(pytest.raises(Exception, WithScheduler.from_values, {"scheduler": "x"}).value)
    demo = build_demo(load_pipeline(str(tiny_pipeline_dir)), WithScheduler(size=64, frames=3))
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "option-scheduler")
    assert dropdown.value == "euler" and [c[0] for c in dropdown.choices] == ["euler", "heun"]


def test_the_demo_checks_its_controls_as_the_command_line(tiny_pipeline_dir):
    from puppet_master.app.demo import DemoState, build_demo
    from puppet_master.options import PuppetMasterOptions
    from puppet_master.pipelines.loading import load_pipeline

    demo = build_demo(load_pipeline(str(tiny_pipeline_dir)), PuppetMasterOptions(size=64, frames=3, steps=1))
    generate = next(f.fn for f in demo.fns.values() if f.fn.__name__ == "on_generate")
    state = DemoState(image=PIL.Image.new("RGB", (64, 64), (200, 50, 40)), drags=[((20.0, 20.0), (30.0, 20.0))])
    values = {"seed": 0, "steps": 1, "guidance": float("nan"), "min_guidance": 1.0, "warp_init_sigma": None,
              "detail_transfer_radius": None, "chroma_anchor_sigma": None}
    path, _, status = generate(state, False, False, "Puppet-Master", *values.values())
    assert path is None and status == "Cannot generate: 'Guidance (max CFG weight)' must be a finite number from 0 to " \
                                      "100, got nan"
    path, _, status = generate(state, False, False, "DragAnything", *values.values())
    assert path is None and "start the demo with --draganything-model" in status


@pytest.fixture(scope="module")
def warped_tiny_dir(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """The tiny pipeline with the shipped model's sampling settings in model_index.json."""
    path = tmp_path_factory.mktemp("warped") / "tiny"
    shutil.copytree(tiny_pipeline_dir, path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "warp_init_sigma": 2.0, "detail_transfer_radius": 1.0}))
    return path


def test_an_override_is_passed_per_call_and_never_saved(warped_tiny_dir, files, tmp_path):
    """Load, animate with overrides (the command line's code), save: model_index.json is unchanged."""
    from puppet_master.cli.animate import AnimateOptions, generate, load_model, read_inputs
    from puppet_master.options import PuppetMasterOptions

    options = PuppetMasterOptions(warp_init_sigma=0.0, detail_transfer_radius=3.0, steps=2, frames=3, size=64)
    opts = AnimateOptions(image=files / "ok.png", output=tmp_path / "v.gif", options=options, drags=["30,20:60,40"],
                          model=str(warped_tiny_dir), quiet=True)
    square, drags = read_inputs(opts)
    pipe = load_model(opts, drags.num_drags)
    video = generate(pipe, square, drags, opts)
    assert video.shape == (3, 64, 64, 3) and pipe._num_timesteps == 2  # σ=0 given: all steps from pure noise
    assert (pipe.config.warp_init_sigma, pipe.config.detail_transfer_radius) == (2.0, 1.0)
    pipe.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    original = json.loads((warped_tiny_dir / "model_index.json").read_text())
    bookkeeping = ("_diffusers_version", "_name_or_path")  # diffusers' own: its version, the folder it loaded from
    assert {k: v for k, v in saved.items() if k not in bookkeeping} == \
           {k: v for k, v in original.items() if k not in bookkeeping}


@pytest.mark.parametrize("steps", [3, 12])
def test_the_warped_start_note_counts_the_steps_that_run(warped_tiny_dir, files, steps):
    from puppet_master.cli.options import sampling_note
    from puppet_master.drags import DragSet
    from puppet_master.options import PuppetMasterOptions
    from puppet_master.pipelines.loading import load_pipeline

    pipe = load_pipeline(str(warped_tiny_dir))
    options = PuppetMasterOptions(steps=steps, frames=3, size=64)
    note = sampling_note(pipe, options)
    image = PIL.Image.new("RGB", (64, 64), (200, 50, 40))
    pipe(image, DragSet.from_pairs([((20, 20), (30, 20))], 64, 64, num_frames=3), num_frames=3, height=64, width=64,
         output_type="latent", **options.call_kwargs())
    assert note.startswith(f"sampling from the drag-warped first frame at σ=2: {pipe._num_timesteps} of {steps} steps")
    assert sampling_note(pipe, PuppetMasterOptions(warp_init_sigma=0.0)) is None  # pure noise: nothing to say


def test_animate_prints_the_note_unless_quiet(warped_tiny_dir, files, tmp_path, capsys):
    argv = ["animate", files / "ok.png", "--drag", "30,20:60,40", "--model", warped_tiny_dir, "--frames", "3",
            "--size", "64", "--steps", "4"]
    code, _, err = _cli([*argv, "-o", tmp_path / "a.gif"], capsys)
    notes = [line for line in err if line.startswith("note: sampling from the drag-warped first frame at σ=2:")]
    assert code == 0 and len(notes) == 1 and notes[0].endswith("(--warp-init-sigma 0 samples from pure noise, as the paper)")
    code, _, err = _cli([*argv, "-o", tmp_path / "b.gif", "-q"], capsys)
    assert code == 0 and len(err) == 1 and err[0].startswith(f"wrote {tmp_path / 'b.gif'}")
