"""Blender-side entry point: ``BLENDER_PYTHON worker.py {generate|render} --spec SPEC.json``.

Runs in an interpreter where ``import bpy`` works (see
:mod:`puppet_master.data.blender_env`); imports only bpy, numpy and the modules beside
this file. Prints one JSON line ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``
as its last output and exits 0 / 1.
"""

import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv):
    if len(argv) != 3 or argv[1] != "--spec" or argv[0] not in ("generate", "render"):
        print(json.dumps({"ok": False, "error": "usage: worker.py {generate|render} --spec SPEC.json"}))
        return 2
    spec = json.loads(Path(argv[2]).read_text())
    # the Blender-side modules are imported inside the try: an import error is reported like any other failure
    try:
        if argv[0] == "generate":
            import procedural

            result = procedural.build_asset(spec["kind"], spec["seed"], spec["num_frames"], spec["out_glb"],
                                           textured=spec.get("textured", False),
                                           episodes=spec.get("episodes", 1))
        else:
            import render

            meta = render.render_asset(spec["glb"], spec["out_dir"], views=spec["views"], frames=spec["frames"],
                                       resolution=spec["resolution"], seed=spec["seed"], samples=spec["samples"],
                                       images=spec["images"], masks=spec["masks"])
            result = {"parts": [p["name"] for p in meta["parts"]]}
    except Exception as exc:  # noqa: BLE001 - reported to the orchestrator, which records it
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}))
        return 1
    print(json.dumps({"ok": True, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
