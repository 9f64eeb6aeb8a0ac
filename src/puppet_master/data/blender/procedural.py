"""Procedural animated articulated assets, built and exported as GLB with Blender (bpy).

Runs inside a Blender Python (``bpy`` + ``numpy`` + the standard library only: the
Blender interpreter has its own numpy<2 and none of puppet-master's other
dependencies). Every moving part is its own named mesh object (``part_*``); static
geometry is named ``body*``. Rigid parts are animated with object keyframes (hinges
rotate about their edge, drawers slide); the animal-like kinds use armatures with
skinned meshes. Blender is Z-up; the object's front faces −Y.

Kinds (``KINDS``): storage, table, laptop, bucket, refrigerator, dishwasher, box,
safe, toilet, fish (skinned), quadruped (skinned); and deliberately bad ones for
curation: ``bad_static`` (no motion), ``bad_global`` (the whole object translates /
rotates / scales as one), ``bad_exploding`` (parts fly apart).
"""

import math
import random
import sys
from pathlib import Path

import bpy
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kinds import BAD_KINDS, CATEGORY, GOOD_KINDS, KINDS  # noqa: F401 - beside this file


def reset_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


#: Set by :func:`build_asset`: give materials an image texture (see :func:`_texture_image`).
_TEXTURED = False
#: Texture repeats per metre of the box-projected UVs (:func:`_box_project_uvs`).
UV_SCALE = 2.0


def _material(name, rng):
    mat = bpy.data.materials.new(name)
    if getattr(mat, "node_tree", None) is None:
        mat.use_nodes = True
    h, s, v = rng.random(), 0.25 + 0.6 * rng.random(), 0.3 + 0.6 * rng.random()
    r, g, b = _hsv(h, s, v)
    bsdf = mat.node_tree.nodes.get("Principled BSDF")
    if bsdf is not None:
        bsdf.inputs["Base Color"].default_value = (r, g, b, 1.0)
        bsdf.inputs["Roughness"].default_value = 0.3 + 0.6 * rng.random()
        if _TEXTURED:
            # seeded from the colour already drawn, so a textured asset has the same geometry,
            # colours and motion as the flat one of the same seed
            tex = mat.node_tree.nodes.new("ShaderNodeTexImage")
            tex.image = _texture_image(f"{name}_texture", (r, g, b), int(h * 1e9) ^ int(v * 1e6))
            mat.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    mat.diffuse_color = (r, g, b, 1.0)
    return mat


def _texture_image(name, rgb, seed, size=128):
    """A tileable packed image: the base colour modulated by multi-scale value noise.

    Flat-shaded parts give an optical-flow tracker nothing to follow inside a part (the
    aperture problem), and real Objaverse assets are textured. The pattern is 3 octaves
    (4, 8, 16 cells per tile) of smooth periodic noise plus a few stripes (grain); it scales
    the linear colour by 1 + 0.35·z (z: the pattern standardised; clipped to 0.45–1.55).
    At ``UV_SCALE`` repeats per metre its features span roughly 3–13 cm.
    """
    rs = np.random.default_rng(seed)
    acc = np.zeros((size, size))
    for cells, weight in ((4, 0.5), (8, 0.3), (16, 0.2)):
        grid = rs.random((cells, cells))
        # periodic bicubic-ish upsampling via FFT keeps the texture tileable
        spec = np.fft.fft2(grid)
        pad = np.zeros((size, size), complex)
        k = cells // 2
        pad[:k, :k], pad[:k, -k:], pad[-k:, :k], pad[-k:, -k:] = spec[:k, :k], spec[:k, -k:], spec[-k:, :k], spec[-k:, -k:]
        up = np.real(np.fft.ifft2(pad)) * (size / cells) ** 2
        acc += weight * (up - up.mean()) / (up.std() + 1e-8)
    yy = np.arange(size)[:, None] * np.ones((1, size))
    acc += 0.4 * np.sin(2 * np.pi * (rs.integers(2, 6) * yy / size + 0.3 * acc))
    shade = np.clip(1.0 + 0.35 * (acc - acc.mean()) / (acc.std() + 1e-8), 0.45, 1.55)
    rgba = np.ones((size, size, 4), np.float32)
    for c in range(3):
        lin = np.clip(rgb[c] * shade, 0.0, 1.0)  # linear, like the flat Base Color
        # glTF stores base-colour textures as sRGB: encode, so the import decodes back to `lin`
        rgba[..., c] = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    img = bpy.data.images.new(name, size, size, alpha=False)
    img.pixels.foreach_set(rgba.ravel())
    img.pack()
    return img


