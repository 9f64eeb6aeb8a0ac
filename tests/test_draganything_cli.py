"""DragAnything in the command line: random-model, animate, evaluate; bad input → one error line, exit 2."""

import json

import numpy as np
import PIL.Image
import pytest

from puppet_master.cli import main
from puppet_master.video import read_video


def _cli(*args):
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture()
def scene(tmp_path):
    arr = np.full((90, 160, 3), 240, np.uint8)
    arr[20:60, 30:80] = (200, 50, 40)
    arr[30:70, 100:140] = (40, 80, 200)
    PIL.Image.fromarray(arr).save(tmp_path / "scene.png")
    for name, (y0, y1, x0, x1) in {"red": (20, 60, 30, 80), "blue": (30, 70, 100, 140)}.items():
        m = np.zeros((90, 160), np.uint8)
        m[y0:y1, x0:x1] = 255
        PIL.Image.fromarray(m).save(tmp_path / f"{name}.png")
    return tmp_path


FAST = ["--resolution", "128x64", "--steps", "1", "--frames", "4", "-q"]


def test_random_model_draganything(tmp_path):
    out = tmp_path / "da"
    assert _cli("random-model", "--method", "draganything", out) == 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DragAnythingPipeline"
    assert _cli("random-model", "--method", "draganything", out) == 2  # exists


def test_animate_draganything_with_masks_and_without(scene, tiny_draganything_dir):
    out = scene / "video.gif"
    code = _cli("animate", scene / "scene.png", "--method", "draganything", "--model", tiny_draganything_dir,
                "--mask", scene / "red.png", "--mask", scene / "blue.png", "--drag", "50,40:70,45",
                "--drag", "120,50:120,30", "-o", out, "--overlay", *FAST)
    assert code == 0
    assert read_video(out).shape == (4, 64, 114, 3)  # the 160x90 image's aspect, fitted into 128x64
    out2 = scene / "grabcut.mp4"
    assert _cli("animate", scene / "scene.png", "--method", "draganything", "--model", tiny_draganything_dir,
                "--drag", "50,40:70,45", "-o", out2, *FAST) == 0
    assert read_video(out2).shape[0] == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask", "red.png", "--drag", "120,50:120,30"], "outside every mask"),
        (["--mask", "small.png", "--drag", "50,40:70,45"], "but the image is 160x90"),
        (["--mask", "missing.png", "--drag", "50,40:70,45"], "does not exist"),
        (["--drag", "50,40:70,45", "--resolution", "100x64"], "multiples of 64"),
        (["--drag", "50,40:70,45", "--resolution", "wide"], "WIDTHxHEIGHT"),
        (["--drag", "50,40:70,45", "--segmenter", "magic"], "--segmenter"),
    ],
)
def test_animate_draganything_bad_input(scene, tiny_draganything_dir, capsys, extra, message):
    PIL.Image.fromarray(np.full((20, 20), 255, np.uint8)).save(scene / "small.png")
    args = ["animate", scene / "scene.png", "--method", "draganything", "--model", tiny_draganything_dir,
            "-o", scene / "bad.gif", "--steps", "1", "--frames", "4", "-q"]
    args += [scene / a if a.endswith(".png") else a for a in extra]
    assert _cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (scene / "bad.gif").exists()


def test_animate_method_and_model_errors(scene, capsys):
    assert _cli("animate", scene / "scene.png", "--method", "nuwa", "--drag", "5,5:9,9", "-o", scene / "x.gif") == 2
    assert "--method" in capsys.readouterr().err
    assert _cli("animate", scene / "scene.png", "--method", "draganything", "--drag", "50,40:70,45",
                "-o", scene / "x.gif", *FAST) == 2
    err = capsys.readouterr().err
    assert "no built-in model" in err and err.count("\n") == 1
    assert _cli("animate", scene / "scene.png", "--mask", scene / "red.png", "--drag", "50,40:70,45",
                "-o", scene / "x.gif") == 2
    assert "--mask" in capsys.readouterr().err  # Puppet-Master takes no masks


