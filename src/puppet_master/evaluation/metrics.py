"""Video metrics of the paper's evaluation (§5, App. C; docs/design.md §7).

All videos are uint8 ``(N, H, W, 3)`` at the evaluation size (256×256). Trajectories
are in pixels of that size (x right, y down).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import limits
from ..errors import UserInputError, optional_imports
from .tracking import PointTracker

with optional_imports("eval"):
    from scipy import linalg
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"videos must have equal (N, H, W, 3) shapes, got {pred.shape} and {target.shape}")


def psnr_per_frame(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR in dB of each frame (data range 255). Identical frames give ``inf``."""
    _check_pair(pred, target)
    with np.errstate(divide="ignore"):
        return np.array([peak_signal_noise_ratio(t, p, data_range=255) for p, t in zip(pred, target)])


def ssim_per_frame(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM of each frame (scikit-image, colour channels averaged, 7×7 window)."""
    _check_pair(pred, target)
    return np.array([structural_similarity(t, p, data_range=255, channel_axis=-1) for p, t in zip(pred, target)])


def trajectory_rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-point RMSE over frames of the distance between trajectories ``(K, N, 2)`` → ``(K,)`` pixels."""
    return np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).sum(-1).mean(-1))


def foreground_points(frame: np.ndarray, stride: int = 8, threshold: int = 245) -> np.ndarray:
    """Grid points (every ``stride`` px, at pixel centres) on the non-white foreground of ``frame``.

    Drag-a-Move renders show one object on white: a pixel is foreground when any channel
    is below ``threshold``. Returns ``(M, 2)`` pixel coordinates (may be empty).
    """
    fg = (np.asarray(frame)[..., :3] < threshold).any(-1)
    ys, xs = np.mgrid[stride // 2 : fg.shape[0] : stride, stride // 2 : fg.shape[1] : stride]
    keep = fg[ys, xs]
    return np.stack([xs[keep] + 0.5, ys[keep] + 0.5], axis=-1).astype(np.float64)


@dataclass
class FlowResult:
    """Flow-error figures of one generated video (pixels at the evaluation size)."""

    flow_error_drag: float
    flow_error_fg: float
    wrong_direction: bool
    cosines: list[float]


def flow_errors(
    pred: np.ndarray,
    target: np.ndarray,
    drag_trajectories: np.ndarray,
    tracker: PointTracker,
    fg_stride: int = 8,
    min_motion: float = 1.0,
) -> FlowResult:
    """Flow error as in the paper: RMSE between points tracked in the generated and in the
    ground-truth video, averaged (a) over the drag origins and (b) over the foreground
    points of frame 0; and whether the video moves against its drags.

    Args:
        pred, target: uint8 ``(N, H, W, 3)``.
        drag_trajectories: requested drags ``(K, N, 2)`` in pixels.
        tracker: a :class:`~puppet_master.evaluation.tracking.PointTracker`.
        fg_stride: grid step of the foreground points.
        min_motion: requested displacements shorter than this (px) are not used for the
            direction test.

    Returns:
        :class:`FlowResult`. ``wrong_direction`` is true when the mean cosine between the
        tracked final displacement of the drag origins in ``pred`` and the requested
        final displacements is negative.
    """
    _check_pair(pred, target)
    origins = np.asarray(drag_trajectories, dtype=np.float64)[:, 0]
    fg = foreground_points(target[0], fg_stride)
    queries = np.concatenate([origins, fg]) if len(fg) else origins
    tp = tracker.track(pred, queries)
    tt = tracker.track(target, queries)
    k = len(origins)
    rmse = trajectory_rmse(tp, tt)
    requested = np.asarray(drag_trajectories)[:, -1] - origins
    moved = tp[:k, -1] - tp[:k, 0]
    cosines = []
    for req, mov in zip(requested, moved):
        if np.linalg.norm(req) < min_motion:
            continue
        denom = np.linalg.norm(req) * np.linalg.norm(mov)
        cosines.append(float(req @ mov / denom) if denom > 1e-9 else 0.0)
    return FlowResult(
        flow_error_drag=float(rmse[:k].mean()),
        flow_error_fg=float(rmse[k:].mean()) if len(fg) else float("nan"),
        wrong_direction=bool(cosines) and float(np.mean(cosines)) < 0,
        cosines=cosines,
    )


class LPIPSMetric:
    """LPIPS (Zhang et al.) via the ``lpips`` package, when it and its weights are available locally.

    ``available`` is false (and :attr:`reason` says why) when the package, torchvision or
    the backbone weights cannot be loaded; callers then report LPIPS as unavailable —
    never a made-up number.
    """

    def __init__(self, net: str = "alex", device: str = "cpu") -> None:
        self.available = False
        self.reason = ""
        try:
            import lpips  # optional dependency (and its weights): LPIPS is null without it

            self.model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
            self.device = device
            self.available = True
        except Exception as exc:  # noqa: BLE001 - missing package / torchvision / weights
            self.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        _check_pair(pred, target)
        to = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(self.device)  # noqa: E731
        with torch.no_grad():
            return float(self.model(to(pred), to(target)).mean())


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between Gaussians: ``‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2})``."""
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


class FVDMetric:
    """FVD with a TorchScript I3D feature extractor given as a local file.

    Uses the common ``i3d_torchscript.pt`` (StyleGAN-V / the FVD reference detector):
    videos are fed as float ``(B, 3, N, 224, 224)`` in [−1, 1]; features are 400-d.
    Real and generated feature sets each need more than one video.

    Trust: a TorchScript file is a program, not plain weights. ``torch.jit.load`` does
    not unpickle Python objects, but the graph stored in the file runs (torch operators
    only, no Python), so the file must come from a source the user trusts. There is no
    weights-only form of it.

    Raises:
        UserInputError: the detector file is missing or is not a TorchScript archive.
    """

    def __init__(self, detector: str | Path, device: str = "cpu") -> None:
        path = Path(detector)
        if not path.exists():
            raise UserInputError(f"I3D detector {str(path)!r} does not exist (FVD needs a local TorchScript I3D)")
        limits.check_regular_file(path, "I3D detector")  # a FIFO or device would block or never end the reader
        self.device = device
        try:
            with warnings.catch_warnings():  # torch marks jit.load deprecated; the I3D detector exists only as TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable TorchScript detector
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(f"cannot load the I3D detector {str(path)!r} (a TorchScript file): {first}") from None

    def features(self, videos: list[np.ndarray]) -> np.ndarray:
        feats = []
        for v in videos:
            x = torch.from_numpy(v).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1).to(self.device)
            x = torch.nn.functional.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
            with torch.no_grad():
                feats.append(self.model(x, rescale=False, resize=False, return_features=True).cpu().numpy())
        return np.concatenate(feats)

    def __call__(self, generated: list[np.ndarray], real: list[np.ndarray]) -> float:
        a, b = self.features(generated), self.features(real)
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