def _box_project_uvs(mesh):
    """UVs by box projection: each face takes the two local coordinates across its normal's
    dominant axis, × ``UV_SCALE`` (texture repeats per metre)."""
    uv = mesh.uv_layers.new(name="UVMap")
    for poly in mesh.polygons:
        n = poly.normal
        axis = max(range(3), key=lambda a: abs(n[a]))
        u, w = [a for a in range(3) if a != axis]
        for li in poly.loop_indices:
            co = mesh.vertices[mesh.loops[li].vertex_index].co
            uv.data[li].uv = (co[u] * UV_SCALE, co[w] * UV_SCALE)


def _hsv(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _box_geometry(lo, hi, subdiv=1):
    """Vertices and quad faces of an axis-aligned box, each face split ``subdiv``×``subdiv``."""
    verts, faces, index = [], [], {}

    def vid(p):
        key = tuple(round(c, 6) for c in p)
        if key not in index:
            index[key] = len(verts)
            verts.append(p)
        return index[key]

    n = max(1, subdiv)
    for axis in range(3):
        for side in (0, 1):
            u, w = [a for a in range(3) if a != axis]
            for i in range(n):
                for j in range(n):
                    quad = []
                    for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1)):
                        p = [0.0, 0.0, 0.0]
                        p[axis] = hi[axis] if side else lo[axis]
                        p[u] = lo[u] + (hi[u] - lo[u]) * (i + di) / n
                        p[w] = lo[w] + (hi[w] - lo[w]) * (j + dj) / n
                        quad.append(vid(tuple(p)))
                    faces.append(quad if side else quad[::-1])
    return verts, faces


def _cylinder_geometry(radius, height, segments=16, z0=0.0, inner=None):
    verts, faces = [], []
    for k in range(segments):
        a = 2 * math.pi * k / segments
        verts += [(radius * math.cos(a), radius * math.sin(a), z0), (radius * math.cos(a), radius * math.sin(a), z0 + height)]
    for k in range(segments):
        a, b = 2 * k, 2 * ((k + 1) % segments)
        faces.append((a, b, b + 1, a + 1))
    faces.append(tuple(2 * k for k in range(segments))[::-1])
    return verts, faces


def _mesh_object(name, verts, faces, mat, location=(0, 0, 0)):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(v) for v in verts], [], [tuple(f) for f in faces])
    mesh.update()
    if _TEXTURED:
        _box_project_uvs(mesh)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    obj.data.materials.append(mat)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def box(name, lo, hi, mat, pivot=None, subdiv=2):
    """A box object whose origin is ``pivot`` (world), so that rotations hinge there."""
    pivot = pivot or tuple((a + b) / 2 for a, b in zip(lo, hi))
    lo_l = [a - p for a, p in zip(lo, pivot)]
    hi_l = [b - p for b, p in zip(hi, pivot)]
    verts, faces = _box_geometry(lo_l, hi_l, subdiv)
    return _mesh_object(name, verts, faces, mat, pivot)


