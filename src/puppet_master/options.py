"""Each method's options, declared once: the command line, the demo and the evaluation read them here.

A method's options are a pydantic model, :class:`PuppetMasterOptions` or
:class:`DragAnythingOptions`: one field per option with its default, its valid range
(every number finite), its help text and an :class:`Option` that says where it appears
(:data:`ANIMATE`, :data:`EVALUATE`, :data:`DEMO`, :data:`CONTROL`) and, for a sampling
option, which argument of the pipeline call it sets. ``puppet-master animate``,
``evaluate`` and ``demo`` build their flags from these fields, the demo its controls, and
the evaluation calls the pipelines with :meth:`MethodOptions.call_kwargs`; so a new
sampling option is one field of a class here, and it appears in all of them.

Options shared by both methods (frames, frames per second, seed) are fields of their
common base :class:`MethodOptions`, so each has one default. The two methods' sampling
defaults differ (Puppet-Master's paper samples 50 Euler steps at guidance 5,
DragAnything's release 25 at 3).

Values are checked when an options object is made (:meth:`MethodOptions.from_values`),
before any model is loaded or file written: a bad value is one
:class:`~puppet_master.errors.UserInputError` naming the flag (or the demo control) and
its valid range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from .errors import UserInputError
from .limits import check_model_side

#: A flag of ``puppet-master animate``.
ANIMATE = "animate"
#: A flag of ``puppet-master evaluate``.
EVALUATE = "evaluate"
#: A flag of ``puppet-master demo`` (the value the demo starts with).
DEMO = "demo"
#: A control on the demo's page (changed per generation).
CONTROL = "control"
#: Where a sampling option appears: everywhere a pipeline is called.
SAMPLING = (ANIMATE, EVALUATE, DEMO, CONTROL)

#: Seeds of the initial noise: 0 to 2**32 - 1 (as training's seeds, which numpy also takes).
MAX_SEED = 2**32 - 1
#: Sampling steps beyond this are a typo (the schedulers are trained on 1000 timesteps).
MAX_STEPS = 1000
#: CFG weights beyond this give saturated noise.
MAX_GUIDANCE = 100.0
#: Frames of a video (the released models make 14).
MAX_FRAMES = 1000
#: Entity segmenters of DragAnything without masks.
SEGMENTERS = ("grabcut", "sam")
#: Named samplers (puppet_master.pipelines.schedulers.SCHEDULER_NAMES, which a test keeps equal; not imported
#: here so that the options stay free of diffusers).
SCHEDULER_NAMES = ("euler", "edm-euler", "dpmpp-2m", "dpmpp-3m")


@dataclass(frozen=True)
class Control:
    """How the demo shows an option: a slider from ``minimum`` to ``maximum`` (a number box when both are ``None``;
    a drop-down for a choice)."""

    label: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None


@dataclass(frozen=True)
class Option:
    """Where an option appears and what it sets (the metadata of a :class:`MethodOptions` field).

    Attributes:
        flag: the command-line flag, e.g. ``"--steps"``.
        metavar: its value's name in ``--help``, e.g. ``"N"``.
        where: the places it appears (:data:`ANIMATE`, :data:`EVALUATE`, :data:`DEMO`,
            :data:`CONTROL`).
        call: the pipeline ``__call__`` argument it sets (``"generator"`` for the seed:
            a ``torch.Generator`` seeded with it); ``None`` for options the caller uses
            itself (frames, output size).
        control: how the demo shows it (needed with :data:`CONTROL`).
    """

    flag: str
    metavar: str | None = None
    where: tuple[str, ...] = SAMPLING
    call: str | None = None
    control: Control | None = None


def parse_resolution(text: str) -> tuple[int, int]:
    """``"576x320"`` → ``(576, 320)`` (width, height in pixels).

    Raises:
        UserInputError: not ``WIDTHxHEIGHT`` with positive integers of at most 5 digits, or a
            side above :data:`~puppet_master.limits.MAX_MODEL_SIDE`.
    """
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*", text or "")
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise UserInputError(f"--resolution must be WIDTHxHEIGHT in pixels (e.g. 576x320), got {str(text)[:40]!r}")
    width, height = int(match.group(1)), int(match.group(2))
    check_model_side(max(width, height), "--resolution side")
    return width, height


class MethodOptions(BaseModel):
    """Options of one method (subclasses); the fields here are shared by both methods.

    Every number is finite (``allow_inf_nan=False``) and within its field's range; an
    options object is immutable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: ``--method`` of ``animate`` (``random-model``) that chooses these options.
    method: ClassVar[str]
    #: The method's name in the demo's selector and in messages.
    label: ClassVar[str]

    frames: Annotated[int, Option("--frames", "N", where=(ANIMATE, DEMO))] = Field(
        14, ge=2, le=MAX_FRAMES, description="Number of frames to generate.")
    fps: Annotated[float, Option("--fps", "FPS", where=(ANIMATE, DEMO))] = Field(
        7.0, ge=0.1, le=1000.0, description="Frames per second of the output video.")
    seed: Annotated[int, Option("--seed", "N", call="generator", control=Control("Seed", 0, 2**31 - 1, 1))] = Field(
        0, ge=0, le=MAX_SEED, description="Random seed of the initial noise.")

    # ------------------------------------------------------------------ reading the fields
    @classmethod
    def options(cls, where: str | None = None) -> dict[str, tuple[FieldInfo, Option]]:
        """``{field name: (pydantic field, Option)}`` of the fields that appear at ``where`` (all with ``None``)."""
        found = {}
        for name, info in cls.model_fields.items():
            spec = next((m for m in info.metadata if isinstance(m, Option)), None)
            if spec is not None and (where is None or where in spec.where):
                found[name] = (info, spec)
        return found

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of option ``name`` (e.g. ``PuppetMasterOptions.default("frames") == 14``)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], where: str = ANIMATE) -> "MethodOptions":
        """Options from ``{field name: value}``; ``None`` (and an empty list) means "not given": the default.

        Args:
            values: the given values; names must be fields of this class.
            where: where they came from, for the messages: a flag (:data:`ANIMATE`,
                :data:`EVALUATE`, :data:`DEMO`) or a demo control (:data:`CONTROL`).

        Raises:
            UserInputError: a value of the wrong type or out of its range, naming the
                flag (or control) and the valid values.
        """
        given = {k: v for k, v in values.items() if is_given(v)}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise UserInputError(cls._message(exc.errors()[0], where)) from None

    @classmethod
    def _message(cls, error: dict, where: str) -> str:
        name = str(error["loc"][0]) if error["loc"] else ""
        if name not in cls.model_fields:
            return error["msg"]
        info, spec = cls.options()[name]
        what = f"{spec.control.label!r}" if where == CONTROL and spec.control is not None else spec.flag
        if error["type"] == "value_error":
            return str(error["msg"]).removeprefix("Value error, ")
        got = error.get("input")
        got = got if not isinstance(got, str) or len(got) <= 40 else got[:37] + "..."
        return f"{what} must be {describe(info)}, got {got!r}"

    # ------------------------------------------------------------------ using the values
    def call_kwargs(self) -> dict[str, Any]:
        """The pipeline call's arguments these options set (``pipe(image, drags, **opts.call_kwargs(), ...)``).

        An option whose value is ``None`` is left out (the pipeline then uses its own
        setting, e.g. ``warp_init_sigma`` from ``model_index.json``); the seed becomes a
        CPU ``torch.Generator`` seeded with it.
        """
        import torch  # imported when sampling, so that --help and argument errors stay fast

        kwargs = {}
        for name, (_, spec) in self.options().items():
            value = getattr(self, name)
            if spec.call is None or value is None:
                continue
            kwargs[spec.call] = torch.Generator(device="cpu").manual_seed(value) if spec.call == "generator" else value
        return kwargs


