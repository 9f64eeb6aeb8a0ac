import json
import math

import numpy as np
import pytest

from puppet_master.cli import main
from puppet_master.evaluation.baselines import static_video, warp_video
from puppet_master.data.splits import load_eval_dataset, load_split_example
from puppet_master.evaluation.metrics import (
    flow_errors,
    foreground_points,
    frechet_distance,
    psnr_per_frame,
    ssim_per_frame,
)
from puppet_master.evaluation.runner import PSNR_CAP, Report, autoencoder_method, evaluate, static_method, warp_method
from puppet_master.evaluation.tracking import DISTracker, LucasKanadeTracker, make_tracker
from puppet_master.errors import UserInputError


def _textured(size=96, seed=0):
    rng = np.random.default_rng(seed)
    import cv2

    img = rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)


def test_psnr_ssim_known_values():
    a = np.full((3, 16, 16, 3), 100, np.uint8)
    b = a + 10  # MSE = 100
    np.testing.assert_allclose(psnr_per_frame(b, a), 10 * math.log10(255**2 / 100), rtol=1e-9)
    assert np.all(ssim_per_frame(a, a) == 1.0)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert np.all(ssim_per_frame(noisy, a) < 0.9)


def test_static_baseline_hand_computable():
    # ground truth: frame n is uniformly 10*n grey; static repeats frame 0 (black)
    gt = np.stack([np.full((8, 8, 3), 10 * n, np.uint8) for n in range(4)])
    pred = static_video(gt[0], 4)
    assert pred.shape == gt.shape and np.all(pred == 0)
    psnr = psnr_per_frame(pred, gt)
    assert math.isinf(psnr[0])
    np.testing.assert_allclose(psnr[1:], [10 * math.log10(255**2 / (10 * n) ** 2) for n in (1, 2, 3)])


def test_flow_error_zero_on_itself_and_grows_with_shift():
    base = _textured()
    n = 6
    video = np.stack([np.roll(base, shift=2 * f, axis=1) for f in range(n)])  # moves 2 px right per frame
    traj = np.array([[[40 + 2 * f, 48] for f in range(n)]], dtype=float)
    same = flow_errors(video, video, traj, DISTracker())
    assert same.flow_error_drag == 0 and same.flow_error_fg == 0 and not same.wrong_direction
    errors = []
    for shift in (2, 4, 8):
        shifted = np.stack([np.roll(f, shift=shift if i else 0, axis=0) for i, f in enumerate(video)])  # +shift px down
        errors.append(flow_errors(shifted, video, traj, DISTracker()).flow_error_drag)
    assert errors[0] < errors[1] < errors[2]
    # RMSE over frames of a constant offset on frames 1..5: shift * sqrt(5/6)
    np.testing.assert_allclose(errors, np.array([2, 4, 8]) * math.sqrt(5 / 6), rtol=0.25)


def test_wrong_direction_detected():
    base = _textured(seed=1)
    n = 5
    right = np.stack([np.roll(base, shift=2 * f, axis=1) for f in range(n)])
    left = np.stack([np.roll(base, shift=-2 * f, axis=1) for f in range(n)])
    traj = np.array([[[48 + 2 * f, 48] for f in range(n)]], dtype=float)  # asks for motion to the right
    assert not flow_errors(right, right, traj, DISTracker()).wrong_direction
    res = flow_errors(left, right, traj, DISTracker())
    assert res.wrong_direction and res.cosines[0] < -0.9


def test_trackers_follow_a_translation():
    base = _textured(seed=2)
    video = np.stack([np.roll(base, shift=(f, 2 * f), axis=(0, 1)) for f in range(5)])
    pts = np.array([[30.5, 40.5], [60.5, 50.5]])
    for tracker in (DISTracker(), LucasKanadeTracker()):
        tracks = tracker.track(video, pts)
        assert tracks.shape == (2, 5, 2)
        np.testing.assert_allclose(tracks[:, -1] - tracks[:, 0], [[8, 4], [8, 4]], atol=1.0)