class Timing:
    """When one motion happens inside an episode of ``num_frames`` frames: eased from ``start`` to ``end``."""

    def __init__(self, rng, num_frames):
        self.n = num_frames
        length = rng.uniform(0.5, 1.0) * (num_frames - 1)
        self.start = rng.uniform(0, num_frames - 1 - length)
        self.end = self.start + length
        self.back_and_forth = rng.random() < 0.25

    def amount(self, frame):
        t = min(1.0, max(0.0, (frame - self.start) / max(self.end - self.start, 1e-6)))
        if self.back_and_forth:
            t = 1 - abs(2 * t - 1)
        return t * t * (3 - 2 * t)


class EpisodeTiming:
    """One part's motion over an animation of ``episodes`` back-to-back episodes.

    Every episode starts from the rest pose (amount 0 at its first frame); in an active
    episode the part moves with its own :class:`Timing` and extent (fraction of the full
    motion), in an inactive one it stays at rest. ``amount(f)`` is the motion fraction at
    animation frame ``f`` (0-based); the pose jumps back to rest between episodes.
    """

    def __init__(self, rng, num_frames, episodes, active, extent_range=(0.35, 1.0)):
        self.n, self.episodes = num_frames, episodes
        self.length = num_frames // episodes
        self.plan = []
        for e in range(episodes):
            if not active[e]:
                self.plan.append(None)
            else:
                extent = 1.0 if episodes == 1 else rng.uniform(*extent_range)
                self.plan.append((Timing(rng, self.length), extent))

    def amount(self, frame):
        e = min(int(frame) // self.length, self.episodes - 1)
        if self.plan[e] is None:
            return 0.0
        timing, extent = self.plan[e]
        return extent * timing.amount(frame - e * self.length)


class MotionPlan:
    """Collects an asset's part motions, then keyframes them (:meth:`apply`).

    With one episode every part moves (one motion over the animation). With ``episodes``
    E > 1 the animation is E episodes of ``num_frames // E`` frames, each starting from
    the same rest pose; in each episode a random non-empty subset of the parts moves, by
    a random extent with its own timing. Clips cut at the episode starts therefore share
    their first frame but differ in motion, so only the drags tell them apart: what a
    drag-conditioned model must learn (docs/design.md §6).
    """

    def __init__(self, rng, num_frames, episodes=1, move_prob=0.5):
        if episodes < 1 or num_frames // episodes < 2:
            raise ValueError(f"{num_frames} frames cannot hold {episodes} motion episodes of at least 2 frames")
        self.rng, self.n, self.episodes, self.move_prob = rng, num_frames, episodes, move_prob
        self.moves = []

    def timing(self, active=None):
        """An :class:`EpisodeTiming` active in the given episodes (default: all)."""
        return EpisodeTiming(self.rng, self.n, self.episodes, active or [True] * self.episodes)

    def slide(self, obj, offset):
        self.moves.append((obj, "slide", offset))

    def hinge(self, obj, axis, angle):
        self.moves.append((obj, "hinge", (axis, angle)))

    def episode_of(self, frame):
        """``(episode, frame within it)`` of animation frame ``frame`` (0-based)."""
        length = self.n // self.episodes
        e = min(int(frame) // length, self.episodes - 1)
        return e, frame - e * length

    def apply(self):
        e_count = self.episodes
        if e_count == 1:
            active = [[True] for _ in self.moves]
        else:
            active = [[self.rng.random() < self.move_prob for _ in range(e_count)] for _ in self.moves]
            for e in range(e_count):
                if self.moves and not any(a[e] for a in active):
                    active[self.rng.randrange(len(self.moves))][e] = True
        for (obj, kind, params), act in zip(self.moves, active):
            timing = self.timing(act)
            if kind == "slide":
                slide(obj, timing, params)
            else:
                hinge(obj, timing, *params)


def _animate(obj, num_frames, fn, path):
    for f in range(num_frames):
        setattr(obj, path, fn(f))
        obj.keyframe_insert(path, frame=f + 1)


def slide(obj, timing, offset):
    base = tuple(obj.location)
    _animate(obj, timing.n, lambda f: tuple(b + o * timing.amount(f) for b, o in zip(base, offset)), "location")


def hinge(obj, timing, axis, angle):
    base = list(obj.rotation_euler)

    def rot(f):
        r = list(base)
        r[axis] += angle * timing.amount(f)
        return tuple(r)

    _animate(obj, timing.n, rot, "rotation_euler")


# ---------------------------------------------------------------------------- kinds
def build_storage(rng, plan, parts):
    w, d, h = rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.7), rng.uniform(0.6, 1.6)
    body_mat, front_mat = _material("body", rng), _material("front", rng)
    box("body", (-w / 2, -d / 2, 0), (w / 2, d / 2, h), body_mat)
    rows = rng.randint(1, 4)
    use_doors = rng.random() < 0.6
    row_h = h / rows
    for r in range(rows):
        z0, z1 = r * row_h + 0.01, (r + 1) * row_h - 0.01
        if use_doors and r < rows - (1 if rows > 1 else 0) and rng.random() < 0.7:
            two = w > 0.8 and rng.random() < 0.5
            for k in range(2 if two else 1):
                x0, x1 = (-w / 2, 0) if two and k == 0 else ((0, w / 2) if two else (-w / 2, w / 2))
                left = (k == 0) if two else rng.random() < 0.5
                pivot = (x0 if left else x1, -d / 2 - 0.02, (z0 + z1) / 2)
                door = box(f"part_door_{r}_{k}", (x0 + 0.01, -d / 2 - 0.03, z0), (x1 - 0.01, -d / 2 - 0.01, z1), front_mat, pivot)
                plan.hinge(door, 2, (-1 if left else 1) * math.radians(rng.uniform(50, 110)))
                parts.append(door.name)
        else:
            drawer = box(f"part_drawer_{r}", (-w / 2 + 0.02, -d / 2 - 0.03, z0), (w / 2 - 0.02, d / 2 - 0.05, z1), front_mat)
            plan.slide(drawer, (0, -rng.uniform(0.3, 0.8) * d, 0))
            parts.append(drawer.name)


def build_table(rng, plan, parts):
    w, d, h = rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.9)
    mat, dmat = _material("wood", rng), _material("drawer", rng)
    box("body_top", (-w / 2, -d / 2, h - 0.05), (w / 2, d / 2, h), mat)
    for sx in (-1, 1):
        for sy in (-1, 1):
            box(f"body_leg_{sx}_{sy}", (sx * w / 2 - (0.05 if sx > 0 else 0), sy * d / 2 - (0.05 if sy > 0 else 0), 0),
                (sx * w / 2 + (0.05 if sx < 0 else 0), sy * d / 2 + (0.05 if sy < 0 else 0), h - 0.05), mat)
    k = rng.randint(1, 2)
    for i in range(k):
        x0 = -w / 2 + 0.08 + i * (w - 0.16) / k
        x1 = x0 + (w - 0.16) / k - 0.02
        drawer = box(f"part_drawer_{i}", (x0, -d / 2 - 0.02, h - 0.2), (x1, d / 2 - 0.1, h - 0.07), dmat)
        plan.slide(drawer, (0, -rng.uniform(0.2, 0.6) * d, 0))
        parts.append(drawer.name)