class PuppetMasterOptions(MethodOptions):
    """Puppet-Master's options (paper §3; the three sampling settings not in the paper say so).

    ``warp_init_sigma``, ``detail_transfer_radius`` and ``chroma_anchor_sigma`` are ``None`` unless given: the
    pipeline then uses the model's own setting (``model_index.json``); given, they are
    passed to that one call and never written into the model.
    """

    method: ClassVar[str] = "puppet-master"
    label: ClassVar[str] = "Puppet-Master"

    steps: Annotated[int | None, Option("--steps", "N", call="num_inference_steps",
                                        control=Control("Sampling steps", 1, 100, 1))] = Field(
        None, ge=1, le=MAX_STEPS,
        description="Sampling steps (the paper's: 50; the default model, a distilled student: 3).")
    guidance: Annotated[float | None, Option("--guidance", "W", call="max_guidance_scale",
                                             control=Control("Guidance (max CFG weight)", 1.0, 10.0, 0.5))] = Field(
        None, ge=0.0, le=MAX_GUIDANCE,
        description="Maximum CFG weight, reached at the last frame; 1 or less: no CFG (the paper's: 5).")
    min_guidance: Annotated[float | None, Option("--min-guidance", "W", call="min_guidance_scale",
                                                 control=Control("Guidance at the first frame", 1.0, 10.0, 0.5))] = Field(
        None, ge=0.0, le=MAX_GUIDANCE,
        description="CFG weight at the first frame (the paper's: 1).")
    scheduler: Annotated[Literal[SCHEDULER_NAMES] | None, Option(
        "--scheduler", "NAME", call="scheduler", control=Control("Sampler"))] = Field(
        None, description="Sampler: euler (the paper's), edm-euler, dpmpp-2m or dpmpp-3m (DPM-Solver++, fewer steps) "
                          "[default: the model's own scheduler].")
    warp_init_sigma: Annotated[float | None, Option(
        "--warp-init-sigma", "SIGMA", call="warp_init_sigma",
        control=Control("Start from the drag-warped first frame at noise level σ (empty: the model's setting)"))] = Field(
        None, ge=0.0, le=1000.0,
        description="Start sampling from the first frame warped along the drags at this noise level (not in the "
                    "paper; 0: the paper's sampling from pure noise) [default: the model's setting; the shipped "
                    "model's is 2].")
    detail_transfer_radius: Annotated[float | None, Option(
        "--detail-transfer-radius", "CELLS", call="detail_transfer_radius",
        control=Control("Detail transfer radius in latent cells (empty: the model's setting)"))] = Field(
        None, ge=0.0, le=1000.0,
        description="Add the input's detail lost by the VAE back to every frame, moved along the drags with this "
                    "radius in latent cells (not in the paper; 0: decode as the paper does) [default: the model's "
                    "setting; the shipped model's is 1].")
    chroma_anchor_sigma: Annotated[float | None, Option(
        "--chroma-anchor-sigma", "PX", call="chroma_anchor_sigma",
        control=Control("Chroma anchoring: input colour above this scale in pixels (empty: the model's setting)"))] = Field(
        None, ge=0.0, le=1024.0,
        description="Take every frame's colour coarser than a Gaussian of this many pixels from the input moved along "
                    "the drags; brightness and fine colour stay the model's (not in the paper; 0: the generated "
                    "colour) [default: the model's setting; the shipped model's is 8].")
    size: Annotated[int, Option("--size", "PX", where=(ANIMATE, DEMO))] = Field(
        256, ge=8, description="Side of the square the model works at, in pixels (at most "
                               "PUPPET_MASTER_MAX_MODEL_SIDE, 1024 by default).")
    compile_unet: Annotated[bool, Option("--compile", where=(ANIMATE,))] = Field(
        False, description="torch.compile the UNet (one-off compile: tens of seconds on a GPU, minutes on a CPU; then "
                           "faster steps) and, on a GPU, replay each step from a CUDA graph.")

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        check_model_side(value, "--size")
        return value