def test_make_tracker_errors():
    with pytest.raises(UserInputError, match="unknown tracker"):
        make_tracker("raft")
    with pytest.raises(UserInputError, match="checkpoint"):
        make_tracker("cotracker")


def test_foreground_points_on_white():
    frame = np.full((32, 32, 3), 255, np.uint8)
    frame[8:16, 8:24] = 50
    pts = foreground_points(frame, stride=4)
    assert len(pts) == 2 * 4 and pts[:, 0].min() > 8 and pts[:, 1].max() < 16


def test_frechet_distance_of_gaussians():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    assert frechet_distance(mu1, np.eye(3), mu1, np.eye(3)) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(mu1, np.eye(3), mu2, np.eye(3)) == pytest.approx(9.0)
    assert frechet_distance(mu1, np.eye(3), mu1, 4 * np.eye(3)) == pytest.approx(3 * (1 + 4 - 4))


def test_warp_baseline_moves_the_handle():
    frame = np.full((64, 64, 3), 255, np.uint8)
    frame[20:44, 20:44] = 128
    frame[28:32, 28:32] = 0  # a black marker at the drag start (30, 30)
    traj = np.array([[[30 + 2 * f, 30] for f in range(6)]], dtype=float)  # moves 10 px right
    video = warp_video(frame, traj)
    assert video.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(video[0], frame)
    ys, xs = np.nonzero(video[-1].max(-1) < 60)
    assert abs(xs.mean() + 0.5 - 40) < 1.5 and abs(ys.mean() + 0.5 - 30) < 1.5
    np.testing.assert_array_equal(video[-1][:4], frame[:4])  # border anchored


def test_loader_reads_the_dev_examples(shared_dir):
    fmt, examples = load_eval_dataset(shared_dir / "data" / "dragamove-test-dev")
    assert fmt == "dragamove" and len(examples) == 20
    for ex in examples:
        assert ex.frames.shape == (14, 256, 256, 3) and ex.frames.dtype == np.uint8
        assert ex.drags.shape == (14, 5, 4) and 0 <= float(ex.drags.min()) and float(ex.drags.max()) <= 1
        assert ex.trajectories().shape[1:] == (14, 2)
        assert ex.category
    assert {ex.category for ex in examples} >= {"StorageFurniture", "Laptop", "Bucket"}


def test_split_folder_format(tmp_path):
    from puppet_master.video import write_video

    video = np.stack([_textured(64, seed=f) for f in range(4)])
    write_video(video, tmp_path / "a.gif")
    (tmp_path / "a.json").write_text(json.dumps({"category": "Box", "drags": [{"start": [10, 10], "end": [30, 20]}]}))
    ex = load_split_example(tmp_path / "a.json")
    assert ex.frames.shape == (4, 256, 256, 3) and ex.category == "Box"
    np.testing.assert_allclose(ex.trajectories()[0, -1], [30 * 4, 20 * 4], atol=1e-4)
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(UserInputError, match="no video"):
        load_split_example(tmp_path / "b.json")


