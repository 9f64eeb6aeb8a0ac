"""Render an animated GLB with Blender Cycles (CPU, headless) and export its 3D motion.

Runs inside a Blender Python (bpy + numpy + stdlib). For one asset it writes into
``out_dir``:

* ``view_VV/rgba_FFF.png`` — RGBA renders (transparent background), V views × F frames;
* ``view_VV/index_FFF.png`` — part-index maps: the red channel is ``part + 1`` (0 =
  background), rendered without anti-aliasing;
* ``tracks.npz`` — ``positions_P`` ``(F, V_P, 3)`` float32: every vertex of part ``P``
  after animation/skinning, in normalised world coordinates; candidate surface points
  (area-weighted, per part): ``candidate_part (C,)``, ``candidate_triangle (C, 3)``
  vertex indices, ``candidate_barycentric (C, 3)``, ``candidate_positions (F, C, 3)``;
  ``visible`` ``(V, F, C)`` bool: candidate inside the image and not occluded (a ray
  from the camera reaches it first);
* ``meta.json`` — parts, frame times, resolution, normalisation and cameras.

Conventions: the whole animation is normalised so that its bounding box (over all
frames) is centred at the origin with its largest side 1. Cameras look at the origin
from azimuth ``2π·v/V + a₀`` (view 0 roughly in front, −Y) and a random elevation in the
northern hemisphere. ``K`` is the 3×3 intrinsic matrix in pixels (image spans
[0, W]×[0, H], x right, y down, pixel centres at i+0.5); ``world_to_camera`` is the 4×4
extrinsic matrix in the OpenCV convention (camera x right, y down, z forward):
``pixel ~ K · (R·X + t)``.
"""

import json
import math
import random
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector
from mathutils.bvhtree import BVHTree


def _reset():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def _animation_range():
    lo, hi = None, None
    for act in bpy.data.actions:
        a, b = act.frame_range
        lo = a if lo is None else min(lo, a)
        hi = b if hi is None else max(hi, b)
    if lo is None:
        return 1.0, 1.0
    return float(lo), float(hi)


def _set_time(scene, t):
    scene.frame_set(int(math.floor(t)), subframe=float(t - math.floor(t)))


def _mesh_state(obj, depsgraph):
    """World-space vertices (V, 3) and triangles (T, 3) of an evaluated mesh object."""
    eo = obj.evaluated_get(depsgraph)
    me = eo.to_mesh()
    n = len(me.vertices)
    co = np.empty(n * 3, np.float32)
    me.vertices.foreach_get("co", co)
    me.calc_loop_triangles()
    tris = np.empty(len(me.loop_triangles) * 3, np.int32)
    me.loop_triangles.foreach_get("vertices", tris)
    m = np.array(eo.matrix_world, dtype=np.float64)
    world = co.reshape(-1, 3).astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    eo.to_mesh_clear()
    return world, tris.reshape(-1, 3)


def _look_at(cam, target=(0.0, 0.0, 0.0)):
    direction = Vector(target) - cam.location
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()


def _intrinsics(cam, width, height):
    data = cam.data
    sensor = data.sensor_width if data.sensor_fit in ("AUTO", "HORIZONTAL") else data.sensor_height
    f = data.lens / sensor * max(width, height)
    return [[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]]


def _extrinsics(cam):
    m = np.array(cam.matrix_world, dtype=np.float64)
    r_bl = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)
    r = np.diag([1.0, -1.0, -1.0]) @ r_bl.T
    t = -r @ m[:3, 3]
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, t
    return out


def _index_material():
    mat = bpy.data.materials.new("part_index")
    if getattr(mat, "node_tree", None) is None:
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    info = nodes.new("ShaderNodeObjectInfo")
    div = nodes.new("ShaderNodeMath")
    div.operation = "DIVIDE"
    div.inputs[1].default_value = 255.0
    emit = nodes.new("ShaderNodeEmission")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(info.outputs["Object Index"], div.inputs[0])
    links.new(div.outputs[0], emit.inputs["Color"])
    links.new(emit.outputs[0], out.inputs["Surface"])
    return mat


