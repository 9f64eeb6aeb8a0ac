"""Fit the shipped default curation model on labelled procedural assets (reproducible).

    PUPPET_MASTER_BLENDER_PYTHON=... python recipes/default-model/fit_default_curation.py [--num-assets 84] [--out DIR]

Generates procedural assets with seed 1000 (tests use other seeds), renders them small
(tracks are what matters), computes motion statistics and writes
src/puppet_master/assets/curation/default.json (training data + settings; the random
forest is refit from it on load).
"""

import argparse
from pathlib import Path

import numpy as np

from puppet_master.data.blender.kinds import BAD_KINDS, GOOD_KINDS
from puppet_master.data.build import BuildConfig, build
from puppet_master.data.curation import DEFAULT_MODEL, MotionClassifier
from puppet_master.data.motion import motion_features
from puppet_master.data.renders import RenderedAsset
from puppet_master.data.sources import AssetTask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-assets", type=int, default=84)
    ap.add_argument("--out", default="/tmp/puppet-master-curation-set")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    kinds = (GOOD_KINDS * 8)[: args.num_assets * 2 // 3] + (BAD_KINDS * 20)[: args.num_assets - args.num_assets * 2 // 3]
    tasks = [AssetTask(f"cur-{i:04d}-{k}", "procedural", kind=k, seed=1000 + i) for i, k in enumerate(kinds)]
    cfg = BuildConfig(out=args.out, views=1, frames=16, resolution=32, cycles_samples=1, masks=False,
                      stages=("asset", "render"))
    build(tasks, cfg, workers=args.workers)
    feats, labels, ids = [], [], []
    for t in tasks:
        r = RenderedAsset.load(Path(args.out) / "renders" / t.asset_id)
        feats.append(motion_features(r.positions))
        labels.append(int(t.kind in GOOD_KINDS))
        ids.append(t.asset_id)
    model = MotionClassifier(np.array(feats), np.array(labels), ids=ids)
    DEFAULT_MODEL.parent.mkdir(parents=True, exist_ok=True)
    model.save(DEFAULT_MODEL)
    print(f"wrote {DEFAULT_MODEL}: {len(ids)} assets, {sum(labels)} part-level, {len(ids) - sum(labels)} rejected")


if __name__ == "__main__":
    main()
