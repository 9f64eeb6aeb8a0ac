"""Interactive Gradio demo: upload an image, click start and end of each drag, generate.

(No ``from __future__ import annotations`` here: Gradio reads the ``gr.SelectData``
annotation of the click handler at run time.)

Per-tab state (``gr.State``) keeps each browser tab's image and drags separate;
generation is queued one at a time per process. User mistakes are reported in the
status line (or, for an upload that is not a usable image, in an alert naming the
reason), never as a stack trace.

Disk use is bounded: a served demo keeps everything it writes in one folder of its own,
``<temp>/puppet-master-demo-<pid>/`` (:func:`demo_temp_root`): the generated videos (at
most :data:`MAX_KEPT_VIDEOS`) and Gradio's uploads and cache (``GRADIO_TEMP_DIR``; each
upload at most :data:`~puppet_master.limits.MAX_UPLOAD_BYTES`, cached files deleted after an
hour). The folder is removed when the server stops (also on SIGTERM), and one left by a
killed server is removed when the next demo starts.
"""

import atexit
import copy
import inspect
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_origin

import cv2
import numpy as np
import PIL.Image

from .. import limits
from ..drags import DragSet
from ..errors import UserInputError, optional_imports
from ..options import CONTROL, DragAnythingOptions, MethodOptions, PuppetMasterOptions
from ..pipelines.loading import load_pipeline
from ..preprocessing import composite_on_white, load_image, square_pad
from ..segmentation import grabcut_foreground
from ..video import DRAG_COLORS, draw_drags, to_uint8_frames, write_video

with optional_imports("demo"):
    import gradio as gr

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
#: The canvas shows the model input enlarged by this factor so clicks are precise.
DISPLAY_SCALE = 2
#: Generated videos kept on disk at a time (older ones are deleted; the browser already has them).
MAX_KEPT_VIDEOS = 16


@dataclass
class DemoState:
    """One browser tab's state: the square model image and the drags (model pixels)."""

    image: "PIL.Image.Image | None" = None  # RGB square, model size (background not yet handled)
    alpha: np.ndarray | None = None  # (S, S) foreground mask from the alpha channel, if any
    drags: list[tuple[tuple[float, float], tuple[float, float]]] = field(default_factory=list)
    pending: tuple[float, float] | None = None  # start of an unfinished drag

    def describe(self) -> str:
        if self.image is None:
            return "No image yet: upload one or pick an example."
        parts = [f"{len(self.drags)} drag(s)"]
        for i, ((x0, y0), (x1, y1)) in enumerate(self.drags, 1):
            parts.append(f"#{i}: ({x0:.0f}, {y0:.0f}) → ({x1:.0f}, {y1:.0f})")
        if self.pending is not None:
            parts.append(f"start at ({self.pending[0]:.0f}, {self.pending[1]:.0f}) — click the end point")
        return " · ".join(parts)


def square_input(image: PIL.Image.Image, size: int) -> tuple[PIL.Image.Image, np.ndarray | None]:
    """The model's square input (:func:`~puppet_master.preprocessing.square_pad`, on white) and the alpha mask.

    Returns:
        ``(RGB image size × size, bool (size, size) foreground mask or None without transparency)``.
    """
    square, _ = square_pad(composite_on_white(image), size)  # what prepare_input gives the model
    has_alpha = image.mode in ("RGBA", "LA") and (np.asarray(image.convert("RGBA"))[..., 3] < 250).any()
    if not has_alpha:
        return square, None
    alpha = np.asarray(square_pad(image.convert("RGBA"), size)[0])[..., 3]
    return square, alpha > 127


#: Name prefix of a demo's own temporary folder (followed by its process id).
DEMO_FOLDER_PREFIX = "puppet-master-demo-"