def build_laptop(rng, plan, parts):
    w, d = rng.uniform(0.6, 0.9), rng.uniform(0.4, 0.6)
    base_mat, lid_mat = _material("base", rng), _material("lid", rng)
    box("body_base", (-w / 2, -d / 2, 0), (w / 2, d / 2, 0.04), base_mat)
    lid = box("part_lid", (-w / 2, d / 2 - 0.02, 0.04), (w / 2, d / 2, 0.04 + d), lid_mat, (0, d / 2, 0.04))
    start_open = rng.random() < 0.5
    if start_open:
        plan.hinge(lid, 0, -math.radians(rng.uniform(40, 90)))
    else:
        lid.rotation_euler = (-math.radians(88), 0, 0)
        plan.hinge(lid, 0, math.radians(rng.uniform(50, 100)))
    parts.append(lid.name)


def build_bucket(rng, plan, parts):
    r, h = rng.uniform(0.25, 0.45), rng.uniform(0.4, 0.7)
    mat, hmat = _material("bucket", rng), _material("handle", rng)
    verts, faces = _cylinder_geometry(r, h, 20)
    _mesh_object("body", verts, faces, mat)
    handle = box("part_handle", (-r, -0.02, h), (r, 0.02, h + r * 0.9), hmat, (0, 0, h))
    handle.rotation_euler = (math.radians(rng.uniform(-80, -40)), 0, 0)
    plan.hinge(handle, 0, math.radians(rng.uniform(60, 140)))
    parts.append(handle.name)


