"""Training samples from a built dataset folder (``OUT/samples``), and the source mixture (docs/design.md §6).

The mixture is one mechanism, :class:`MixtureDataset` (sources drawn by weight, reproducible
per position), used for a training run's configured sources and, by :func:`group_mixture`,
for the source groups of a clip dataset with the paper's probabilities :data:`PAPER_MIXTURE`.

:class:`DragVideoDataset` reads each drag sample's JSON and its rendered RGBA frames
(composited on white) and yields

* ``frames``: float32 ``(N, 3, H, W)`` in [−1, 1];
* ``image``: float32 ``(3, H, W)``, frame 0 (the conditioning image);
* ``drags``: float32 ``(N, K_max, 4)`` normalised (docs/design.md §2);
* ``category``: str; ``group``: the mixture group (``drag-a-move``, ``animals``, …);
* with ``latent_cache``: also ``latents``, ``image_latents``, ``embedding`` from the
  cache file of the same name (see :mod:`puppet_master.training.cache`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset, Subset

from .. import limits
from ..drags import K_MAX, DragSet
from ..errors import UserInputError
from ..values import parse_json
from .renders import RenderedAsset

#: The paper's training mixture: probability of each source group (docs/design.md §6).
PAPER_MIXTURE = {"drag-a-move": 0.3, "human-shape": 0.25, "animals": 0.25, "daily-used": 0.05, "other": 0.15}
#: Categories of the Drag-a-Move set (PartNet-Mobility) and of animals.
DRAG_A_MOVE_CATEGORIES = {"StorageFurniture", "Table", "Laptop", "Bucket", "Refrigerator", "Dishwasher", "Box", "Safe",
                          "Toilet", "Oven", "Microwave", "WashingMachine", "Door", "Window", "Faucet"}
ANIMAL_CATEGORIES = {"Fish", "Quadruped", "Animal", "Bird"}


def category_group(category: str) -> str:
    """Mixture group of a category."""
    if category in DRAG_A_MOVE_CATEGORIES:
        return "drag-a-move"
    if category in ANIMAL_CATEGORIES:
        return "animals"
    if category in ("Human", "Humanoid"):
        return "human-shape"
    return "other"


def _read_spec(path: Path) -> dict:
    """A drag sample's JSON: a regular file of at most :data:`~puppet_master.limits.MAX_JSON_BYTES` holding an object."""
    raw = limits.read_bytes_bounded(path, "drag sample", limits.current("MAX_JSON_BYTES"), "MAX_JSON_BYTES")
    spec = parse_json(raw, f"drag sample {str(path)!r}")
    if not isinstance(spec, dict):
        raise UserInputError(f"drag sample {str(path)!r} must hold a JSON object")
    return spec


class DragVideoDataset(Dataset):
    """Drag samples of one or more built dataset folders (their ``samples/*.json``).

    Args:
        roots: build output folders (or ``samples`` folders).
        size: resize frames to ``size × size`` (default: render size).
        latent_cache: optional folder of cached latents named like the samples.
        num_drags: ``K_max`` slots.

    Raises:
        UserInputError: no samples found.
    """

    def __init__(self, roots, size: int | None = None, latent_cache: str | Path | None = None, num_drags: int = K_MAX):
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        self.files = []
        for root in map(Path, roots):
            sample_dir = root / "samples" if (root / "samples").is_dir() else root
            self.files += sorted(p for p in sample_dir.glob("*.json"))
        if not self.files:
            raise UserInputError(f"no drag samples (samples/*.json) under {', '.join(map(str, roots))}")
        self.size, self.num_drags = size, num_drags
        self.latent_cache = Path(latent_cache) if latent_cache else None
        self.specs = [_read_spec(p) for p in self.files]
        self._renders: dict[Path, RenderedAsset] = {}

    def __len__(self) -> int:
        return len(self.files)

    def categories(self) -> list[str]:
        return [s.get("category", "") for s in self.specs]

    def _render(self, i: int) -> RenderedAsset:
        path = (self.files[i].parent / self.specs[i]["render"]).resolve()
        if path not in self._renders:
            self._renders[path] = RenderedAsset.load(path)
        return self._renders[path]

    def __getitem__(self, i: int) -> dict:
        spec = self.specs[i]
        render = self._render(i)
        n, s0 = spec["num_frames"], spec["start_frame"]
        frames = np.stack([render.rgb_on_white(spec["view"], s0 + k) for k in range(n)])
        w, h = spec["image_size"]
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        if self.size and (h, w) != (self.size, self.size):
            video = torch.nn.functional.interpolate(video, size=(self.size, self.size), mode="bilinear", antialias=True,
                                                    align_corners=False)
        drags = DragSet.from_json(spec, width=w, height=h, num_frames=n, max_drags=self.num_drags).to_tensor(self.num_drags)
        item = {"frames": video, "image": video[0], "drags": drags, "category": spec.get("category", ""),
                "group": category_group(spec.get("category", ""))}
        if self.latent_cache is not None:
            cached = load_file(str(self.latent_cache / f"{self.files[i].stem}.safetensors"))
            item.update({k: cached[k] for k in ("latents", "image_latents", "embedding")})
        return item


def group_mixture(dataset: DragVideoDataset, probs: dict[str, float] | None = None, seed: int = 0,
                  epoch_length: int | None = None) -> "MixtureDataset":
    """The samples of ``dataset`` drawn by source group with ``probs`` (default: :data:`PAPER_MIXTURE`).

    Groups absent from the dataset are left out and the others' probabilities renormalised;
    within a group every sample is equally likely. Position ``g`` of the result is the same
    sample in every run with the same seed (:class:`MixtureDataset`).

    Raises:
        UserInputError: no sample belongs to a group with a positive probability.
    """
    probs = PAPER_MIXTURE if probs is None else probs
    groups = [category_group(c) for c in dataset.categories()]
    present = [g for g in dict.fromkeys(groups) if probs.get(g, 0) > 0]
    if not present:
        raise UserInputError(f"none of the samples' groups {sorted(set(groups))} has a mixture probability")
    subsets = [Subset(dataset, [i for i, x in enumerate(groups) if x == g]) for g in present]
    return MixtureDataset(subsets, [probs[g] for g in present], seed, epoch_length or len(dataset))


class MixtureDataset(Dataset):
    """Stateless weighted mixture: position ``g`` → (source drawn by weight, uniform item).

    The one mixing mechanism of training data: the configured sources of a training run
    (``training.data.build_mixture``) and the source groups of a clip dataset
    (:func:`group_mixture`). Items are the sources' dicts plus ``key`` = the position,
    which seeds the sample's noise in training. ``len`` is the epoch length; positions past
    it wrap into later "epochs" and are still valid (the sampler asks for any non-negative
    position).

    Raises:
        UserInputError: no sources.
    """

    def __init__(self, sources: list[Dataset], weights: list[float], seed: int, epoch_length: int | None = None):
        if not sources:
            raise UserInputError("no training data sources configured")
        self.sources = sources
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.seed = seed
        self.epoch_length = epoch_length or sum(len(s) for s in sources)

    def __len__(self) -> int:
        return self.epoch_length

    def locate(self, position: int) -> tuple[int, int]:
        rng = np.random.default_rng([self.seed, int(position)])
        source = int(rng.choice(len(self.sources), p=self.probs))
        return source, int(rng.integers(len(self.sources[source])))

    def __getitem__(self, position: int) -> dict:
        source, index = self.locate(position)
        item = dict(self.sources[source][index])
        item["key"] = int(position)
        return item