def remove_stale_demo_folders(base: str | Path | None = None) -> list[Path]:
    """Remove the temporary folders of demos that were killed (their process no longer exists).

    Only folders named ``puppet-master-demo-<pid>`` in ``base`` (default: the system's
    temporary folder) that belong to this user are considered.

    Returns:
        The folders removed.
    """
    base = Path(base or tempfile.gettempdir())
    removed = []
    for folder in base.glob(f"{DEMO_FOLDER_PREFIX}*"):
        pid = folder.name[len(DEMO_FOLDER_PREFIX):]
        try:
            owner = folder.lstat().st_uid
        except OSError:
            continue
        if pid.isdigit() and folder.is_dir() and not folder.is_symlink() and owner == os.geteuid() \
                and not limits.process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


_TEMP_ROOTS: dict[int, Path] = {}


def demo_temp_root(base: str | Path | None = None) -> Path:
    """This process's demo folder, ``<base>/puppet-master-demo-<pid>`` (created once, removed at exit).

    Creating it first removes the folders of killed demos (:func:`remove_stale_demo_folders`).
    """
    pid = os.getpid()
    if pid not in _TEMP_ROOTS:
        base = Path(base or tempfile.gettempdir())
        remove_stale_demo_folders(base)
        root = base / f"{DEMO_FOLDER_PREFIX}{pid}"
        if root.is_dir() and not root.is_symlink() and root.lstat().st_uid == os.geteuid():
            shutil.rmtree(root, ignore_errors=True)  # a killed demo's, whose process id this one got again
        root.mkdir(mode=0o700, exist_ok=True)
        _TEMP_ROOTS[pid] = root
        atexit.register(shutil.rmtree, root, True)
    return _TEMP_ROOTS[pid]