def test_evaluate_three_methods_one_report(shared_dir, tmp_path, tiny_pipeline_dir, tiny_draganything_dir):
    out = tmp_path / "eval"
    code = _cli("evaluate", "--data", shared_dir / "data" / "dragamove-test-dev", "--method", "draganything",
                "--method", "model", "--method", "static", "--model", tiny_pipeline_dir,
                "--draganything-model", tiny_draganything_dir, "--resolution", "128x64", "--limit", "1",
                "--steps", "1", "--out", out, "-q", "--no-videos")
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    assert list(data["methods"]) == ["draganything", "model", "static"]
    assert np.isfinite(data["methods"]["draganything"]["psnr"])
    assert "| draganything |" in (out / "report.md").read_text()


def test_evaluate_draganything_model_option_rules(shared_dir, tmp_path, tiny_draganything_dir, capsys):
    data = shared_dir / "data" / "dragamove-test-dev"
    # alone, --model names the DragAnything pipeline
    assert _cli("evaluate", "--data", data, "--method", "draganything", "--model", tiny_draganything_dir,
                "--resolution", "128x64", "--limit", "1", "--steps", "1", "--out", tmp_path / "a", "-q",
                "--no-videos") == 0
    assert _cli("evaluate", "--data", data, "--method", "draganything", "--method", "model",
                "--model", tiny_draganything_dir, "--out", tmp_path / "b", "-q") == 2
    assert "--draganything-model" in capsys.readouterr().err


def test_demo_offers_draganything_when_given(tiny_pipeline_dir, tiny_draganything_dir):
    from puppet_master.app.demo import DemoState, build_demo
    from puppet_master.options import DragAnythingOptions, PuppetMasterOptions
    from puppet_master.pipelines import load_draganything_pipeline, load_pipeline

    pm = load_pipeline(str(tiny_pipeline_dir))
    da = load_draganything_pipeline(str(tiny_draganything_dir))
    arr = np.full((64, 64, 3), 240, np.uint8)
    arr[16:48, 16:40] = (200, 50, 40)
    state = DemoState(image=PIL.Image.fromarray(arr), drags=[((28.0, 30.0), (44.0, 30.0))])
    demo = build_demo(pm, PuppetMasterOptions(size=64, frames=4, steps=1), draganything=da,
                      draganything_options=DragAnythingOptions(frames=4, steps=1, resolution="128x64"))
    generate = next(f.fn for f in demo.fns.values() if f.fn.__name__ == "on_generate")
    radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "method")
    assert radio.visible and "DragAnything" in [c[0] if isinstance(c, tuple) else c for c in radio.choices]
    # the controls: seed, steps, guidance, min. guidance, sampler, warp start, detail radius, chroma anchoring
    # (read from the options)
    values = {"seed": 0, "steps": 1, "guidance": 3.0, "min_guidance": 1.0, "scheduler": None, "warp_init_sigma": None,
              "detail_transfer_radius": None, "chroma_anchor_sigma": None}
    assert list(values) == list(dict.fromkeys([*PuppetMasterOptions.options("control"),
                                               *DragAnythingOptions.options("control")]))
    # choosing DragAnything shows its controls at its values; Puppet-Master's own ones are hidden
    on_method = next(f.fn for f in demo.fns.values() if f.fn.__name__ == "on_method")
    updates = dict(zip(values, on_method("DragAnything")))
    assert updates["steps"]["value"] == 1 and updates["guidance"]["value"] == 3.0 and updates["steps"]["visible"]
    assert updates["warp_init_sigma"]["visible"] is False
    assert dict(zip(values, on_method("Puppet-Master")))["guidance"]["value"] == 5.0
    path, _, status = generate(state, False, True, "DragAnything", *values.values())
    assert "DragAnything" in status, status
    assert read_video(path).shape == (4, 64, 64, 3)  # generated at 128x64, shown at the demo's square
    path, _, status = generate(state, False, False, "Puppet-Master", *values.values())
    assert "DragAnything" not in status and read_video(path).shape == (4, 64, 64, 3)
    plain = build_demo(pm, PuppetMasterOptions(size=64, frames=4, steps=1))
    assert not next(b for b in plain.blocks.values() if getattr(b, "elem_id", None) == "method").visible