def test_evaluate_report_schema_and_files(shared_dir, tmp_path):
    report = evaluate(shared_dir / "data" / "dragamove-test-dev", {"static": static_method, "warp": warp_method},
                      DISTracker(), tmp_path, limit=2, progress=False)
    data = json.loads((tmp_path / "report.json").read_text())
    Report.model_validate(data)  # the documented shape
    assert set(data) == {"dataset", "num_examples", "tracker", "tracker_noise_drag", "methods", "per_example", "skipped"}
    assert data["skipped"] == []
    # the tracker's noise floor: its error on the ground truth itself, recomputed here
    tracker = DISTracker()
    floors = []
    for ex in load_eval_dataset(shared_dir / "data" / "dragamove-test-dev", limit=2)[1]:
        traj = ex.trajectories()
        floors.append(np.sqrt(((tracker.track(ex.frames, traj[:, 0]) - traj) ** 2).sum(-1).mean(-1)).mean())
    assert [r["tracker_error_drag"] for r in data["per_example"]] == pytest.approx(floors)
    assert data["tracker_noise_drag"] == pytest.approx(np.mean(floors)) and data["tracker_noise_drag"] > 0
    assert "Tracker noise floor" in (tmp_path / "report.md").read_text()
    assert data["num_examples"] == 2 and data["tracker"] == "opencv-dis"
    for scores in data["methods"].values():
        assert set(scores) == {"psnr", "ssim", "psnr_after_first", "ssim_after_first", "psnr_first", "psnr_last",
                               "lpips", "fvd", "flow_error_drag", "flow_error_fg", "wrong_direction_rate",
                               "seconds_per_video"}
        assert scores["lpips"] is None and scores["fvd"] is None
    static = data["methods"]["static"]
    assert static["wrong_direction_rate"] == 0.0 and static["flow_error_drag"] > 0
    assert report.methods["static"].psnr > report.methods["static"].psnr_after_first
    # the static video's frame 0 is the ground truth's (capped), its last frame the furthest from it
    assert static["psnr_first"] == PSNR_CAP and static["psnr_last"] < static["psnr_after_first"] < PSNR_CAP
    examples = load_eval_dataset(shared_dir / "data" / "dragamove-test-dev", limit=2)[1]
    for row, ex in zip(data["per_example"], examples, strict=True):
        expected = psnr_per_frame(static_video(ex.frames[0], len(ex.frames)), ex.frames)[-1]
        assert row["name"] == ex.name and row["methods"]["static"]["psnr_last"] == pytest.approx(expected)
    assert (tmp_path / "videos" / "00000.gif").is_file() and "| static |" in (tmp_path / "report.md").read_text()


def test_evaluate_command_with_model(shared_dir, tmp_path, tiny_pipeline_dir, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(shared_dir / "data" / "dragamove-test-dev"), "--method", "static", "--method",
            "model", "--model", str(tiny_pipeline_dir), "--limit", "1", "--steps", "1", "--out", str(out), "-q"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    data = json.loads((out / "report.json").read_text())
    assert set(data["methods"]) == {"static", "model"}
    with pytest.raises(SystemExit) as exc:
        main(args)  # report exists: refused without --overwrite
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2


def test_autoencoder_method_round_trips_each_frame_through_the_vae(shared_dir, tiny_pipeline_dir):
    import torch

    from puppet_master.data.splits import EvalExample
    from puppet_master.pipelines.loading import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir))
    _, examples = load_eval_dataset(shared_dir / "data" / "dragamove-test-dev", limit=1)
    ex = examples[0]
    ex = EvalExample(ex.name, ex.frames[:4], ex.drags[:4], ex.category)
    run = autoencoder_method(pipe)
    out = run(ex)
    assert out.dtype == np.uint8 and out.shape == ex.frames.shape
    # the same as decoding the VAE posterior mean of each frame directly (the scaling factor cancels)
    x = torch.from_numpy(ex.frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        direct = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode(), num_frames=4).sample  # SVD's temporal decoder
    direct = ((direct.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - direct.astype(int)).max() <= 1
    # it reconstructs the ground truth, not frame 0 repeated
    other = run(EvalExample(ex.name, ex.frames[::-1].copy(), ex.drags, ex.category))
    assert not np.array_equal(other, out)


def test_evaluate_command_autoencoder_needs_a_model(shared_dir, tmp_path, tiny_pipeline_dir, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(shared_dir / "data" / "dragamove-test-dev"), "--method", "autoencoder",
            "--model", str(tiny_pipeline_dir), "--limit", "1", "--out", str(out), "-q", "--no-videos"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    data = json.loads((out / "report.json").read_text())
    assert set(data["methods"]) == {"autoencoder"} and data["methods"]["autoencoder"]["psnr"] < 100
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--data", str(shared_dir / "data" / "dragamove-test-dev"), "--method", "vae",
              "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "autoencoder" in capsys.readouterr().err