class DragAnythingOptions(MethodOptions):
    """DragAnything's options (Wu et al. 2024; README "DragAnything"): the release's sampling settings."""

    method: ClassVar[str] = "draganything"
    label: ClassVar[str] = "DragAnything"

    steps: Annotated[int, Option("--steps", "N", call="num_inference_steps",
                                 control=Control("Sampling steps", 1, 100, 1))] = Field(
        25, ge=1, le=MAX_STEPS, description="Euler sampling steps.")
    guidance: Annotated[float, Option("--guidance", "W", call="max_guidance_scale",
                                      control=Control("Guidance (max CFG weight)", 1.0, 10.0, 0.5))] = Field(
        3.0, ge=0.0, le=MAX_GUIDANCE, description="Maximum CFG weight, reached at the last frame.")
    min_guidance: Annotated[float, Option("--min-guidance", "W", call="min_guidance_scale",
                                          control=Control("Guidance at the first frame", 1.0, 10.0, 0.5))] = Field(
        1.0, ge=0.0, le=MAX_GUIDANCE, description="CFG weight at the first frame.")
    scheduler: Annotated[Literal[SCHEDULER_NAMES] | None, Option(
        "--scheduler", "NAME", call="scheduler", control=Control("Sampler"))] = Field(
        None, description="Sampler: euler (the release's), edm-euler, dpmpp-2m or dpmpp-3m (DPM-Solver++) "
                          "[default: the model's own scheduler].")
    resolution: Annotated[str, Option("--resolution", "WxH", where=(ANIMATE, EVALUATE, DEMO))] = Field(
        "576x320", description="The size the model works at, in pixels (the release's weights: 576x320).")
    masks: Annotated[list[Path], Option("--mask", "FILE", where=(ANIMATE,))] = Field(
        default_factory=list,
        description="An entity mask image of the input's size (white = entity); repeat per entity. A drag moves the "
                    "smallest mask containing its start. Without masks each drag's entity is segmented.")
    segmenter: Annotated[Literal[SEGMENTERS], Option("--segmenter", "NAME", where=(ANIMATE,))] = Field(
        "grabcut", description="Without --mask: grabcut (offline), or sam (needs segment-anything and "
                               "--sam-checkpoint).")
    sam_checkpoint: Annotated[Path | None, Option("--sam-checkpoint", "FILE", where=(ANIMATE,))] = Field(
        None, description="A local SAM checkpoint for --segmenter sam.")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str) -> str:
        width, height = parse_resolution(value)
        return f"{width}x{height}"

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of :attr:`resolution`."""
        return parse_resolution(self.resolution)


#: ``animate --method NAME`` → its options.
METHODS: dict[str, type[MethodOptions]] = {cls.method: cls for cls in (PuppetMasterOptions, DragAnythingOptions)}


def is_given(value: Any) -> bool:
    """Whether a flag's value was given (``None`` and an empty list mean it was not)."""
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def owners(name: str, classes: Iterable[type[MethodOptions]], where: str) -> list[type[MethodOptions]]:
    """The classes among ``classes`` that have option ``name`` at ``where``."""
    return [cls for cls in classes if name in cls.options(where)]


