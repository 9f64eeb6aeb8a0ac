"""Run methods on an evaluation set and write ``report.json`` / ``report.md`` / side-by-side GIFs."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import PIL.Image
import torch
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from ..data.splits import EvalExample, scan_eval_dataset
from ..options import PuppetMasterOptions
from ..video import draw_drags, write_video
from .baselines import static_video, warp_video
from .metrics import FVDMetric, LPIPSMetric, flow_errors, psnr_per_frame, ssim_per_frame, trajectory_rmse
from .tracking import PointTracker

#: Per-frame PSNR cap in dB (identical frames, e.g. a baseline's frame 0, would be +inf).
PSNR_CAP = 100.0

Generator = Callable[[EvalExample], np.ndarray]


class MethodScores(BaseModel):
    """Averaged scores of one method (flow errors in pixels at 256×256)."""

    model_config = ConfigDict(extra="forbid")
    psnr: float
    ssim: float
    psnr_after_first: float
    ssim_after_first: float
    #: PSNR (dB, capped at :data:`PSNR_CAP`) of frame 0 and of the last frame against the ground
    #: truth's (None in reports written before they were added).
    psnr_first: float | None = None
    psnr_last: float | None = None
    lpips: float | None
    fvd: float | None
    flow_error_drag: float
    flow_error_fg: float
    wrong_direction_rate: float
    seconds_per_video: float


class Report(BaseModel):
    """Schema of ``report.json``."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    num_examples: int
    tracker: str
    #: Mean over examples of the RMSE (px) between the drag origins tracked through the
    #: ground-truth video and the ground-truth drags: the tracker's own error, i.e. the
    #: noise floor of ``flow_error_drag`` (None in reports written before it was added).
    tracker_noise_drag: float | None = None
    methods: dict[str, MethodScores]
    per_example: list[dict]
    #: Examples that could not be read, ``{"name", "reason"}`` each; they are not scored.
    skipped: list[dict] = []


def static_method(example: EvalExample) -> np.ndarray:
    return static_video(example.frames[0], example.frames.shape[0])


def warp_method(example: EvalExample) -> np.ndarray:
    return warp_video(example.frames[0], example.trajectories())


def model_method(pipe, options: PuppetMasterOptions | None = None) -> Generator:
    """A generator that runs a :class:`PuppetMasterPipeline` on the example's frame 0 and drags.

    ``options`` (default: :class:`~puppet_master.options.PuppetMasterOptions`'s defaults,
    as ``animate``) set the sampling arguments of each call; the frames and size are the
    example's.
    """
    options = options or PuppetMasterOptions()

    def run(example: EvalExample) -> np.ndarray:
        n, s = example.frames.shape[:2]
        out = pipe(PIL.Image.fromarray(example.frames[0]), example.drags[None], num_frames=n, height=s, width=s,
                   output_type="np", **options.call_kwargs()).frames[0]
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)

    return run


