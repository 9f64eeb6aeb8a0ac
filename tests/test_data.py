"""The data pipeline with real Blender (bpy in its own interpreter): tiny renders, 64×64, 2 views."""

import hashlib
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from puppet_master.data.blender_env import find_blender_python
from puppet_master.data.build import BuildConfig, build
from puppet_master.data.curation import MotionClassifier, VLMFilter, read_labels
from puppet_master.data.dataset import PAPER_MIXTURE, DragVideoDataset, group_mixture
from puppet_master.data.renders import RenderedAsset
from puppet_master.data.sources import AssetTask, folder_tasks, objaverse_uids, procedural_tasks
from puppet_master.errors import UserInputError

KINDS = ["storage", "laptop", "fish", "bucket", "bad_static", "bad_global", "bad_exploding"]


@pytest.fixture(scope="session")
def blender_python():
    try:
        return find_blender_python()
    except UserInputError as exc:
        pytest.fail(f"{exc} (the README's test command runs `puppet-master data setup-blender`)")


def _tasks(kinds, seed):
    return [AssetTask(f"t{seed}-{i:02d}-{k}", "procedural", kind=k, seed=seed * 1000 + i) for i, k in enumerate(kinds)]


@pytest.fixture(scope="session")
def built(tmp_path_factory, blender_python):
    out = tmp_path_factory.mktemp("dataset")
    cfg = BuildConfig(out=str(out), views=2, frames=16, resolution=64, cycles_samples=4, num_frames=14,
                      samples_per_view=2, seed=7, tracks_gif=True, blender_python=blender_python)
    records = build(_tasks(KINDS, 7), cfg, workers=2, progress=False)
    return out, records


def test_build_statuses_and_layout(built):
    out, records = built
    status = {k.split("-", 2)[2]: r["status"] for k, r in records.items()}
    assert all(r["error"] == "" for r in records.values()), records
    assert status["bad_static"] == "rejected" and status["bad_global"] == "rejected" and status["bad_exploding"] == "rejected"
    assert all(status[k] == "done" for k in ("storage", "laptop", "fish", "bucket")), status
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["assets"]) == set(records)
    r = RenderedAsset.load(out / "renders" / next(iter(records)))
    assert r.num_views == 2 and r.num_frames == 16 and r.resolution == (64, 64)
    assert r.rgba(1, 15).shape == (64, 64, 4)
    cam = r.meta["cameras"][0]
    assert np.asarray(cam["K"]).shape == (3, 3) and np.asarray(cam["world_to_camera"]).shape == (4, 4)
    assert 0 < cam["elevation_deg"] < 90  # northern hemisphere
    lo = np.concatenate([p.reshape(-1, 3) for p in r.positions]).min(0)
    hi = np.concatenate([p.reshape(-1, 3) for p in r.positions]).max(0)
    assert abs((hi - lo).max() - 1) < 1e-3 and np.allclose((hi + lo) / 2, 0, atol=1e-3)  # normalised animation box
    assert list((out / "samples").glob("*_tracks.gif"))


def test_projected_points_land_in_their_part_mask(built):
    out, records = built
    hits = total = 0
    for asset in records:
        r = RenderedAsset.load(out / "renders" / asset)
        for v in range(r.num_views):
            for f in range(r.num_frames):
                idx = r.part_index(v, f)
                vis = np.nonzero(r.visible[v, f])[0]
                px = r.project(v, r.candidate_positions[f, vis])
                for c, (x, y) in zip(vis, px):
                    xi, yi = int(x), int(y)
                    win = idx[max(0, yi - 1): yi + 2, max(0, xi - 1): xi + 2]
                    hits += int((r.candidate_part[c] + 1) in win)
                    total += 1
    assert total > 1000
    assert hits / total >= 0.95, hits / total


