"""The dataset build: assets → Blender renders → curation → drag samples, per asset, resumable.

Output folder layout::

    OUT/assets/ID.glb, ID.json          asset + its task and generator info (kind, category, label, parts)
    OUT/renders/ID/                     meta.json, tracks.npz, view_VV/{rgba,index}_FFF.png
    OUT/curation/ID.json                motion features, decision and reason
    OUT/samples/ID_vVV_sKK.{json,gif}   drag samples (+ _tracks.gif); evaluation split format
    OUT/status/ID.json                  per-asset record once the asset is finished (done / rejected / failed)
    OUT/manifest.json                   every asset's record (status, reason, error, counts)

Every file is written under a temporary name and renamed, and a finished asset is
marked by ``status/ID.json`` last: a crash or Ctrl-C never leaves a half-written asset
that a later run takes as complete; re-running skips finished assets and redoes the
rest. A broken asset (corrupt file, Blender error) is recorded as ``failed`` with its
error and never stops the build. Per-asset work runs in a local process pool or on a
Ray cluster.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .. import limits
from ..errors import UserInputError, optional_imports
from ..values import parse_json
from .blender_env import BlenderError, find_blender_python, run_worker
from .curation import MotionClassifier, VLMFilter, curate
from .drag_sampling import sample_drags, write_sample
from .lifetime import exit_with_parent
from .renders import RenderedAsset
from .sources import AssetTask, fetch_objaverse

STAGES = ("asset", "render", "curate", "sample")


@dataclass
class BuildConfig:
    """Settings of a build (saved in the manifest).

    ``motion_episodes`` E > 1 (procedural assets only): each asset's animation is E
    episodes of ``num_frames`` frames from the same rest pose, rendered as E × ``num_frames``
    frames (``frames`` applies to the other sources), and every drag sample is cut at an
    episode start — so the samples of a view share their first frame and differ in motion.
    """

    out: str
    views: int = 12
    frames: int = 32
    resolution: int = 256
    cycles_samples: int = 16
    masks: bool = True
    textures: bool = False
    motion_episodes: int = 1
    num_frames: int = 14
    samples_per_view: int = 2
    seed: int = 0
    curation_model: str | None = None
    vlm_url: str | None = None
    vlm_model: str = "gpt-4o"
    tracks_gif: bool = False
    stages: tuple[str, ...] = STAGES
    blender_python: str | None = None
    timeout: float = 3600.0


def _atomic_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class BuildConfigError(UserInputError):
    """A build setting that cannot work for any asset: it stops the build with one error line
    instead of being recorded as a failure of every asset."""


_CLASSIFIER = {}


def _classifier(path):
    if path not in _CLASSIFIER:
        try:
            _CLASSIFIER[path] = MotionClassifier.load(path)
        except UserInputError as exc:
            raise BuildConfigError(str(exc)) from None
    return _CLASSIFIER[path]


#: Errors that mean "this asset is broken" (recorded as ``failed``; the build goes on).
ASSET_ERRORS = (BlenderError, OSError, ValueError, RuntimeError, UserInputError, KeyError)


def process_asset(task: dict, cfg: dict) -> dict:
    """Run the configured stages for one asset; returns its record.

    Stages, each skipped when its output exists: :func:`_asset_stage` (GLB + info),
    :func:`_render_stage`, :func:`_curate_stage`, :func:`_sample_stage`. A broken asset
    is recorded as ``failed`` with its error and never raises.

    Raises:
        BuildConfigError: a setting that cannot work for any asset (stops the build).
    """
    t = AssetTask(**task)
    c = BuildConfig(**{**cfg, "stages": tuple(cfg.get("stages", STAGES))})
    out = Path(c.out)
    status_file = out / "status" / f"{t.asset_id}.json"
    if status_file.exists():
        return {**json.loads(status_file.read_text()), "skipped": True}
    record = {"asset": t.asset_id, "source": t.source, "status": "running", "reason": "", "error": "",
              "category": "", "label": None, "num_samples": 0}
    start = time.perf_counter()
    try:
        for stage in (_asset_stage, _render_stage, _curate_stage, _sample_stage):
            pending = stage(t, c, out, record)
            if pending:
                record.update(status="pending", reason=f"{pending} stage not run yet")
                return record
    except BuildConfigError:
        raise
    except ASSET_ERRORS as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    record["seconds"] = round(time.perf_counter() - start, 2)
    _atomic_json(status_file, record)
    return record


def _asset_info(t: AssetTask, out: Path) -> dict:
    info_file = out / "assets" / f"{t.asset_id}.json"
    return json.loads(info_file.read_text()) if info_file.exists() else {"task": t.to_dict()}


def _asset_stage(t: AssetTask, c: BuildConfig, out: Path, record: dict) -> str | None:
    """Write ``assets/ID.glb`` + ``ID.json`` (procedural generation, a copy, or a download)."""
    glb = out / "assets" / f"{t.asset_id}.glb"
    info_file = out / "assets" / f"{t.asset_id}.json"
    if "asset" in c.stages and not info_file.exists():
        glb.parent.mkdir(parents=True, exist_ok=True)
        tmp = glb.with_name(f".{glb.name}.partial.glb")
        info = {"task": t.to_dict()}
        try:
            if t.source == "procedural":
                num_frames = c.num_frames * c.motion_episodes if c.motion_episodes > 1 else c.frames
                info.update(run_worker("generate", {"kind": t.kind, "seed": t.seed, "num_frames": num_frames,
                                                    "out_glb": str(tmp), "textured": c.textures,
                                                    "episodes": c.motion_episodes},
                                       c.timeout, c.blender_python))
                info.pop("ok", None)
            elif t.source == "folder":  # a byte budget: a file that grows (or a swapped-in device) cannot fill the disk
                tmp.unlink(missing_ok=True)
                limits.copy_bounded(t.path, tmp, "asset")
            else:
                tmp.unlink(missing_ok=True)
                fetch_objaverse(t.uid, tmp)
            os.replace(tmp, glb)
        finally:
            tmp.unlink(missing_ok=True)  # a failed or interrupted asset leaves no partial file
        _atomic_json(info_file, info)
    info = _asset_info(t, out)
    record["category"], record["label"] = info.get("category", ""), info.get("label")
    return None if glb.exists() else "asset"


def _render_stage(t: AssetTask, c: BuildConfig, out: Path, record: dict) -> str | None:
    """Render ``renders/ID/`` with Blender (into a temporary folder renamed at the end)."""
    render_dir = out / "renders" / t.asset_id
    if "render" in c.stages and not (render_dir / "meta.json").exists():
        info = _asset_info(t, out)
        tmp_dir = out / "renders" / f".tmp-{t.asset_id}"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        # an episodic asset is rendered at its own frames, so episodes start at whole frames
        frames = info["num_frames"] if info.get("episodes", 1) > 1 else c.frames
        try:
            run_worker("render", {"glb": str(out / "assets" / f"{t.asset_id}.glb"), "out_dir": str(tmp_dir),
                                  "views": c.views, "frames": frames, "resolution": c.resolution, "seed": c.seed,
                                  "samples": c.cycles_samples, "images": True, "masks": c.masks},
                       c.timeout, c.blender_python)
            shutil.rmtree(render_dir, ignore_errors=True)
            os.replace(tmp_dir, render_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # a failed or interrupted render leaves no partial folder
    return None if (render_dir / "meta.json").exists() else "render"


def _curate_stage(t: AssetTask, c: BuildConfig, out: Path, record: dict) -> str | None:
    """Decide keep / reject from motion statistics (+ the optional VLM filter); write ``curation/ID.json``."""
    cur_file = out / "curation" / f"{t.asset_id}.json"
    if "curate" in c.stages and not cur_file.exists():
        render = RenderedAsset.load(out / "renders" / t.asset_id)
        decision = curate(render.positions, _classifier(c.curation_model),
                          windows=_episode_windows(_asset_info(t, out), render))
        result = asdict(decision)
        if decision.keep and c.vlm_url:
            frames = [render.rgb_on_white(0, f) for f in range(render.num_frames)]
            vlm = VLMFilter(c.vlm_url, c.vlm_model)(frames)
            result["vlm"] = asdict(vlm)
            if not vlm.keep:
                result.update(keep=False, reason=vlm.reason)
        _atomic_json(cur_file, result)
    if not cur_file.exists():
        return "curation"
    cur = json.loads(cur_file.read_text())
    record["reason"] = cur["reason"]
    if not cur["keep"]:
        record["status"] = "rejected"
    return None


def _sample_stage(t: AssetTask, c: BuildConfig, out: Path, record: dict) -> str | None:
    """Sample drags of a kept asset; write ``samples/ID_vVV_sKK.{json,gif}``."""
    if record["status"] == "rejected":
        return None
    if "sample" not in c.stages:
        return "sample"
    render = RenderedAsset.load(out / "renders" / t.asset_id)
    windows = _episode_windows(_asset_info(t, out), render)
    n = min(c.num_frames, render.num_frames)
    if windows and n > windows[0][1]:
        raise BuildConfigError(f"drag samples of {n} frames do not fit the asset's {windows[0][1]}-frame motion "
                               "episodes: build with the --num-frames the assets were generated with")
    samples = sample_drags(render, num_frames=n, samples_per_view=c.samples_per_view, seed=c.seed,
                           asset_id=t.asset_id, start_frames=[w[0] for w in windows] if windows else None)
    for k, s in enumerate(samples):
        write_sample(s, render, out / "samples", f"{t.asset_id}_v{s.view:02d}_s{k:02d}", record["category"],
                     tracks_gif=c.tracks_gif)
    record.update(status="done", num_samples=len(samples))
    return None


def _episode_windows(info: dict, render) -> list[tuple[int, int]] | None:
    """``[(first frame, length), ...]`` of an episodic procedural asset's motion episodes, else ``None``."""
    if info.get("episodes", 1) <= 1:
        return None
    starts = [int(s) for s in info["clip_starts"]]
    if render.num_frames != info["num_frames"]:
        raise ValueError(f"render has {render.num_frames} frames but the episodic asset {info['num_frames']}: "
                         "re-render it (delete its render folder) so episodes start at whole frames")
    return [(s, e - s) for s, e in zip(starts, starts[1:] + [render.num_frames])]