def build_tall_doors(rng, plan, parts, name):
    w, d, h = rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.8), rng.uniform(1.4, 1.9)
    mat, dmat = _material("body", rng), _material("door", rng)
    box("body", (-w / 2, -d / 2, 0), (w / 2, d / 2, h), mat)
    split = rng.random() < 0.5
    spans = [(0.0, h * 0.35), (h * 0.35, h)] if split else [(0.0, h)]
    for i, (z0, z1) in enumerate(spans):
        left = rng.random() < 0.5
        pivot = (-w / 2 if left else w / 2, -d / 2 - 0.02, 0)
        door = box(f"part_{name}_door_{i}", (-w / 2, -d / 2 - 0.05, z0 + 0.01), (w / 2, -d / 2 - 0.01, z1 - 0.01), dmat, pivot)
        plan.hinge(door, 2, (-1 if left else 1) * math.radians(rng.uniform(45, 110)))
        parts.append(door.name)


def build_dishwasher(rng, plan, parts):
    w, d, h = rng.uniform(0.55, 0.7), rng.uniform(0.55, 0.7), rng.uniform(0.8, 0.9)
    mat, dmat = _material("body", rng), _material("door", rng)
    box("body", (-w / 2, -d / 2, 0), (w / 2, d / 2, h), mat)
    door = box("part_door", (-w / 2, -d / 2 - 0.05, 0.08), (w / 2, -d / 2 - 0.01, h - 0.02), dmat, (0, -d / 2 - 0.03, 0.08))
    plan.hinge(door, 0, -math.radians(rng.uniform(50, 90)))
    parts.append(door.name)
    if rng.random() < 0.5:
        rack = box("part_rack", (-w / 2 + 0.05, -d / 2 + 0.02, 0.2), (w / 2 - 0.05, d / 2 - 0.05, 0.3), _material("rack", rng))
        plan.slide(rack, (0, -rng.uniform(0.2, 0.5) * d, 0))
        parts.append(rack.name)


def build_box(rng, plan, parts, name="box"):
    w, d, h = rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.8), rng.uniform(0.2, 0.6)
    mat, lmat = _material("body", rng), _material("lid", rng)
    box("body", (-w / 2, -d / 2, 0), (w / 2, d / 2, h), mat)
    lid = box("part_lid", (-w / 2, -d / 2, h), (w / 2, d / 2, h + 0.04), lmat, (0, d / 2, h))
    plan.hinge(lid, 0, -math.radians(rng.uniform(50, 110)))
    parts.append(lid.name)


def build_safe(rng, plan, parts):
    s = rng.uniform(0.4, 0.8)
    mat, dmat = _material("body", rng), _material("door", rng)
    box("body", (-s / 2, -s / 2, 0), (s / 2, s / 2, s), mat)
    left = rng.random() < 0.5
    door = box("part_door", (-s / 2 + 0.03, -s / 2 - 0.06, 0.03), (s / 2 - 0.03, -s / 2 - 0.01, s - 0.03), dmat,
               (-s / 2 + 0.03 if left else s / 2 - 0.03, -s / 2 - 0.03, 0))
    plan.hinge(door, 2, (-1 if left else 1) * math.radians(rng.uniform(50, 120)))
    parts.append(door.name)