def describe(info: FieldInfo) -> str:
    """The valid values of a field in words: ``"a whole number from 1 to 1000"``, ``"a finite number >= 0"``."""
    annotation = info.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if get_origin(annotation) is not None and len(args) == 1 else annotation
    if get_origin(base) is Literal:
        return "one of " + ", ".join(map(str, get_args(base)))
    kind = {int: "a whole number", float: "a finite number", bool: "true or false"}.get(base, f"a {getattr(base, '__name__', base)}")
    low = high = None
    # pydantic keeps the constraints of Field(ge=..., ...) as annotated-types objects with one
    # attribute each (Ge.ge, Gt.gt, Le.le, Lt.lt); read them by attribute, not by class.
    for m in info.metadata:
        for attr, op in (("ge", ">="), ("gt", ">")):
            if getattr(m, attr, None) is not None:
                low = (op, getattr(m, attr))
        for attr, op in (("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                high = (op, getattr(m, attr))
    if low and high and low[0] == ">=" and high[0] == "<=":
        return f"{kind} from {_number(low[1])} to {_number(high[1])}"
    bounds = [f"{bound[0]} {_number(bound[1])}" for bound in (low, high) if bound]
    return " ".join([kind, " and ".join(bounds)]) if bounds else kind


def _number(value: float) -> str:
    """A bound as written in a message: whole numbers in full (4294967295), others as ``%g``."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"
