"""Pack the default model's training data compactly for a rented accelerator (about 50 MiB to copy).

    python recipes/default-model/pack_default_model_data.py --train runs/default-model/data-train/samples \
        --val proc=runs/default-model/data-test/samples-s00 --val dev=../shared/data/dragamove-test-dev \
        --out runs/default-model/pack

writes into OUT:

* ``clips/``: every training clip as ``NAME.json`` + ``NAME.webp`` (lossless animated WebP,
  the same pixels as the GIF at about two thirds of its size; checked on every clip);
* ``photos/``: the photographs bundled with installed packages (scikit-image, scikit-learn),
  at most 512 px on a side, as JPEG (quality 95), for the VAE;
* ``val-NAME/``: frame 0 of every example of each ``--val`` folder at 256×256 as PNG, to
  measure the VAE on (never trained on).

``recipes/default-model/train_default_model_gpu.py`` reads these folders.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image

from puppet_master.data.splits import load_eval_dataset, split_video_path
from puppet_master.errors import UserInputError
from puppet_master.video import read_video

#: (package, path inside it) of bundled photographs; missing ones are skipped.
PHOTOS = [("skimage", f"data/{n}") for n in (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "coins.png", "moon.png", "brick.png",
    "grass.png", "gravel.png", "motorcycle_left.png", "motorcycle_right.png", "text.png", "page.png", "color.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png")] + [("sklearn", "datasets/images/china.jpg"),
                                                       ("sklearn", "datasets/images/flower.jpg")]


def to_webp(gif: Path, target: Path) -> int:
    frames = read_video(gif)
    images = [PIL.Image.fromarray(f) for f in frames]
    images[0].save(target, "WEBP", save_all=True, append_images=images[1:], lossless=True, method=4, duration=100)
    back = read_video(target)
    if back.shape != frames.shape or not np.array_equal(back, frames):
        raise SystemExit(f"error: {gif.name}: the WebP copy does not read back identically")
    return target.stat().st_size


def main() -> int:
    import importlib.util

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--val", action="append", default=[], help="NAME=DIR (a split folder or Drag-a-Move folder)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        print(f"error: {args.out} exists; remove it or choose another --out", file=sys.stderr)
        return 2
    metas = sorted(args.train.glob("*.json")) if args.train.is_dir() else []
    if not metas:
        print(f"error: --train {args.train} holds no clips (NAME.json + video): give a split folder", file=sys.stderr)
        return 2
    vals = []
    for item in args.val:  # every argument checked before anything is written
        name, _, folder = item.partition("=")
        if not name or not folder or not name.replace("-", "").replace("_", "").isalnum():
            print(f"error: --val must be NAME=DIR with a plain NAME, got {item!r}", file=sys.stderr)
            return 2
        try:
            vals.append((name, load_eval_dataset(folder)[1]))
        except UserInputError as exc:
            print(f"error: --val {item}: {exc}", file=sys.stderr)
            return 2
    clips = args.out / "clips"
    clips.mkdir(parents=True)
    total = 0
    for meta in metas:
        video = split_video_path(meta)
        if video is None:
            continue
        shutil.copy2(meta, clips / meta.name)
        total += to_webp(video, clips / f"{meta.stem}.webp")
    photos = args.out / "photos"
    photos.mkdir()
    for package, rel in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        src = Path(list(spec.submodule_search_locations)[0]) / rel
        if src.is_file():
            with PIL.Image.open(src) as im:
                im = im.convert("RGB")
                scale = 512 / max(im.size)
                if scale < 1:  # at most 512 px: enough for 128-px crops, a fifth of the bytes
                    im = im.resize((round(im.width * scale), round(im.height * scale)), PIL.Image.LANCZOS)
                im.save(photos / f"{package}-{src.stem}.jpg", quality=95)
    for name, examples in vals:
        target = args.out / f"val-{name}"
        target.mkdir()
        for ex in examples:
            PIL.Image.fromarray(ex.frames[0]).save(target / f"{ex.name}.png")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"packed {len(list(clips.glob('*.webp')))} clips ({total / 2**20:.1f} MiB of WebP), "
          f"{len(list(photos.iterdir()))} photos into {args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
