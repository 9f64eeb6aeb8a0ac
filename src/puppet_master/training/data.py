"""Training data in latent space and the weighted source mixture (docs/design.md §6).

Every dataset yields a dict with

* ``latents``: float32 ``(N, 4, h, w)`` video latents, **multiplied** by the VAE
  scaling factor (0.18215 for SVD);
* ``image_latents``: float32 ``(4, h, w)`` first-frame VAE mean, **not** scaled;
* ``embedding``: float32 ``(1, D)`` image token (CLIP for SVD);
* ``drags``: float32 ``(N, K_max, 4)`` normalised (docs/design.md §2);
* ``category``: str.

:class:`MixtureDataset` draws from several sources with given probabilities. It is
*stateless*: the sample at position ``g`` is a pure function of ``(seed, g)``, so a
resumed or data-parallel run sees exactly the same stream (``key`` = ``g`` also seeds
that sample's noise in the trainer).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset, Sampler

from .. import limits
from ..data.dataset import MixtureDataset
from ..data.safe_pickle import safe_load_pickle
from ..edm import VAE_SCALING_FACTOR
from ..errors import UserInputError
from .config import DataConfig, SourceConfig
from .losses import largest_drag_motion  # noqa: F401  (re-exported)


class SyntheticDragDataset(Dataset):
    """Latent clips in which a Gaussian blob follows a drag over a smooth random background.

    A learnable toy task for tests, benchmarks and the tiny recipe: the network must
    move the blob along the drag given the first-frame latent. Deterministic per index.
    """

    def __init__(self, num_clips: int, num_frames: int, latent_size: int, embedding_dim: int, num_drags: int = 5, seed: int = 0):
        self.num_clips, self.num_frames, self.size = num_clips, num_frames, latent_size
        self.embedding_dim, self.num_drags, self.seed = embedding_dim, num_drags, seed

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        n, s = self.num_frames, self.size
        coarse = torch.randn(1, 4, max(2, s // 4), max(2, s // 4), generator=g)
        background = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)[0] * 0.5
        start = torch.rand(2, generator=g) * 0.5 + 0.25
        end = (start + (torch.rand(2, generator=g) - 0.5) * 0.6).clamp(0.1, 0.9)
        t = torch.linspace(0, 1, n)[:, None]
        points = start + (end - start) * t  # (N, 2) normalised
        colour = torch.randn(4, generator=g).sign() * 1.5
        coords = (torch.arange(s) + 0.5) / s
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        sigma = 1.5 / s
        bumps = torch.exp(-((xx - points[:, 0, None, None]) ** 2 + (yy - points[:, 1, None, None]) ** 2) / (2 * sigma**2))
        video = background[None] + colour[None, :, None, None] * bumps[:, None]  # (N, 4, s, s), "unscaled" units
        drags = torch.zeros(n, self.num_drags, 4)
        drags[:, 0, :2] = start
        drags[:, 0, 2:] = points
        return {
            "latents": video * VAE_SCALING_FACTOR,
            "image_latents": video[0].clone(),
            "embedding": torch.randn(1, self.embedding_dim, generator=g) * 0.1,
            "drags": drags,
            "category": "synthetic",
        }


#: The tensors of a latent-cache file.
CACHE_KEYS = ("latents", "image_latents", "embedding", "drags")


class LatentCacheDataset(Dataset):
    """A folder of ``*.safetensors`` written by ``puppet-master cache-latents`` (keys as the module docstring).

    Args:
        root: the folder.
        min_drag_motion: keep only clips whose :func:`largest_drag_motion` is at least this
            (normalised units); 0 keeps all.

    Raises:
        UserInputError: missing or empty folder, a cache entry that is not a regular file
            (a FIFO or device, refused without reading it), or no clip passes the filter.
    """

    def __init__(self, root: str | Path, min_drag_motion: float = 0.0):
        self.root = Path(root)
        self._shapes: dict | None = None  # tensor shapes of the first clip read: every clip must match
        if not self.root.is_dir():
            raise UserInputError(f"latent cache folder {str(self.root)!r} does not exist")
        self.files = sorted(self.root.glob("*.safetensors"))
        if not self.files:
            raise UserInputError(f"latent cache folder {str(self.root)!r} holds no .safetensors files")
        for f in self.files:  # a FIFO or device would block or never end the reader
            limits.check_regular_file(f, "latent cache file")
        if min_drag_motion > 0:
            kept = []
            for f in self.files:
                try:
                    with safe_open(str(f), framework="pt") as fh:
                        motion = largest_drag_motion(fh.get_tensor("drags").float())
                except (OSError, SafetensorError) as exc:
                    raise UserInputError(f"latent cache file {str(f)!r} cannot be read ({' '.join(str(exc).split())}): "
                                         "delete it and run `puppet-master cache-latents` again") from None
                if motion >= min_drag_motion:
                    kept.append(f)
            if not kept:
                raise UserInputError(f"no clip in {str(self.root)!r} has a drag moving at least "
                                     f"min_drag_motion={min_drag_motion}; lower it")
            self.files = kept

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        """One cached clip (keys as the module docstring).

        Raises:
            UserInputError: the file became unreadable (truncated, replaced, deleted), lacks
                a key, or holds tensors whose shapes differ from the cache's first file;
                the message names the file and the fix.
        """
        path = self.files[index]
        try:
            with safe_open(str(path), framework="pt") as fh:
                missing = [k for k in CACHE_KEYS if k not in fh.keys()]
                if missing:
                    raise UserInputError(f"latent cache file {str(path)!r} lacks the tensor {missing[0]!r}: delete it "
                                         "and run `puppet-master cache-latents` again to rewrite it")
                item = {k: fh.get_tensor(k).float() for k in CACHE_KEYS}
                category = (fh.metadata() or {}).get("category", "")
        except (OSError, SafetensorError) as exc:
            raise UserInputError(f"latent cache file {str(path)!r} cannot be read ({' '.join(str(exc).split())}): "
                                 "delete it and run `puppet-master cache-latents` again to rewrite it") from None
        shapes = {k: tuple(v.shape) for k, v in item.items()}
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            odd = next(k for k in CACHE_KEYS if shapes[k] != self._shapes[k])
            raise UserInputError(f"latent cache file {str(path)!r} holds {odd} of shape {shapes[odd]}, the cache's "
                                 f"other clips {self._shapes[odd]}: it was cached with other settings; delete it or "
                                 "re-cache the folder")
        item["category"] = category
        return item


class DragAMoveLatentDataset(Dataset):
    """The authors' test-batch pickles (SVD latents, CLIP embedding, drags), read safely."""

    def __init__(self, root: str | Path):
        self.files = sorted(Path(root).glob("*.pkl"))
        if not self.files:
            raise UserInputError(f"{str(root)!r} holds no Drag-a-Move .pkl batches")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        d = safe_load_pickle(self.files[index])
        cat = d.get("category", [""])
        return {
            "latents": d["latents"][0].float(),
            "image_latents": d["cond_latent"][0].float(),
            "embedding": d["embedding"][0].float(),
            "drags": d["drags"][0].float(),
            "category": str(cat[0]) if isinstance(cat, list) and cat else str(cat),
        }