def test_drag_samples_visible_origins_dedup_and_format(built):
    out, _ = built
    files = sorted((out / "samples").glob("*.json"))
    assert files
    for f in files:
        spec = json.loads(f.read_text())
        r = RenderedAsset.load((f.parent / spec["render"]).resolve())
        assert 1 <= len(spec["drags"]) <= 5 and spec["num_frames"] == 14
        traj = np.array([d["trajectory"] for d in spec["drags"]])
        for d in spec["drags"]:
            assert r.visible[spec["view"], spec["start_frame"], d["candidate"]], "occluded drag origin"
            want = r.project(spec["view"], r.candidate_positions[spec["start_frame"]:spec["start_frame"] + 14, d["candidate"]])
            np.testing.assert_allclose(d["trajectory"], want, atol=2e-3)
        scaled = traj * 256 / 64
        for i in range(len(traj)):
            for j in range(i + 1, len(traj)):
                assert np.linalg.norm(scaled[i] - scaled[j], axis=-1).sum() > 20 * 14
        assert f.with_suffix(".gif").is_file()


def test_samples_folder_is_an_evaluation_split(built):
    from puppet_master.data.splits import load_eval_dataset

    out, _ = built
    fmt, examples = load_eval_dataset(out / "samples")
    assert fmt == "split" and len(examples) == len(list((out / "samples").glob("*.json")))
    for ex in examples:
        assert ex.frames.shape == (14, 256, 256, 3) and ex.category
        assert ex.trajectories().shape[1:] == (14, 2)


def test_dataset_yields_normalised_samples(built):
    out, _ = built
    ds = DragVideoDataset(out)
    item = ds[0]
    assert item["frames"].shape == (14, 3, 64, 64) and item["frames"].dtype == torch.float32
    assert -1.0 <= item["frames"].min() and item["frames"].max() <= 1.0
    torch.testing.assert_close(item["image"], item["frames"][0])
    d = item["drags"]
    assert d.shape == (14, 5, 4) and 0 <= d.min() and d.max() <= 1
    used = d.abs().sum((0, 2)) > 0
    assert torch.all(d[:, used, :2] == d[:1, used, :2]) and torch.allclose(d[0, used, 2:], d[0, used, :2])
    assert DragVideoDataset(out, size=32)[0]["frames"].shape == (14, 3, 32, 32)
    # the source groups drawn with the paper's probabilities (docs/design.md §6), renormalised over those present
    mix = group_mixture(ds, seed=0)
    source_groups = [{ds[i]["group"] for i in subset.indices} for subset in mix.sources]
    assert all(len(g) == 1 for g in source_groups) and sum(len(s) for s in mix.sources) == len(ds)
    present = [g.pop() for g in source_groups]
    total = sum(PAPER_MIXTURE[g] for g in present)
    np.testing.assert_allclose(mix.probs, [PAPER_MIXTURE[g] / total for g in present])
    assert mix[3]["key"] == 3 and torch.equal(mix[3]["drags"], mix[3]["drags"])


def test_curation_on_held_out_labelled_set(tmp_path, blender_python):
    kinds = ["storage", "table", "refrigerator", "dishwasher", "box", "safe", "toilet", "laptop", "quadruped",
             "bad_static", "bad_global", "bad_global", "bad_exploding", "bad_exploding"]
    cfg = BuildConfig(out=str(tmp_path), views=1, frames=16, resolution=32, cycles_samples=1, masks=False,
                      stages=("asset", "render", "curate"), blender_python=blender_python)
    records = build(_tasks(kinds, 31), cfg, workers=2, progress=False)
    for asset, rec in records.items():
        kind = asset.split("-", 2)[2]
        decision = json.loads((tmp_path / "curation" / f"{asset}.json").read_text())
        assert decision["reason"]
        if kind.startswith("bad_"):
            assert not decision["keep"], (asset, decision["reason"])
    good = [json.loads((tmp_path / "curation" / f"{a}.json").read_text())["keep"] for a in records if "bad_" not in a]
    assert sum(good) / len(good) >= 0.85, good


