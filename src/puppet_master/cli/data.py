"""``puppet-master data ...``: build drag-video training data from animated 3D assets (docs/design.md §6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserInputError
from ..options import MAX_SEED
from .options import Command, finite

data_app = typer.Typer(help="Animated 3D assets → Blender renders → curation → drags → training samples.",
                       no_args_is_help=True, rich_markup_mode=None)


def _summary(records: dict) -> str:
    counts = {}
    for r in records.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def _config(out: Path, stages: tuple[str, ...], curation_model: Optional[Path] = None, **settings):
    """The build's :class:`~puppet_master.data.build.BuildConfig`: settings by keyword, defaults for the rest."""
    from ..data.build import BuildConfig

    return BuildConfig(out=str(out), stages=stages, curation_model=str(curation_model) if curation_model else None,
                       **settings)


OUT = typer.Option(..., "--out", help="Dataset folder (created; re-running resumes).")
VIEWS = typer.Option(12, "--views", min=1, help="Camera views per asset (uniform azimuth).")
FRAMES = typer.Option(32, "--frames", min=2, help="Frames rendered over the animation.")
RES = typer.Option(256, "--resolution", min=16, help="Render size in pixels (square).")
SAMPLES = typer.Option(16, "--cycles-samples", min=1, help="Cycles samples per pixel.")
WORKERS = typer.Option(2, "--workers", min=1, help="Parallel asset workers.")
EXECUTOR = typer.Option("local", "--executor", help="local (process pool) or ray.")
RAY = typer.Option(None, "--ray-address", help="Address of a running Ray cluster (default: start a local one).")
SEED = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Random seed (0 to 2**32 - 1).")
NUMF = typer.Option(14, "--num-frames", min=2, help="Frames N of each drag sample.")
SPV = typer.Option(2, "--samples-per-view", min=1, help="Drag samples (start frames) per view.")
MODEL = typer.Option(None, "--curation-model", help="Curation model JSON (default: the shipped one).")
VLM = typer.Option(None, "--vlm-url", help="OpenAI-compatible endpoint for the vision-language filter (off by default).")
VLM_MODEL = typer.Option("gpt-4o", "--vlm-model")
TRACKS = typer.Option(False, "--tracks-gif", help="Also write NAME_tracks.gif with the drags drawn.")
QUIET = typer.Option(False, "--quiet", "-q")
EPISODES = typer.Option(1, "--motion-episodes", min=1, help="Procedural assets: E motion episodes from the same rest "
                        "pose (a random subset of parts moves in each; rendered as E × --num-frames frames, --frames "
                        "is not used for them); drag samples start at episode starts, so a view's samples share "
                        "their first frame and differ in motion.")
TEXTURES = typer.Option(False, "--textures", help="Procedural assets get image textures (value noise + grain on their "
                        "colour) instead of flat colours: like real assets, and trackable inside a part.")


@data_app.command("setup-blender", cls=Command)
def setup_blender_cmd(
    path: Optional[Path] = typer.Option(None, "--path", help="Where to create the environment."),
    python: Optional[str] = typer.Option(None, "--python", help="A Python 3.11 to base it on."),
) -> None:
    """Create the Blender Python (bpy 5.0.1 needs Python 3.11 and numpy<2, so it gets its own venv)."""
    from ..data.blender_env import DEFAULT_ENV, setup_blender

    exe = setup_blender(path or DEFAULT_ENV, python)
    print(f"Blender Python ready: {exe}", file=sys.stderr)