def _read_manifest(manifest_file: Path) -> dict:
    """The asset records of an earlier build's ``manifest.json`` (``{}`` when there is none).

    Raises:
        UserInputError: the file is not a manifest this command wrote.
    """
    if not manifest_file.exists():
        return {}
    try:
        raw = manifest_file.read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read {manifest_file}: {exc.strerror or exc}") from None
    data = parse_json(raw, f"build manifest {str(manifest_file)!r}")
    records = data.get("assets") if isinstance(data, dict) else None
    if not isinstance(records, dict) or not all(isinstance(r, dict) for r in records.values()):
        raise UserInputError(f"{manifest_file} is not a manifest of `puppet-master data build`: choose another --out "
                             "or remove the file")
    return records


def _write_manifest(out: Path, cfg: BuildConfig, records: dict) -> None:
    _atomic_json(out / "manifest.json", {"config": asdict(cfg), "assets": dict(sorted(records.items()))})


def build(tasks: list[AssetTask], cfg: BuildConfig, workers: int = 2, executor: str = "local",
          ray_address: str | None = None, progress: bool = True) -> dict:
    """Process ``tasks`` (skipping finished ones) and write ``OUT/manifest.json``.

    Args:
        executor: ``local`` (process pool of ``workers``) or ``ray`` (``ray_address`` of a
            running cluster, or a local Ray instance with ``workers`` CPUs when ``None``).

    Returns:
        ``{asset_id: record}`` for every task.

    Local pool workers (and the Blender processes under them) exit when this process
    dies, so killing a build leaves nothing running.

    Raises:
        UserInputError: ``cfg.out`` is (or lies under) a file, a damaged manifest, no
            Blender Python, unknown executor.
        MissingExtraError: ``executor="ray"`` without the ray package.
        BuildConfigError: a setting that fails for every asset (e.g. a missing curation
            model), before any asset is processed where it can be checked up front.
    """
    if executor not in ("local", "ray"):
        raise UserInputError(f"unknown executor {str(executor)[:40]!r}: use local or ray")
    if executor == "ray":
        with optional_imports("ray"):  # before anything is written
            import ray  # optional dependency, only for --executor ray
    out = Path(cfg.out)
    for part in (out, *out.parents):
        if part.exists() and not part.is_dir():
            raise UserInputError(f"--out {str(out)!r}: {str(part)!r} is a file, not a folder; give a dataset folder "
                                 "(created if missing)")
    if cfg.blender_python is None and any(s in cfg.stages for s in ("asset", "render")):
        cfg.blender_python = find_blender_python()
    if "curate" in cfg.stages:
        _classifier(cfg.curation_model)  # a missing or foreign curation model stops the build now
    out.mkdir(parents=True, exist_ok=True)
    manifest_file = out / "manifest.json"
    records = _read_manifest(manifest_file)
    cfg_dict = {**asdict(cfg), "stages": list(cfg.stages)}
    bar = tqdm(total=len(tasks), desc="assets", disable=not progress)

    def finish(rec):
        rec.pop("skipped", None)
        records[rec["asset"]] = rec
        _write_manifest(out, cfg, records)
        bar.set_postfix(last=f"{rec['asset'][:24]}:{rec['status']}")
        bar.update()

    if executor == "local":
        if workers <= 1:
            for t in tasks:
                finish(process_asset(t.to_dict(), cfg_dict))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                     initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(process_asset, t.to_dict(), cfg_dict) for t in tasks]
                try:
                    for fut in as_completed(futures):
                        finish(fut.result())
                except BaseException:  # a BuildConfigError or Ctrl-C: do not start the remaining assets
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    elif executor == "ray":
        started_here = not ray.is_initialized()
        if started_here:
            if ray_address:
                ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(process_asset)
        pending = [remote.remote(t.to_dict(), cfg_dict) for t in tasks]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            finish(ray.get(ready[0]))
        if started_here and not ray_address:
            ray.shutdown()
    bar.close()
    _write_manifest(out, cfg, records)
    return {t.asset_id: records[t.asset_id] for t in tasks}


def tasks_from_assets(out: str | Path) -> list[AssetTask]:
    """Tasks of the assets already present in ``OUT/assets`` (for the stage commands)."""
    files = sorted(Path(out, "assets").glob("*.json"))
    if not files:
        raise UserInputError(f"{str(Path(out, 'assets'))!r} holds no assets: run `puppet-master data generate-assets` first")
    return [AssetTask(**json.loads(f.read_text())["task"]) for f in files]