def test_corrupt_and_unanimated_assets_are_reported_not_fatal(tmp_path, built, blender_python):
    out, records = built
    folder = tmp_path / "glbs"
    folder.mkdir()
    (folder / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    static = next(a for a in records if a.endswith("bad_static"))
    good = next(a for a in records if a.endswith("laptop"))
    (folder / "static.glb").write_bytes((out / "assets" / f"{static}.glb").read_bytes())
    (folder / "good.glb").write_bytes((out / "assets" / f"{good}.glb").read_bytes())
    cfg = BuildConfig(out=str(tmp_path / "out"), views=1, frames=16, resolution=32, cycles_samples=1,
                      blender_python=blender_python)
    recs = build(folder_tasks(folder), cfg, workers=1, progress=False)
    assert recs["broken"]["status"] == "failed" and recs["broken"]["error"]
    assert not list((tmp_path / "out" / "renders").glob(".tmp-*"))  # the failed render left no partial folder
    assert not list((tmp_path / "out" / "assets").glob(".*"))
    assert recs["static"]["status"] == "rejected" and "static" in recs["static"]["reason"]
    assert recs["good"]["status"] == "done" and recs["good"]["num_samples"] >= 1


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths) if p.is_file()}


def test_killed_build_resumes_with_identical_outputs(tmp_path, blender_python):
    out = tmp_path / "ds"
    script = f"""
import sys
from puppet_master.data.build import BuildConfig, build
from puppet_master.data.sources import AssetTask
if __name__ == "__main__":
    kinds = ["box", "safe", "laptop", "toilet", "storage", "table"]
    tasks = [AssetTask(f"k-{{i}}-{{k}}", "procedural", kind=k, seed=50 + i) for i, k in enumerate(kinds)]
    cfg = BuildConfig(out={str(out)!r}, views=1, frames=16, resolution=32, cycles_samples=1, seed=3,
                      blender_python={blender_python!r})
    build(tasks, cfg, workers=1, progress=False)
"""
    (tmp_path / "run.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "status").glob("*.json"))) < 2:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    finished = sorted(p.stem for p in (out / "status").glob("*.json"))
    assert 2 <= len(finished) < 6, finished
    before = {a: _digest(list((out / "renders" / a).rglob("*")) + list((out / "samples").glob(f"{a}_*"))) for a in finished}
    subprocess.run([sys.executable, str(tmp_path / "run.py")], check=True, timeout=600)
    manifest = json.loads((out / "manifest.json").read_text())["assets"]
    assert len(manifest) == 6 and all(r["status"] in ("done", "rejected") for r in manifest.values()), manifest
    for a in finished:
        after = _digest(list((out / "renders" / a).rglob("*")) + list((out / "samples").glob(f"{a}_*")))
        assert after == before[a], a
    assert not list((out / "renders").glob(".tmp-*")) and not list(out.rglob("*.partial*"))
    names = [p.name for p in (out / "samples").glob("*.json")]
    assert len(names) == len(set(names))
    assert sum(r["num_samples"] for r in manifest.values()) == len(names)


def test_killed_build_leaves_no_process_running(tmp_path, blender_python):
    """SIGKILL of the build's main process: its pool workers, their Blender processes and the
    resource tracker exit too (parent-death signal + watchdog), instead of rendering on for minutes."""
    import psutil

    script = f"""
from puppet_master.data.build import BuildConfig, build
from puppet_master.data.sources import AssetTask
if __name__ == "__main__":
    tasks = [AssetTask(f"w-{{i}}", "procedural", kind=k, seed=70 + i) for i, k in enumerate(["box", "safe", "laptop", "table"])]
    cfg = BuildConfig(out={str(tmp_path / "ds")!r}, views=1, frames=16, resolution=32, cycles_samples=1,
                      blender_python={blender_python!r})
    build(tasks, cfg, workers=2, progress=False)
"""
    (tmp_path / "run.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    main_process = psutil.Process(proc.pid)

    def blender_running(children):
        for child in children:
            try:
                if "worker.py" in " ".join(child.cmdline()):
                    return True
            except psutil.Error:
                pass
        return False

    deadline = time.time() + 180
    children = []
    while time.time() < deadline and not blender_running(children):
        children = main_process.children(recursive=True)
        time.sleep(0.2)
    assert blender_running(children), "no Blender process started"
    proc.kill()
    proc.wait()

    def running(process):
        try:
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.time() + 30
    while time.time() < deadline and any(running(c) for c in children):
        time.sleep(0.5)
    assert not [c.pid for c in children if running(c)], "processes outlived the killed build"


def test_ray_executor_on_a_local_instance(tmp_path, built, blender_python):
    pytest.importorskip("ray", reason="ray is installed by the test extras")
    out, records = built
    cfg = BuildConfig(out=str(tmp_path), views=1, frames=16, resolution=32, cycles_samples=1, blender_python=blender_python)
    tasks = _tasks(["box", "bad_static"], 77)
    recs = build(tasks, cfg, workers=2, executor="ray", progress=False)
    assert {r["status"] for r in recs.values()} == {"done", "rejected"}
    assert (tmp_path / "manifest.json").is_file()


def test_sources_and_labels(tmp_path):
    tasks = procedural_tasks(20, seed=5)
    assert tasks == procedural_tasks(20, seed=5) and len({t.asset_id for t in tasks}) == 20
    assert {t.kind for t in tasks} & {"bad_static", "bad_global", "bad_exploding"}
    hq = objaverse_uids("hq")
    assert len(hq) == 8069 and len(objaverse_uids("all")) == 13227 and all(len(u) == 32 for u in hq[:50])
    with pytest.raises(UserInputError, match="no .glb"):
        folder_tasks(tmp_path)
    (tmp_path / "l.csv").write_text("asset_id,label\na,1\nb,0  # comment\n")
    assert read_labels(tmp_path / "l.csv") == {"a": 1, "b": 0}
    (tmp_path / "bad.csv").write_text("a,yes\n")
    with pytest.raises(UserInputError, match="expected"):
        read_labels(tmp_path / "bad.csv")
    default = MotionClassifier.load()
    assert default.features.shape[0] >= 40 and set(default.labels.tolist()) == {0, 1}


class _FakeVLM(BaseHTTPRequestHandler):
    answer = "Yes."
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeVLM.seen.append(body)
        reply = json.dumps({"choices": [{"message": {"content": _FakeVLM.answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_vlm_filter_prompt_and_answers():
    assert VLMFilter.parse_answer("Yes, it does.") is True
    assert VLMFilter.parse_answer("no") is False and VLMFilter.parse_answer("maybe") is None
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(16)]
    assert [int(f[0, 0, 0]) for f in VLMFilter.quarter_frames(frames)] == [0, 4, 8, 12]
    server = HTTPServer(("127.0.0.1", 0), _FakeVLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vlm = VLMFilter(f"http://127.0.0.1:{server.server_port}/v1", model="test")
        assert vlm(frames).keep is True
        body = _FakeVLM.seen[-1]
        content = body["messages"][0]["content"]
        assert content[0]["type"] == "text" and "part-level" in content[0]["text"]
        assert sum(c["type"] == "image_url" for c in content) == 4
        _FakeVLM.answer = "No"
        assert vlm(frames).keep is False
    finally:
        server.shutdown()
    assert VLMFilter("http://127.0.0.1:9/v1", timeout=2)(frames).reason.startswith("vlm: request failed")


def test_textured_assets_keep_geometry_motion_and_colour(tmp_path, blender_python):
    import cv2

    renders = {}
    for textured in (False, True):
        out = tmp_path / ("textured" if textured else "flat")
        cfg = BuildConfig(out=str(out), views=1, frames=4, resolution=128, cycles_samples=2, textures=textured,
                          stages=("asset", "render"), blender_python=blender_python)
        records = build([AssetTask("tex-safe", "procedural", kind="safe", seed=11)], cfg, workers=1, progress=False)
        assert records["tex-safe"]["error"] == "", records
        renders[textured] = RenderedAsset.load(out / "renders" / "tex-safe")
    flat, tex = renders[False], renders[True]
    # same geometry and motion: the texture is drawn without touching the asset's random stream
    for a, b in zip(flat.positions, tex.positions):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.array_equal(flat.part_index(0, 3), tex.part_index(0, 3))
    img_flat, img_tex = flat.rgb_on_white(0, 0).astype(float), tex.rgb_on_white(0, 0).astype(float)
    inside = cv2.erode((flat.part_index(0, 0) > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert inside.sum() > 500
    # the same mean colour (the texture is stored sRGB-encoded, as glTF reads it) ...
    assert np.abs(img_flat[inside].mean(0) - img_tex[inside].mean(0)).max() < 8
    # ... with detail inside the faces for an optical-flow tracker to follow (blurred first:
    # at 2 Cycles samples a flat face is noisy pixel to pixel, not structured)
    # local standard deviation in 7×7 windows; the median ignores the few pixels on face edges
    def detail(img):
        gray = cv2.GaussianBlur(img.mean(-1), (0, 0), 1.0)
        var = cv2.boxFilter(gray**2, -1, (7, 7)) - cv2.boxFilter(gray, -1, (7, 7)) ** 2
        return float(np.median(np.sqrt(np.maximum(var, 0))[inside]))
    assert detail(img_tex) > 3 * detail(img_flat), (detail(img_tex), detail(img_flat))


def _part_moves(positions, start, length, eps=1e-3):
    """Per part: does it move within frames [start, start + length)?"""
    return [bool(np.linalg.norm(p[start : start + length] - p[start], axis=-1).max() > eps) for p in positions]


def test_every_part_of_a_multi_part_asset_plays(tmp_path, blender_python):
    # regression: the glTF export once wrote one animation per object and the importer plays
    # only the first, so every other part of a multi-part asset stood still in the renders
    cfg = BuildConfig(out=str(tmp_path), views=1, frames=8, resolution=32, cycles_samples=1, masks=False,
                      stages=("asset", "render"), blender_python=blender_python)
    records = build([AssetTask("multi", "procedural", kind="storage", seed=2)], cfg, workers=1, progress=False)
    assert records["multi"]["error"] == "", records
    info = json.loads((tmp_path / "assets" / "multi.json").read_text())
    r = RenderedAsset.load(tmp_path / "renders" / "multi")
    moving = dict(zip(r.part_names, _part_moves(r.positions, 0, r.num_frames)))
    assert len(info["parts"]) == 4 and all(moving[p] for p in info["parts"]), moving
    assert not any(v for k, v in moving.items() if k.startswith("body")), moving


def test_motion_episodes_share_the_first_frame_and_differ_in_motion(tmp_path, blender_python):
    n, episodes = 6, 3
    cfg = BuildConfig(out=str(tmp_path), views=1, frames=32, resolution=64, cycles_samples=2, num_frames=n,
                      motion_episodes=episodes, samples_per_view=episodes, seed=3, blender_python=blender_python)
    tasks = [AssetTask("ep-storage", "procedural", kind="storage", seed=4),
             AssetTask("ep-fish", "procedural", kind="fish", seed=4)]
    records = build(tasks, cfg, workers=2, progress=False)
    assert all(r["status"] == "done" for r in records.values()), records
    starts = [0, n, 2 * n]
    for asset in ("ep-storage", "ep-fish"):
        info = json.loads((tmp_path / "assets" / f"{asset}.json").read_text())
        assert info["episodes"] == episodes and info["clip_starts"] == starts
        r = RenderedAsset.load(tmp_path / "renders" / asset)
        assert r.num_frames == episodes * n  # --frames is not used for episodic assets
        # every episode starts from the same rest pose: same geometry, same pixels
        for s in starts[1:]:
            for p in r.positions:
                np.testing.assert_allclose(p[s], p[0], atol=1e-5)
            assert np.array_equal(r.rgba(0, s), r.rgba(0, 0))
        # ... and something moves in each, differently
        # (largest displacement of each vertex from the episode's first frame)
        paths = [np.concatenate([np.linalg.norm(p[s : s + n] - p[s], axis=-1).max(0) for p in r.positions])
                 for s in starts]
        assert all(path.max() > 1e-2 for path in paths)
        assert min(np.abs(a - b).max() for i, a in enumerate(paths) for b in paths[i + 1:]) > 1e-2
        # the drag samples of the view start at the three episode starts
        samples = [json.loads(f.read_text()) for f in sorted((tmp_path / "samples").glob(f"{asset}_v00_s*.json"))]
        assert sorted(s["start_frame"] for s in samples) == starts and all(s["num_frames"] == n for s in samples)
    # storage (4 parts): a random non-empty subset moves per episode, not always all of them
    r = RenderedAsset.load(tmp_path / "renders" / "ep-storage")
    parts = [i for i, name in enumerate(r.part_names) if name.startswith("part_")]
    subsets = [tuple(m for i, m in enumerate(_part_moves(r.positions, s, n)) if i in parts) for s in starts]
    assert all(any(s) for s in subsets) and any(not all(s) for s in subsets), subsets


def test_sample_drags_at_given_start_frames(built):
    from puppet_master.data.drag_sampling import sample_drags

    out, records = built
    asset = next(a for a in records if a.endswith("storage"))
    render = RenderedAsset.load(out / "renders" / asset)
    samples = sample_drags(render, num_frames=4, samples_per_view=2, seed=1, start_frames=[0, 9])
    assert samples and all(s.start_frame in (0, 9) for s in samples)
    for view in range(render.num_views):  # two starts for two samples: no repeats
        got = [s.start_frame for s in samples if s.view == view]
        assert len(got) == len(set(got))
    with pytest.raises(ValueError, match="no 14-frame window"):
        sample_drags(render, num_frames=14, start_frames=[0, 5])


def test_curation_of_motion_episodes_averages_their_probabilities():
    from puppet_master.data.curation import curate
    from puppet_master.data.motion import motion_features

    rng = np.random.default_rng(0)
    body = np.repeat(rng.uniform(-0.5, 0.5, (1, 50, 3)), 12, axis=0)
    lid = np.repeat(rng.uniform(-0.5, 0.5, (1, 20, 3)), 12, axis=0)
    lid[6:] += np.linspace(0, 0.4, 6)[:, None, None] * np.array([0, 0, 1.0])  # the lid moves in episode 2 only
    clf = MotionClassifier.load()
    windows = [(0, 6), (6, 6)]
    d = curate([body, lid], clf, windows=windows)
    per_episode = [clf.probability(motion_features([body[s : s + n], lid[s : s + n]]))[0] for s, n in windows]
    assert d.probability == pytest.approx(np.mean(per_episode))
    assert per_episode[0] < per_episode[1]  # a static episode is judged as static
    assert d.features == pytest.approx(motion_features([body[:6], lid[:6]]).tolist())
    still = curate([body[:6], body[:6, :20]], clf, windows=[(0, 3), (3, 3)])
    assert not still.keep and still.reason.startswith("static")


def test_episode_windows_of_an_asset_info(built):
    from puppet_master.data.build import _episode_windows

    out, records = built
    render = RenderedAsset.load(out / "renders" / next(iter(records)))  # 16 frames
    assert _episode_windows({"episodes": 1}, render) is None
    assert _episode_windows({"episodes": 2, "num_frames": 16, "clip_starts": [0, 8]}, render) == [(0, 8), (8, 8)]
    with pytest.raises(ValueError, match="re-render it"):
        _episode_windows({"episodes": 3, "num_frames": 18, "clip_starts": [0, 6, 12]}, render)
