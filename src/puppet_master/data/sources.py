"""Where animated assets come from: procedural generation, a folder of GLB files, Objaverse."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import limits
from ..errors import UserInputError, optional_imports
from ..values import parse_json
from .blender.kinds import BAD_KINDS, GOOD_KINDS

OBJAVERSE_LISTS = {
    "hq": Path(__file__).resolve().parent.parent / "assets" / "objaverse" / "objaverse-animation-HQ.json",
    "all": Path(__file__).resolve().parent.parent / "assets" / "objaverse" / "objaverse-animation.json",
}


@dataclass(frozen=True)
class AssetTask:
    """One asset to process. ``source`` is ``procedural`` (``kind``, ``seed``), ``folder`` (``path``)
    or ``objaverse`` (``uid``)."""

    asset_id: str
    source: str
    kind: str = ""
    seed: int = 0
    path: str = ""
    uid: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def procedural_tasks(num_assets: int, seed: int = 0, bad_fraction: float = 0.2, kinds: list[str] | None = None) -> list[AssetTask]:
    """A reproducible list of procedural assets: good kinds in turn (shuffled per seed), a share of bad ones."""
    rng = random.Random(seed)
    good = list(kinds or GOOD_KINDS)
    unknown = [k for k in good if k not in GOOD_KINDS + BAD_KINDS]
    if unknown:
        raise UserInputError(f"unknown asset kind {unknown[0]!r}: choose from {', '.join(GOOD_KINDS + BAD_KINDS)}")
    rng.shuffle(good)
    tasks = []
    for i in range(num_assets):
        if kinds is None and rng.random() < bad_fraction:
            kind = BAD_KINDS[i % len(BAD_KINDS)]
        else:
            kind = good[i % len(good)]
        tasks.append(AssetTask(f"proc-{seed:04d}-{i:05d}-{kind}", "procedural", kind=kind, seed=seed * 100_003 + i))
    return tasks


def folder_tasks(folder: str | Path) -> list[AssetTask]:
    """Every ``*.glb`` / ``*.gltf`` in ``folder`` (sorted); ids are the sanitised file stems.

    Each file is checked before the build starts (nothing is read or copied): it must be a
    regular file (a folder, a device such as ``/dev/zero`` or a FIFO, also behind a
    symbolic link, is refused) of at most :data:`~puppet_master.limits.MAX_ASSET_BYTES`.

    Raises:
        UserInputError: missing folder, no glTF files, or a file that is not a regular
            file or too large (named, with the fix).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"asset folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".glb", ".gltf"))
    if not files:
        raise UserInputError(f"asset folder {str(folder)!r} holds no .glb/.gltf files")
    limit = limits.current("MAX_ASSET_BYTES")
    for p in files:
        size = limits.check_regular_file(p, "asset").st_size
        if size > limit:
            raise UserInputError(f"asset {str(p)!r} is larger than {limits.format_bytes(limit)}: remove it from the "
                                 f"folder or {limits.raise_hint('MAX_ASSET_BYTES')}")
    return [AssetTask(re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem), "folder", path=str(p.resolve())) for p in files]


def objaverse_uids(which: str = "hq") -> list[str]:
    """The published Objaverse-Animation (``all``, 13,227) or -HQ (``hq``, 8,069) UID list, shipped with the package."""
    if which not in OBJAVERSE_LISTS:
        raise UserInputError(f"Objaverse list must be 'hq' or 'all', got {which!r}")
    return json.loads(OBJAVERSE_LISTS[which].read_text())


def objaverse_tasks(which: str = "hq", limit: int | None = None, uids_file: str | Path | None = None) -> list[AssetTask]:
    """Tasks for the first ``limit`` Objaverse objects of a shipped list (or of ``uids_file``, a JSON list of UIDs).

    Raises:
        UserInputError: the ``objaverse`` package (the optional extra) is not installed,
            checked before any asset is attempted; an unknown list or unreadable file.
    """
    if importlib.util.find_spec("objaverse") is None:
        raise UserInputError("--source objaverse needs the objaverse package, which downloads the objects: "
                             "pip install objaverse (or pip install 'puppet-master[objaverse]')")
    uids = parse_json(limits.read_bytes_bounded(uids_file, "UID list", limits.current("MAX_CONFIG_BYTES") * 64),
                      f"UID list {str(uids_file)!r}") if uids_file else objaverse_uids(which)
    if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
        raise UserInputError(f"UID list {str(uids_file)!r} must be a JSON list of Objaverse UIDs (strings)")
    return [AssetTask(uid, "objaverse", uid=uid) for uid in uids[:limit]]


def fetch_objaverse(uid: str, out_file: Path) -> Path:
    """Download one Objaverse object with the ``objaverse`` package (needs internet) to ``out_file``.

    The download is copied to ``out_file`` with the byte budget
    :data:`~puppet_master.limits.MAX_ASSET_BYTES` (a partial copy is removed).

    Raises:
        MissingExtraError: the objaverse package is missing.
        UserInputError: the object is not a regular file or too large. Network errors
            propagate (recorded per asset).
    """
    with optional_imports("objaverse"):
        import objaverse  # optional dependency, only for the Objaverse source
    paths = objaverse.load_objects(uids=[uid], download_processes=1)
    if uid not in paths:
        raise RuntimeError(f"Objaverse did not return object {uid}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    limits.copy_bounded(paths[uid], out_file, "downloaded asset")
    return out_file