def _setup_render(scene, resolution, samples):
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("world")
    scene.world = world
    if getattr(world, "node_tree", None) is None:
        world.use_nodes = True
    bg = world.node_tree.nodes.get("Background")
    if bg is not None:
        bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        bg.inputs["Strength"].default_value = 0.6
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(10), math.radians(30))
    scene.collection.objects.link(sun)


def render_asset(glb, out_dir, views=12, frames=32, resolution=256, seed=0, samples=16, images=True, masks=True,
                 max_candidates=400):
    """Render ``glb`` and export tracks/visibility; see the module docstring. Returns the meta dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = _reset()
    bpy.ops.import_scene.gltf(filepath=str(glb), disable_bone_shape=True)
    # parts = rendered mesh objects (bone-display shapes and hidden helpers are not parts)
    meshes = sorted((o for o in scene.objects if o.type == "MESH" and not o.hide_render and not o.hide_get()),
                    key=lambda o: o.name)
    if not meshes:
        raise ValueError(f"{glb} contains no mesh")
    start, end = _animation_range()
    times = np.linspace(start, end, frames) if end > start else np.full(frames, start)

    # normalise by the bounding box of the whole animation
    depsgraph = bpy.context.evaluated_depsgraph_get()
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for t in times:
        _set_time(scene, t)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        for obj in meshes:
            pts, _ = _mesh_state(obj, depsgraph)
            if len(pts):
                lo, hi = np.minimum(lo, pts.min(0)), np.maximum(hi, pts.max(0))
    center = (lo + hi) / 2
    scale = 1.0 / max(float((hi - lo).max()), 1e-6)
    root = bpy.data.objects.new("normalise", None)
    scene.collection.objects.link(root)
    for obj in list(scene.objects):
        if obj is not root and obj.parent is None:
            obj.parent = root
    root.scale = (scale, scale, scale)
    root.location = tuple(-center * scale)

    rng = random.Random(seed)
    az0 = -math.pi / 2 + rng.uniform(-0.3, 0.3)
    cameras = []
    for v in range(views):
        cam = bpy.data.objects.new(f"cam_{v}", bpy.data.cameras.new(f"cam_{v}"))
        cam.data.lens, cam.data.sensor_width = 35.0, 32.0
        scene.collection.objects.link(cam)
        az = az0 + 2 * math.pi * v / views
        el = math.radians(rng.uniform(10.0, 45.0))
        dist = 2.2
        cam.location = (dist * math.cos(el) * math.cos(az), dist * math.cos(el) * math.sin(az), dist * math.sin(el))
        _look_at(cam)
        cameras.append((cam, math.degrees(az), math.degrees(el)))
    bpy.context.view_layer.update()

    for i, obj in enumerate(meshes):
        obj.pass_index = i + 1
    # candidate surface points whose visibility is tested: area-weighted random points on each
    # part's triangles (barycentric weights), so they follow the part through animation/skinning
    crng = np.random.default_rng(seed)
    _set_time(scene, times[0])
    depsgraph = bpy.context.evaluated_depsgraph_get()
    cand_part, cand_tri, cand_bary = [], [], []
    for i, obj in enumerate(meshes):
        pts, tris = _mesh_state(obj, depsgraph)
        if not len(tris):
            continue
        a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
        area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
        if area.sum() <= 0:
            continue
        k = int(min(max_candidates, max(16, 4 * len(tris))))
        chosen = crng.choice(len(tris), size=k, p=area / area.sum())
        r1, r2 = crng.random(k), crng.random(k)
        s1 = np.sqrt(r1)
        bary = np.stack([1 - s1, s1 * (1 - r2), s1 * r2], axis=1)
        cand_part += [i] * k
        cand_tri.append(tris[chosen])
        cand_bary.append(bary)
    cand_part = np.array(cand_part, np.int32)
    cand_tri = np.concatenate(cand_tri).astype(np.int32) if cand_tri else np.zeros((0, 3), np.int32)
    cand_bary = np.concatenate(cand_bary).astype(np.float64) if cand_bary else np.zeros((0, 3))

    width = height = resolution
    intr = [_intrinsics(c, width, height) for c, _, _ in cameras]
    extr = [_extrinsics(c) for c, _, _ in cameras]
    positions = [[] for _ in meshes]
    visible = np.zeros((views, frames, len(cand_part)), bool)
    cand_positions = []
    for f, t in enumerate(times):
        _set_time(scene, t)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        all_v, all_t, offset = [], [], 0
        for i, obj in enumerate(meshes):
            pts, tris = _mesh_state(obj, depsgraph)
            positions[i].append(pts.astype(np.float32))
            all_v.append(pts)
            all_t.append(tris + offset)
            offset += len(pts)
        verts = np.concatenate(all_v)
        tris = np.concatenate(all_t) if all_t else np.zeros((0, 3), np.int32)
        bvh = BVHTree.FromPolygons(verts.tolist(), tris.tolist(), all_triangles=True)
        cand = np.zeros((len(cand_part), 3))
        for i in range(len(meshes)):
            sel = cand_part == i
            if sel.any():
                cand[sel] = np.einsum("ck,ckd->cd", cand_bary[sel], positions[i][f][cand_tri[sel]].astype(np.float64))
        cand_positions.append(cand.astype(np.float32))
        for v, (cam, _, _) in enumerate(cameras):
            origin = np.array(cam.matrix_world.translation)
            ext, k = extr[v], np.array(intr[v])
            cam_pts = cand @ ext[:3, :3].T + ext[:3, 3]
            z = cam_pts[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                px = cam_pts[:, 0] / z * k[0, 0] + k[0, 2]
                py = cam_pts[:, 1] / z * k[1, 1] + k[1, 2]
            inside = (z > 1e-6) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
            for c in np.nonzero(inside)[0]:
                d = cand[c] - origin
                dist = float(np.linalg.norm(d))
                hit = bvh.ray_cast(Vector(origin), Vector(d / dist), dist + 1e-3)
                visible[v, f, c] = hit[0] is None or hit[3] >= dist - 2e-3

    meta = {
        "glb": str(glb),
        "parts": [{"name": o.name, "num_vertices": int(len(positions[i][0]))} for i, o in enumerate(meshes)],
        "animation_range": [start, end],
        "frame_times": [float(t) for t in times],
        "resolution": [width, height],
        "normalisation": {"center": center.tolist(), "scale": scale},
        "cameras": [{"K": intr[v], "world_to_camera": extr[v].tolist(), "azimuth_deg": az, "elevation_deg": el,
                     "location": list(cam.matrix_world.translation)} for v, (cam, az, el) in enumerate(cameras)],
        "engine": "CYCLES", "samples": samples, "images": bool(images), "masks": bool(masks and images),
    }
    arrays = {f"positions_{i}": np.stack(p) for i, p in enumerate(positions)}
    np.savez_compressed(out_dir / "tracks.npz", candidate_part=cand_part, candidate_triangle=cand_tri,
                        candidate_barycentric=cand_bary.astype(np.float32), candidate_positions=np.stack(cand_positions),
                        visible=visible, **arrays)

    if images:
        _setup_render(scene, resolution, samples)
        for v, (cam, _, _) in enumerate(cameras):
            scene.camera = cam
            vdir = out_dir / f"view_{v:02d}"
            vdir.mkdir(exist_ok=True)
            for f, t in enumerate(times):
                _set_time(scene, t)
                scene.render.filepath = str(vdir / f"rgba_{f:03d}.png")
                bpy.ops.render.render(write_still=True)
        if masks:
            scene.view_layers[0].material_override = _index_material()
            scene.cycles.samples = 1
            scene.cycles.filter_width = 0.01
            scene.render.image_settings.color_mode = "RGB"
            try:
                scene.view_settings.view_transform = "Raw"  # index/255 written as is
            except TypeError:
                scene.view_settings.view_transform = "Standard"  # decoded with the inverse sRGB curve
            scene.view_settings.look = "None"
            scene.render.dither_intensity = 0.0
            scene.render.film_transparent = True
            scene.world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.0
            for v, (cam, _, _) in enumerate(cameras):
                scene.camera = cam
                for f, t in enumerate(times):
                    _set_time(scene, t)
                    scene.render.filepath = str(out_dir / f"view_{v:02d}" / f"index_{f:03d}.png")
                    bpy.ops.render.render(write_still=True)
            meta["index_view_transform"] = scene.view_settings.view_transform
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta

