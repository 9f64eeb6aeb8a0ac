"""Training samples from a built dataset folder (``OUT/samples``), and the source mixture (docs/design.md §6).

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

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from ..drags import K_MAX, DragSet
from ..errors import UserInputError
from .renders import RenderedAsset

#: Mixture of the paper (docs/design.md §6).
DEFAULT_GROUP_PROBS = {"drag-a-move": 0.3, "human-shape": 0.25, "animals": 0.25, "daily-used": 0.05, "other": 0.15}
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
        self.specs = [json.loads(p.read_text()) for p in self.files]
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
            from safetensors.torch import load_file

            cached = load_file(str(self.latent_cache / f"{self.files[i].stem}.safetensors"))
            item.update({k: cached[k] for k in ("latents", "image_latents", "embedding")})
        return item


def mixture_weights(groups: list[str], probs: dict[str, float] | None = None) -> torch.Tensor:
    """Per-sample weights so that groups are drawn with ``probs`` (renormalised over the groups present)."""
    probs = probs or DEFAULT_GROUP_PROBS
    present = {g for g in groups if probs.get(g, 0) > 0}
    if not present:
        raise UserInputError(f"none of the samples' groups {sorted(set(groups))} has a mixture probability")
    total = sum(probs[g] for g in present)
    counts = {g: groups.count(g) for g in present}
    return torch.tensor([probs[g] / total / counts[g] if g in present else 0.0 for g in groups], dtype=torch.double)


def mixture_sampler(dataset: DragVideoDataset, num_samples: int, probs: dict[str, float] | None = None,
                    seed: int = 0) -> WeightedRandomSampler:
    """A sampler drawing groups with the docs/design.md §6 probabilities (default)."""
    groups = [category_group(c) for c in dataset.categories()]
    return WeightedRandomSampler(mixture_weights(groups, probs), num_samples, replacement=True,
                                 generator=torch.Generator().manual_seed(seed))