def build_toilet(rng, plan, parts):
    mat, smat = _material("ceramic", rng), _material("seat", rng)
    w, d = rng.uniform(0.35, 0.45), rng.uniform(0.5, 0.7)
    box("body_base", (-w / 2, -d / 2, 0), (w / 2, d / 2, 0.4), mat)
    box("body_tank", (-w / 2, d / 2 - 0.15, 0.4), (w / 2, d / 2, 0.8), mat)
    lid = box("part_lid", (-w / 2, -d / 2, 0.4), (w / 2, d / 2 - 0.16, 0.43), smat, (0, d / 2 - 0.16, 0.42))
    plan.hinge(lid, 0, -math.radians(rng.uniform(60, 100)))
    parts.append(lid.name)


def _armature(name, bones):
    """Armature with bones ``[(name, head, tail, parent_name|None)]``; returns the object."""
    scene = bpy.context.scene
    data = bpy.data.armatures.new(name)
    arm = bpy.data.objects.new(name, data)
    scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    for bname, head, tail, parent in bones:
        eb = data.edit_bones.new(bname)
        eb.head, eb.tail = head, tail
        if parent:
            eb.parent = data.edit_bones[parent]
            eb.use_connect = False
    bpy.ops.object.mode_set(mode="OBJECT")
    return arm


def _skin(obj, arm, weights):
    """``weights``: {bone name: [(vertex index, weight), ...]}."""
    obj.parent = arm
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm
    for bname, items in weights.items():
        vg = obj.vertex_groups.new(name=bname)
        for idx, wt in items:
            if wt > 1e-4:
                vg.add([idx], wt, "REPLACE")


def build_fish(rng, plan, parts):
    length, height, width = rng.uniform(0.8, 1.4), rng.uniform(0.25, 0.45), rng.uniform(0.1, 0.2)
    verts, faces = _box_geometry((-length / 2, -width / 2, 0), (length / 2, width / 2, height), subdiv=8)
    verts = [(x, y * (1 - 0.7 * abs(x) / length * 2), z) for x, y, z in verts]  # taper
    body = _mesh_object("part_fish_body", verts, faces, _material("fish", rng))
    k = 4
    xs = [length / 2 - i * length / k for i in range(k + 1)]  # head (+x) to tail (-x)
    bones = [(f"spine_{i}", (xs[i], 0, height / 2), (xs[i + 1], 0, height / 2), f"spine_{i - 1}" if i else None) for i in range(k)]
    arm = _armature("fish_rig", bones)
    weights = {b[0]: [] for b in bones}
    for vi, (x, _, _) in enumerate(verts):
        pos = (length / 2 - x) / length * k  # 0 at head, k at tail
        for i in range(k):
            w = max(0.0, 1 - abs(pos - (i + 0.5)))
            weights[f"spine_{i}"].append((vi, w))
    _skin(body, arm, weights)
    amp = math.radians(rng.uniform(15, 35))
    freq = rng.uniform(0.5, 1.5)
    phase = rng.uniform(0, 2 * math.pi)
    if plan.episodes == 1:
        waves = [(amp, freq, phase, False)]
    else:  # every episode starts straight: a different bend direction, strength and speed each
        waves = [(rng.choice([-1, 1]) * amp * rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.5), rng.uniform(0, 2 * math.pi), True)
                 for _ in range(plan.episodes)]

    def bend(i, f):
        e, t = plan.episode_of(f)
        a, fr, ph, from_rest = waves[e]
        length = plan.n // plan.episodes
        value = a * (i / k) * math.sin(2 * math.pi * fr * t / length + ph - i * 0.6)
        return value - (a * (i / k) * math.sin(ph - i * 0.6) if from_rest else 0.0)

    for i in range(1, k):
        pb = arm.pose.bones[f"spine_{i}"]
        pb.rotation_mode = "XYZ"
        for f in range(plan.n):
            pb.rotation_euler = (0, 0, bend(i, f))
            pb.keyframe_insert("rotation_euler", frame=f + 1)
    parts.append(body.name)