def build_source(src: SourceConfig, data: DataConfig, seed: int) -> Dataset:
    """Instantiate one :class:`SourceConfig`."""
    if src.type == "synthetic":
        return SyntheticDragDataset(src.num_clips, data.num_frames, src.latent_size, src.embedding_dim, data.num_drags, seed)
    if src.type == "latent_cache":
        return LatentCacheDataset(src.path, src.min_drag_motion)
    return DragAMoveLatentDataset(src.path)


class PositionSampler(Sampler[int]):
    """Yields positions ``start, start+1, …, start+length−1`` (resume = a later start)."""

    def __init__(self, start: int, length: int):
        self.start, self.length = int(start), int(length)

    def __iter__(self):
        return iter(range(self.start, self.start + self.length))

    def __len__(self) -> int:
        return self.length


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep categories as a list; ``key`` as int64 ``(B,)``."""
    out = {k: torch.stack([it[k] for it in items]) for k in ("latents", "image_latents", "embedding", "drags")}
    out["key"] = torch.tensor([it["key"] for it in items], dtype=torch.int64)
    out["category"] = [it.get("category", "") for it in items]
    return out


def build_mixture(data: DataConfig, seed: int) -> MixtureDataset:
    """The configured sources as one :class:`MixtureDataset` (weights = source weights)."""
    sources = [build_source(s, data, seed) for s in data.sources]
    for src, ds in zip(data.sources, sources):
        n = ds[0]["latents"].shape[0]
        if n != data.num_frames:
            raise UserInputError(f"data source {src.name!r} has {n}-frame clips but data.num_frames={data.num_frames}")
    return MixtureDataset(sources, [s.weight for s in data.sources], seed, data.samples_per_epoch)


def steps_to_positions(step: int, batch_size: int, accumulation: int, num_processes: int) -> int:
    """Samples consumed by ``step`` optimizer steps over all processes."""
    return int(step) * batch_size * accumulation * num_processes