class OutputFolder:
    """One temporary folder for the demo's videos: bounded while running, removed at exit.

    Args:
        max_files: files kept; writing one more deletes the oldest.
        root: the folder to create it in (default: :func:`demo_temp_root`).
    """

    def __init__(self, max_files: int = MAX_KEPT_VIDEOS, root: str | Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="videos-", dir=root or demo_temp_root()))
        self.max_files = max_files
        self._count = 0
        self._lock = threading.Lock()
        atexit.register(self.cleanup)

    def new_file(self, suffix: str = ".mp4") -> Path:
        """A fresh file name in the folder (the oldest files beyond ``max_files - 1`` are deleted first)."""
        with self._lock:
            self.path.mkdir(exist_ok=True)
            existing = sorted(self.path.glob("video-*"), key=lambda p: p.stat().st_mtime_ns)
            for old in existing[: max(0, len(existing) - self.max_files + 1)]:
                old.unlink(missing_ok=True)
            self._count += 1
            return self.path / f"video-{self._count:06d}{suffix}"

    def cleanup(self) -> None:
        """Remove the folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)


def read_upload(path: str | Path, name: str | None = None) -> "PIL.Image.Image":
    """An uploaded image, read with the command line's checks (size limit, bit depth, animation).

    Raises:
        UserInputError: not a usable image; the message names the upload by ``name``.
    """
    try:
        return load_image(path)
    except UserInputError as exc:
        raise UserInputError(str(exc).replace(repr(str(path)), repr(name or Path(path).name))) from None


def apply_mask(image: PIL.Image.Image, mask: np.ndarray) -> PIL.Image.Image:
    """Keep ``mask`` pixels, white elsewhere."""
    arr = np.asarray(image.convert("RGB")).copy()
    arr[~mask] = 255
    return PIL.Image.fromarray(arr)


def render_canvas(state: DemoState) -> np.ndarray | None:
    """The model image enlarged ``DISPLAY_SCALE``× with drags as arrows and a pending start dot."""
    if state.image is None:
        return None
    s = DISPLAY_SCALE
    canvas = np.array(state.image.resize((state.image.width * s, state.image.height * s)))  # writable copy
    for k, ((x0, y0), (x1, y1)) in enumerate(state.drags):
        color = DRAG_COLORS[k % len(DRAG_COLORS)]
        cv2.arrowedLine(canvas, (int(x0 * s), int(y0 * s)), (int(x1 * s), int(y1 * s)), color, 3, cv2.LINE_AA, tipLength=0.25)
        cv2.circle(canvas, (int(x0 * s), int(y0 * s)), 5, color, -1, cv2.LINE_AA)
    if state.pending is not None:
        color = DRAG_COLORS[len(state.drags) % len(DRAG_COLORS)]
        cv2.circle(canvas, (int(state.pending[0] * s), int(state.pending[1] * s)), 6, color, -1, cv2.LINE_AA)
    return canvas


def with_model_settings(options: PuppetMasterOptions, pipe) -> PuppetMasterOptions:
    """``options`` with every sampling option left to the model (``None``) set to the model's value.

    The demo's controls then start at what the loaded model samples with
    (:meth:`~puppet_master.pipelines.PuppetMasterPipeline.sampling_settings`: its
    ``model_index.json`` settings, else the paper's), e.g. 3 steps without CFG for a
    distilled model.
    """
    settings = pipe.sampling_settings()
    filled = {name: settings[spec.call] for name, (_, spec) in options.options().items()
              if getattr(options, name) is None and spec.call in settings and settings[spec.call] is not None}
    return type(options).from_values({**options.model_dump(), **filled})


def build_demo(pipe, options: PuppetMasterOptions | None = None, draganything=None,
               draganything_options: DragAnythingOptions | None = None, temp_root: str | Path | None = None):
    """Create the Gradio Blocks app around a loaded :class:`PuppetMasterPipeline`.

    ``options`` (default: :class:`~puppet_master.options.PuppetMasterOptions`'s defaults)
    fix the session's size, frames and frames per second and give the values the page's
    controls start with: one control per option that appears at
    :data:`~puppet_master.options.CONTROL`, read from the options' definition. With
    ``draganything`` (a loaded :class:`~puppet_master.pipelines.DragAnythingPipeline`) a
    *Method* selector offers it too, with its own options (``draganything_options``,
    default its defaults with the same frames): choosing a method shows its controls at
    its values. DragAnything animates the same square image at its resolution and
    segments each drag's entity with GrabCut. Asked for through the API without it loaded,
    DragAnything answers with a message.

    Args:
        temp_root: folder for the generated videos (default: :func:`demo_temp_root`).

    Returns:
        ``gr.Blocks`` (call ``.queue().launch(...)``).
    """
    options = with_model_settings(options or PuppetMasterOptions(), pipe)
    starts: dict[str, MethodOptions] = {options.label: options}
    if draganything is not None:
        starts[DragAnythingOptions.label] = draganything_options or DragAnythingOptions(frames=options.frames,
                                                                                        fps=options.fps)
    size, num_frames = options.size, options.frames
    #: the demo's controls: every CONTROL option of the offered methods, in their order
    control_names = list(dict.fromkeys(name for start in starts.values() for name in start.options(CONTROL)))
    max_drags = pipe.unet.config.num_drags  # as many drag slots as the loaded model has

    outputs = OutputFolder(root=temp_root)

    def checked_upload(component):
        """Make an Image input read uploads with :func:`read_upload`: a file that is not a usable
        image raises ``gr.Error`` with the reason (shown in the browser) instead of Gradio's
        generic error. (Set on the instance: a ``gr.Image`` subclass would make Gradio write
        a ``.pyi`` stub next to this module.)"""
        default = component.preprocess

        def preprocess(payload):
            if payload is None or payload.path is None:
                return default(payload)
            try:
                return read_upload(payload.path, payload.orig_name)
            except UserInputError as exc:
                raise gr.Error(f"Cannot use this upload: {exc}") from None

        component.preprocess = preprocess
        return component

    def on_upload(image, state):
        state = DemoState()
        if image is None:
            return state, None, state.describe()
        state.image, state.alpha = square_input(image, size)
        return state, render_canvas(state), state.describe() + " — click a start point, then an end point."

    def on_click(state, evt: gr.SelectData):
        state = copy.deepcopy(state)
        if state.image is None:
            return state, None, "Upload an image first."
        x, y = (float(v) / DISPLAY_SCALE for v in evt.index[:2])
        if state.pending is None:
            if len(state.drags) >= max_drags:
                return state, render_canvas(state), f"At most {max_drags} drags: undo or clear one first."
            state.pending = (x, y)
        else:
            state.drags.append((state.pending, (x, y)))
            state.pending = None
        return state, render_canvas(state), state.describe()

    def on_undo(state):
        state = copy.deepcopy(state)
        if state.pending is not None:
            state.pending = None
        elif state.drags:
            state.drags.pop()
        return state, render_canvas(state), state.describe()

    def on_clear(state):
        state = copy.deepcopy(state)
        state.drags, state.pending = [], None
        return state, render_canvas(state), state.describe()

    def on_generate(state, segment, overlay, method, *values):
        if values and isinstance(values[-1], gr.Progress):  # Gradio passes the progress tracker last
            values = values[:-1]
        try:
            return _generate(state, segment, overlay, method, values)
        except UserInputError as exc:
            return None, None, f"Cannot generate: {exc}"
        except Exception as exc:  # noqa: BLE001 - shown as a message, logged in full on the server
            logger.exception("generation failed")
            return None, None, f"Generation failed ({type(exc).__name__}); see the server log."

    def chosen_options(method: str, values) -> MethodOptions:
        """The chosen method's options: the session's, with the controls' values (checked as the command line's)."""
        if method not in starts:
            raise UserInputError(f"{str(method)[:40]} is not loaded in this demo: choose {' or '.join(starts)}, "
                                 "or start the demo with --draganything-model DIR for DragAnything")
        start = starts[method]
        own = start.options(CONTROL)
        given = {name: value for name, value in zip(control_names, values) if name in own}
        return type(start).from_values({**start.model_dump(), **given}, CONTROL)

    def _generate(state, segment, overlay, method, values):
        if state.image is None:
            return None, None, "Upload an image first (or pick an example)."
        if not state.drags:
            return None, None, "Add at least one drag: click a start point, then an end point."
        opts = chosen_options(method, values)
        notice = ""
        if state.pending is not None:
            notice = " (the unfinished drag was ignored)"
        image = state.image
        if state.alpha is not None:
            image = apply_mask(image, state.alpha)
        elif segment:
            image = apply_mask(image, grabcut_foreground(image, [d[0] for d in state.drags]))
        drags = DragSet.from_pairs(state.drags, size, size, num_frames=num_frames)
        if isinstance(opts, DragAnythingOptions):
            from .draganything import generate_draganything

            video = generate_draganything(draganything, state.image, drags, opts)
            if overlay:
                video = draw_drags(video, drags.trajectories)
            out = outputs.new_file(".mp4")
            write_video(video, out, fps=opts.fps)
            return str(out), str(out), f"Generated {num_frames} frames with DragAnything, {len(state.drags)} drag(s){notice}."
        frames = pipe(image, drags, num_frames=num_frames, height=size, width=size, output_type="np",
                      **opts.call_kwargs()).frames[0]
        video = to_uint8_frames(frames)
        if overlay:
            video = draw_drags(video, drags.trajectories)
        out = outputs.new_file(".mp4")
        write_video(video, out, fps=opts.fps)
        return str(out), str(out), f"Generated {num_frames} frames with {len(state.drags)} drag(s){notice}."

    def make_control(name: str):
        """The control of option ``name``, showing the first method's value (hidden if it lacks the option)."""
        first = next(start for start in starts.values() if name in start.options(CONTROL))
        info, spec = first.options(CONTROL)[name]
        shown = name in options.options(CONTROL)
        value, kind = getattr(first, name), info.annotation
        args = [a for a in get_args(kind) if a is not type(None)]
        if get_origin(kind) is not Literal and len(args) == 1:
            kind = args[0]  # an optional option (None: the model's setting) shows its type's control
        common = dict(label=spec.control.label, visible=shown, elem_id=f"option-{name.replace('_', '-')}")
        if get_origin(kind) is Literal:
            return gr.Dropdown(list(get_args(kind)), value=value, **common)
        if kind is bool:
            return gr.Checkbox(value=value, **common)
        if spec.control.minimum is not None:
            return gr.Slider(spec.control.minimum, spec.control.maximum, value=value, step=spec.control.step,
                             **common)
        return gr.Number(value=value, precision=0 if kind is int else None, **common)

    def on_method(method):
        """Show the chosen method's controls at its values."""
        start = starts.get(method, options)
        own = start.options(CONTROL)
        return [gr.update(value=getattr(start, name), visible=True) if name in own else gr.update(visible=False)
                for name in control_names]

    with gr.Blocks(title="Puppet-Master", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# Puppet-Master — drag parts of an object, get a video\n"
                    "Upload an image (or pick an example), click a **start** then an **end** point for each drag "
                    f"(up to {max_drags}), then Generate.")
        state = gr.State(DemoState())
        with gr.Row():
            with gr.Column():
                upload = checked_upload(gr.Image(label="Input image", type="pil", image_mode="RGBA",
                                                 sources=["upload"], elem_id="upload"))
                examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))
                if examples:
                    gr.Examples(examples=examples, inputs=upload)
                canvas = gr.Image(label="Click to add drags", interactive=False, elem_id="canvas", format="png")
                status = gr.Markdown(DemoState().describe(), elem_id="status")
                with gr.Row():
                    undo = gr.Button("Undo last", elem_id="undo")
                    clear = gr.Button("Clear all", elem_id="clear")
            with gr.Column():
                method = gr.Radio(list(starts), value=options.label, label="Method", visible=len(starts) > 1,
                                  elem_id="method")
                segment = gr.Checkbox(label="Remove background (GrabCut) when the image has no alpha", value=False)
                controls = [make_control(name) for name in control_names]
                overlay = gr.Checkbox(label="Draw drags on the video", value=True)
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                video = gr.Video(label="Result", elem_id="result", autoplay=True, loop=True)
                download = gr.File(label="Download", elem_id="download")

        upload.change(on_upload, [upload, state], [state, canvas, status])
        canvas.select(on_click, [state], [state, canvas, status])
        undo.click(on_undo, [state], [state, canvas, status])
        clear.click(on_clear, [state], [state, canvas, status])
        method.change(on_method, [method], controls)
        # one parameter per input and a gr.Progress default last: Gradio then tracks the pipeline's tqdm bar
        on_generate.__signature__ = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY)
             for name in ("state", "segment", "overlay", "method", *control_names)]
            + [inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 default=gr.Progress(track_tqdm=True))])
        generate.click(on_generate, [state, segment, overlay, method, *controls], [video, download, status],
                       concurrency_limit=1)
    return demo