def build_quadruped(rng, plan, parts):
    bl, bw, bh, leg = rng.uniform(0.6, 1.0), rng.uniform(0.25, 0.4), rng.uniform(0.2, 0.3), rng.uniform(0.3, 0.5)
    mat = _material("fur", rng)
    verts, faces = [], []

    def add_box(lo, hi):
        v, f = _box_geometry(lo, hi, subdiv=2)
        off = len(verts)
        verts.extend(v)
        faces.extend([tuple(i + off for i in q) for q in f])
        return range(off, off + len(v))

    body_ids = add_box((-bl / 2, -bw / 2, leg), (bl / 2, bw / 2, leg + bh))
    head_ids = add_box((bl / 2, -bw / 3, leg + bh * 0.6), (bl / 2 + bw * 0.6, bw / 3, leg + bh * 1.4))
    legs = {}
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * (bl / 2 - 0.06), sy * (bw / 2 - 0.05)
            legs[f"leg_{'f' if sx > 0 else 'b'}{'l' if sy > 0 else 'r'}"] = (add_box((x - 0.04, y - 0.04, 0), (x + 0.04, y + 0.04, leg)), x, y)
    body = _mesh_object("part_animal", verts, faces, mat)
    bones = [("root", (-bl / 2, 0, leg + bh / 2), (bl / 2, 0, leg + bh / 2), None),
             ("head", (bl / 2, 0, leg + bh), (bl / 2 + bw * 0.6, 0, leg + bh), "root")]
    for name, (_, x, y) in legs.items():
        bones.append((name, (x, y, leg), (x, y, 0.0), "root"))
    arm = _armature("animal_rig", bones)
    weights = {"root": [(i, 1.0) for i in body_ids], "head": [(i, 1.0) for i in head_ids]}
    for name, (ids, _, _) in legs.items():
        weights[name] = [(i, 1.0) for i in ids]
    _skin(body, arm, weights)
    amp = math.radians(rng.uniform(20, 40))
    freq = rng.uniform(0.5, 1.2)
    if plan.episodes == 1:
        gaits = [(amp, freq, True, True)]
    else:  # per episode: legs and/or head move (at least one), either leg pair first, own speed
        gaits = []
        for _ in range(plan.episodes):
            legs_on = rng.random() < 0.75
            head_on = rng.random() < 0.5 or not legs_on
            gaits.append((rng.choice([-1, 1]) * amp * rng.uniform(0.6, 1.2), rng.uniform(0.5, 1.2), legs_on, head_on))
    length = plan.n // plan.episodes

    def swing(f, scale, which):
        e, t = plan.episode_of(f)
        a, fr, legs_on, head_on = gaits[e]
        on = legs_on if which == "legs" else head_on
        return scale * (a if which == "legs" else abs(a) / amp * math.radians(15)) * math.sin(2 * math.pi * fr * t / length) if on else 0.0

    for name in legs:
        pb = arm.pose.bones[name]
        pb.rotation_mode = "XYZ"
        sign = 1 if name in ("leg_fl", "leg_br") else -1
        for f in range(plan.n):
            pb.rotation_euler = (0, swing(f, sign, "legs"), 0)
            pb.keyframe_insert("rotation_euler", frame=f + 1)
    pb = arm.pose.bones["head"]
    pb.rotation_mode = "XYZ"
    for f in range(plan.n):
        pb.rotation_euler = (0, swing(f, 1, "head"), 0)
        pb.keyframe_insert("rotation_euler", frame=f + 1)
    parts.append(body.name)