@data_app.command("generate-assets", cls=Command)
def generate_assets(out: Path = OUT, num_assets: int = typer.Option(8, "--num-assets", min=1), seed: int = SEED,
                    frames: int = FRAMES, bad_fraction: float = typer.Option(0.2, "--bad-fraction", parser=finite(0.0, 1.0)),
                    textures: bool = TEXTURES, motion_episodes: int = EPISODES, num_frames: int = NUMF,
                    workers: int = WORKERS, quiet: bool = QUIET) -> None:
    """Write procedural animated GLB assets (one named sub-model per moving part) to OUT/assets."""
    from ..data.build import build
    from ..data.sources import procedural_tasks

    cfg = _config(out, ("asset",), frames=frames, num_frames=num_frames, seed=seed, textures=textures,
                  motion_episodes=motion_episodes)
    recs = build(procedural_tasks(num_assets, seed, bad_fraction), cfg, workers=workers, progress=not quiet)
    print(f"assets in {out / 'assets'}: {_summary(recs)}", file=sys.stderr)


@data_app.command("render", cls=Command)
def render(out: Path = OUT, assets: Optional[Path] = typer.Option(None, "--assets", help="Folder of .glb/.gltf (default: OUT/assets)."),
           views: int = VIEWS, frames: int = FRAMES, resolution: int = RES, cycles_samples: int = SAMPLES,
           seed: int = SEED, workers: int = WORKERS, executor: str = EXECUTOR, ray_address: Optional[str] = RAY,
           quiet: bool = QUIET) -> None:
    """Render every asset: RGBA views × frames, cameras, vertex tracks, visibility, part masks."""
    from ..data.build import build, tasks_from_assets
    from ..data.sources import folder_tasks

    tasks = folder_tasks(assets) if assets else tasks_from_assets(out)
    cfg = _config(out, ("asset", "render"), views=views, frames=frames, resolution=resolution,
                  cycles_samples=cycles_samples, seed=seed)
    recs = build(tasks, cfg, workers=workers, executor=executor, ray_address=ray_address, progress=not quiet)
    print(f"rendered: {_summary(recs)}", file=sys.stderr)


@data_app.command("curate", cls=Command)
def curate_cmd(out: Path = OUT, curation_model: Optional[Path] = MODEL, vlm_url: Optional[str] = VLM,
               vlm_model: str = VLM_MODEL, workers: int = WORKERS, quiet: bool = QUIET) -> None:
    """Motion statistics + random forest (+ optional VLM filter) for every rendered asset; reasons in OUT/curation."""
    from ..data.build import build, tasks_from_assets

    cfg = _config(out, ("curate",), curation_model=curation_model, vlm_url=vlm_url, vlm_model=vlm_model)
    recs = build(tasks_from_assets(out), cfg, workers=workers, progress=not quiet)
    print(f"curated: {_summary(recs)}", file=sys.stderr)


@data_app.command("sample-drags", cls=Command)
def sample_drags_cmd(out: Path = OUT, num_frames: int = NUMF, samples_per_view: int = SPV, seed: int = SEED,
                     tracks_gif: bool = TRACKS, workers: int = WORKERS, quiet: bool = QUIET) -> None:
    """Sample drags for every kept asset; write OUT/samples/*.json + .gif."""
    from ..data.build import build, tasks_from_assets

    cfg = _config(out, ("sample",), num_frames=num_frames, samples_per_view=samples_per_view, seed=seed,
                  tracks_gif=tracks_gif)
    recs = build(tasks_from_assets(out), cfg, workers=workers, progress=not quiet)
    print(f"sampled: {_summary(recs)}", file=sys.stderr)