def launch(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
           options: PuppetMasterOptions | None = None, draganything_model: str | None = None,
           draganything_options: DragAnythingOptions | None = None) -> None:
    """Load the model(s) and serve the demo (blocking); the options as :func:`build_demo`'s.

    Everything the server writes goes to :func:`demo_temp_root` (Gradio's uploads and cache
    through ``GRADIO_TEMP_DIR``, unless that is set already); uploads are limited to
    :data:`~puppet_master.limits.MAX_UPLOAD_BYTES` by Gradio's ``max_file_size``.

    Raises:
        UserInputError: a model that cannot be loaded (sizes are bounded by the options).
    """
    pipe = load_pipeline(model, device=device)
    draganything = None
    if draganything_model is not None:
        from ..pipelines.pipeline_draganything import load_draganything_pipeline

        draganything = load_draganything_pipeline(draganything_model, device=device)
    root = demo_temp_root()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / "gradio"))  # read by Gradio when the app is built
    demo = build_demo(pipe, options, draganything=draganything, draganything_options=draganything_options,
                      temp_root=root)
    # SIGTERM (e.g. from a process manager) exits through Python, so atexit removes the temporary folder
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, show_error=False,
                                                     share=False, inbrowser=False,
                                                     max_file_size=limits.current("MAX_UPLOAD_BYTES"))