def autoencoder_method(pipe) -> Generator:
    """A generator that round-trips the *ground-truth* video through the pipeline's VAE.

    Every frame is encoded (posterior mean) and decoded exactly as the pipeline decodes
    generated latents (:meth:`PuppetMasterPipeline.decode_latents`). This is not a
    competitor: it is the best any UNet sharing that VAE can score with the paper's
    decoding, because a perfect UNet would produce exactly these latents (a pipeline's
    detail transfer, which adds back the input's own detail, can score above it). Its flow errors are the floor that the
    VAE's down-sampling and blur impose on the model's (the tracker follows blurred
    parts imperfectly), so compare the model against both this and ``static``.

    Returns uint8 ``(N, S, S, 3)`` like the other generators.
    """

    def run(example: EvalExample) -> np.ndarray:
        frames = torch.from_numpy(example.frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = pipe.encode_first_frame(frames) * pipe.vae.config.scaling_factor
        out = pipe.decode_latents(latents[None])[0]
        return ((out.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    return run


def _label(video: np.ndarray, text: str) -> np.ndarray:
    out = video.copy()
    for f in out:
        cv2.putText(f, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _finite_mean(values) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def evaluate(
    data: str | Path,
    methods: dict[str, Generator],
    tracker: PointTracker,
    out_dir: str | Path,
    limit: int | None = None,
    lpips: LPIPSMetric | None = None,
    fvd: FVDMetric | None = None,
    write_gifs: bool = True,
    progress: bool = True,
) -> Report:
    """Score ``methods`` on the examples of ``data`` and write the report to ``out_dir``.

    Per example: the tracker's own error at the drag origins on the ground truth
    (``tracker_error_drag``; its mean is the report's ``tracker_noise_drag``). Per
    example and method: PSNR / SSIM averaged over all frames and over frames
    1..N−1 (per-frame PSNR capped at :data:`PSNR_CAP` dB), LPIPS (if available), flow
    errors and the direction test (:func:`~puppet_master.evaluation.metrics.flow_errors`),
    generation time. FVD is computed over the whole set when a detector is given.
    Examples that cannot be read are listed in the report's ``skipped`` with the reason.
    Nothing is created in ``out_dir`` before the first file is written.

    Returns:
        The :class:`Report` also written as ``report.json`` and ``report.md``.

    Raises:
        UserInputError: bad data folder, or no readable example in it.
    """
    out_dir = Path(out_dir)
    dataset = scan_eval_dataset(data, limit=limit)
    examples = dataset.examples
    per_example: list[dict] = []
    videos: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for ex in tqdm(examples, desc="evaluating", disable=not progress):
        traj = ex.trajectories()
        tracked = tracker.track(ex.frames, traj[:, 0])
        row = {"name": ex.name, "category": ex.category,
               "tracker_error_drag": float(trajectory_rmse(tracked, traj).mean()), "methods": {}}
        columns = [_label(draw_drags(static_video(ex.frames[0], len(ex.frames)), traj, upto_current=False), "input"),
                   _label(ex.frames, "ground truth")]
        for name, generate in methods.items():
            start = time.perf_counter()
            pred = generate(ex)
            seconds = time.perf_counter() - start
            psnr = np.minimum(psnr_per_frame(pred, ex.frames), PSNR_CAP)
            ssim = ssim_per_frame(pred, ex.frames)
            flow = flow_errors(pred, ex.frames, traj, tracker)
            row["methods"][name] = {
                "psnr": float(psnr.mean()),
                "ssim": float(ssim.mean()),
                "psnr_after_first": float(psnr[1:].mean()),
                "ssim_after_first": float(ssim[1:].mean()),
                "psnr_first": float(psnr[0]),
                "psnr_last": float(psnr[-1]),
                "lpips": lpips(pred, ex.frames) if lpips is not None and lpips.available else None,
                "flow_error_drag": flow.flow_error_drag,
                "flow_error_fg": flow.flow_error_fg,
                "wrong_direction": flow.wrong_direction,
                "seconds": seconds,
            }
            videos[name].append(pred)
            columns.append(_label(pred, name))
        per_example.append(row)
        if write_gifs:
            (out_dir / "videos").mkdir(parents=True, exist_ok=True)
            write_video(np.concatenate(columns, axis=2), out_dir / "videos" / f"{ex.name}.gif", fps=7, overwrite=True)

    scores = {}
    real = [ex.frames for ex in examples]
    for name in methods:
        rows = [r["methods"][name] for r in per_example]
        scores[name] = MethodScores(
            psnr=_finite_mean(r["psnr"] for r in rows),
            ssim=_finite_mean(r["ssim"] for r in rows),
            psnr_after_first=_finite_mean(r["psnr_after_first"] for r in rows),
            ssim_after_first=_finite_mean(r["ssim_after_first"] for r in rows),
            psnr_first=_finite_mean(r["psnr_first"] for r in rows),
            psnr_last=_finite_mean(r["psnr_last"] for r in rows),
            lpips=_finite_mean(r["lpips"] for r in rows) if lpips is not None and lpips.available else None,
            fvd=fvd(videos[name], real) if fvd is not None and len(real) > 1 else None,
            flow_error_drag=_finite_mean(r["flow_error_drag"] for r in rows),
            flow_error_fg=_finite_mean(r["flow_error_fg"] for r in rows),
            wrong_direction_rate=float(np.mean([r["wrong_direction"] for r in rows])),
            seconds_per_video=float(np.mean([r["seconds"] for r in rows])),
        )
    report = Report(
        dataset=f"{dataset.format}:{Path(data).resolve().name}",
        num_examples=len(examples),
        tracker=tracker.name,
        tracker_noise_drag=_finite_mean(r["tracker_error_drag"] for r in per_example),
        methods=scores,
        per_example=per_example,
        skipped=dataset.skipped,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "report.json", json.dumps(report.model_dump(), indent=1, allow_nan=True) + "\n")
    _write_atomic(out_dir / "report.md", report_markdown(report, lpips))
    return report


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name in the same folder and rename it: a reader (or a run
    stopped midway) never sees a partial report; the temporary file is removed on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def report_markdown(report: Report, lpips: LPIPSMetric | None = None) -> str:
    """The report as a Markdown table, one row per method, and the examples that were skipped."""
    skipped = f" ({len(report.skipped)} more could not be read, see below)" if report.skipped else ""
    lines = [
        f"# Evaluation: {report.dataset}",
        "",
        f"{report.num_examples} examples{skipped}, 256×256, tracker `{report.tracker}`; flow errors in pixels "
        "(RMSE of tracked trajectories, generated vs ground truth). PSNR/SSIM 'after first' skip frame 0; "
        f"'frame 0' and 'last' are one frame's PSNR (capped at {PSNR_CAP:.0f} dB).",
        "",
        "| method | PSNR ↑ | SSIM ↑ | PSNR 1.. ↑ | SSIM 1.. ↑ | PSNR frame 0 ↑ | PSNR last ↑ | LPIPS ↓ | FVD ↓ "
        "| flow err. drag ↓ | flow err. fg ↓ | wrong dir. ↓ | s/video |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report.methods.items():
        lines.append(
            f"| {name} | {_fmt(s.psnr)} | {_fmt(s.ssim, 3)} | {_fmt(s.psnr_after_first)} | {_fmt(s.ssim_after_first, 3)} | "
            f"{_fmt(s.psnr_first)} | {_fmt(s.psnr_last)} | {_fmt(s.lpips, 3)} | {_fmt(s.fvd)} | {_fmt(s.flow_error_drag)} | {_fmt(s.flow_error_fg)} | "
            f"{_fmt(s.wrong_direction_rate)} | {_fmt(s.seconds_per_video)} |"
        )
    if report.tracker_noise_drag is not None:
        lines += ["", f"Tracker noise floor: the drag origins tracked through the ground-truth videos miss the "
                  f"ground-truth drags by {_fmt(report.tracker_noise_drag)} px on average; flow-error differences "
                  "well below that are not meaningful."]
    if lpips is not None and not lpips.available:
        lines += ["", f"LPIPS unavailable: {lpips.reason}"]
    if report.skipped:
        lines += ["", f"{len(report.skipped)} example(s) could not be read and were not scored:", ""]
        lines += [f"- `{s['name']}`: {s['reason']}" for s in report.skipped]
    return "\n".join(lines) + "\n"