BUILDERS = {
    "storage": build_storage, "table": build_table, "laptop": build_laptop, "bucket": build_bucket,
    "refrigerator": lambda r, plan, p: build_tall_doors(r, plan, p, "fridge"), "dishwasher": build_dishwasher,
    "box": build_box, "safe": build_safe, "toilet": build_toilet, "fish": build_fish, "quadruped": build_quadruped,
}


def build_bad(kind, rng, plan, parts):
    base = rng.choice(["storage", "table", "box", "safe", "dishwasher"])
    BUILDERS[base](rng, MotionPlan(rng, plan.n, plan.episodes), parts)  # its part motions are never applied
    if kind == "bad_static":
        return base
    if kind == "bad_global":
        root = bpy.data.objects.new("root", None)
        bpy.context.scene.collection.objects.link(root)
        for obj in list(bpy.data.objects):
            if obj is not root and obj.parent is None:
                obj.parent = root
        t = plan.timing()
        mode = rng.choice(["translate", "rotate", "scale"])
        if mode == "translate":
            slide(root, t, (rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 0.5)))
        elif mode == "rotate":
            hinge(root, t, 2, math.radians(rng.uniform(60, 180)) * rng.choice([-1, 1]))
        else:
            grow = rng.uniform(0.5, 1.0)
            _animate(root, plan.n, lambda f: (1 + t.amount(f) * grow,) * 3, "scale")
        return base
    # exploding: every object (static ones too) flies off in its own direction
    t = plan.timing()
    for obj in list(bpy.data.objects):
        if obj.type == "MESH":
            direction = [rng.uniform(-1, 1) for _ in range(3)]
            norm = math.sqrt(sum(c * c for c in direction)) or 1.0
            dist = rng.uniform(1.5, 3.0)
            slide(obj, t, tuple(dist * c / norm for c in direction))
            if not obj.name.startswith("part_"):
                obj.name = "part_" + obj.name
    return base


def build_asset(kind, seed, num_frames, out_glb, textured=False, episodes=1):
    """Build one asset of ``kind`` with ``seed``, animate it over ``num_frames`` frames, export GLB.

    With ``textured`` every material gets a packed image texture (:func:`_texture_image`)
    on box-projected UVs; geometry, colours and motion are those of the flat asset.
    With ``episodes`` E > 1 the animation is E motion episodes of ``num_frames // E``
    frames that all start from the rest pose (:class:`MotionPlan`); clips cut at
    ``clip_starts`` share their first frame and differ in motion.

    Returns:
        dict with ``kind``, ``category``, ``label`` (1 good part-level motion, 0 bad),
        ``parts`` (names of the moving sub-models), ``seed``, ``num_frames``, ``episodes``
        and ``clip_starts`` (0-based first frame of each episode).

    Raises:
        ValueError: unknown kind; fewer than 2 frames per episode.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}")
    global _TEXTURED
    _TEXTURED = bool(textured)
    rng = random.Random(f"{kind}:{seed}")
    scene = reset_scene()
    scene.frame_start, scene.frame_end = 1, num_frames
    parts = []
    plan = MotionPlan(rng, num_frames, episodes)
    if kind in BAD_KINDS:
        base = build_bad(kind, rng, plan, parts)
        category = CATEGORY[base]
        parts = [o.name for o in bpy.data.objects if o.type == "MESH" and o.name.startswith("part_")]
    else:
        BUILDERS[kind](rng, plan, parts)
        plan.apply()
        category = CATEGORY[kind]
    bpy.ops.export_scene.gltf(
        filepath=str(out_glb), export_format="GLB", export_animations=True, export_animation_mode="SCENE",
        export_skins=True, export_yup=True, export_apply=False, export_force_sampling=True,
        export_anim_scene_split_object=False,  # one glTF animation for the whole scene: every part plays
    )
    return {"kind": kind, "category": category, "label": int(kind in GOOD_KINDS), "parts": parts,
            "seed": seed, "num_frames": num_frames, "episodes": episodes,
            "clip_starts": [e * (num_frames // episodes) for e in range(episodes)]}