@data_app.command("build", cls=Command)
def build_cmd(
    out: Path = OUT,
    source: str = typer.Option("procedural", "--source", help="procedural, folder or objaverse."),
    assets: Optional[Path] = typer.Option(None, "--assets", help="Folder of .glb/.gltf (--source folder)."),
    objaverse_list: str = typer.Option("hq", "--objaverse-list", help="hq (8,069 UIDs) or all (13,227)."),
    num_assets: int = typer.Option(8, "--num-assets", min=1, help="Procedural assets / Objaverse objects to take."),
    views: int = VIEWS, frames: int = FRAMES, resolution: int = RES, cycles_samples: int = SAMPLES,
    num_frames: int = NUMF, samples_per_view: int = SPV, seed: int = SEED, curation_model: Optional[Path] = MODEL,
    vlm_url: Optional[str] = VLM, vlm_model: str = VLM_MODEL, tracks_gif: bool = TRACKS, textures: bool = TEXTURES,
    motion_episodes: int = EPISODES, workers: int = WORKERS, executor: str = EXECUTOR, ray_address: Optional[str] = RAY, quiet: bool = QUIET,
) -> None:
    """All stages for a source: assets → renders → curation → drag samples (resumable)."""
    from ..data.build import build
    from ..data.sources import folder_tasks, objaverse_tasks, procedural_tasks

    if source == "procedural":
        tasks = procedural_tasks(num_assets, seed)
    elif source == "folder":
        if assets is None:
            raise UserInputError("--source folder needs --assets FOLDER")
        tasks = folder_tasks(assets)
    elif source == "objaverse":
        tasks = objaverse_tasks(objaverse_list, num_assets)
    else:
        raise UserInputError(f"unknown --source {source!r}: use procedural, folder or objaverse")
    if num_frames > frames and (motion_episodes == 1 or source != "procedural"):
        raise UserInputError(f"--num-frames {num_frames} is more than the {frames} rendered --frames")
    cfg = _config(out, ("asset", "render", "curate", "sample"), curation_model=curation_model, views=views,
                  frames=frames, resolution=resolution, cycles_samples=cycles_samples, num_frames=num_frames,
                  samples_per_view=samples_per_view, seed=seed, vlm_url=vlm_url, vlm_model=vlm_model,
                  tracks_gif=tracks_gif, textures=textures, motion_episodes=motion_episodes)
    recs = build(tasks, cfg, workers=workers, executor=executor, ray_address=ray_address, progress=not quiet)
    print(f"{out}: {_summary(recs)} (manifest: {out / 'manifest.json'})", file=sys.stderr)


@data_app.command("label", cls=Command)
def label_cmd(out: Path = OUT, labels: Path = typer.Option(..., "--labels", help="CSV to write (asset_id,label).")) -> None:
    """Write a labels file to edit: one line per rendered asset, pre-filled for procedural assets (1 keep / 0 reject)."""
    if labels.exists():
        raise UserInputError(f"{labels} already exists: edit it or choose another name")
    rows = ["asset_id,label"]
    for f in sorted((out / "assets").glob("*.json")):
        info = json.loads(f.read_text())
        lab = info.get("label")
        rows.append(f"{f.stem},{'' if lab is None else lab}")
    labels.write_text("\n".join(rows) + "\n")
    print(f"wrote {len(rows) - 1} assets to {labels}; fill in the empty labels (1 = realistic part-level motion)", file=sys.stderr)


@data_app.command("fit-curation", cls=Command)
def fit_curation(out: Path = OUT, labels: Path = typer.Option(..., "--labels"),
                 model_out: Path = typer.Option(..., "--model-out", help="Curation model JSON to write.")) -> None:
    """Fit the random-forest curation model on labelled rendered assets."""
    import numpy as np

    from ..data.curation import MotionClassifier, read_labels
    from ..data.motion import motion_features
    from ..data.renders import RenderedAsset

    labelled = read_labels(labels)
    feats, ys, ids = [], [], []
    for asset_id, y in sorted(labelled.items()):
        rdir = out / "renders" / asset_id
        if not (rdir / "meta.json").is_file():
            raise UserInputError(f"asset {asset_id!r} of {labels} has no render in {out / 'renders'}")
        feats.append(motion_features(RenderedAsset.load(rdir).positions))
        ys.append(y)
        ids.append(asset_id)
    MotionClassifier(np.array(feats), np.array(ys), ids=ids).save(model_out)
    print(f"fit on {len(ids)} assets; wrote {model_out}", file=sys.stderr)
