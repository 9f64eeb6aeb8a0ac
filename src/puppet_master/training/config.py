"""Training configuration: a YAML file validated with pydantic, plus ``key.sub=value`` overrides."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .. import limits
from ..errors import UserInputError
from ..values import YAMLSyntaxError, parse_yaml


#: Largest whole number a setting may hold (integers beyond it are a typo, and overflow torch and numpy).
MAX_INT_SETTING = 2**63 - 1
#: Seeds seed Python, numpy and torch alike: numpy's legacy generator takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
_NUMBERS = (int, float, int | None, float | None)


class _Strict(BaseModel):
    """Unknown keys, non-finite numbers (``.nan``, ``.inf``) and integers beyond :data:`MAX_INT_SETTING` are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _sane_integers(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_SETTING:
            raise ValueError("is too large for a setting (at most 2**63 - 1)")
        return value


class SourceConfig(_Strict):
    """One data source of the training mixture.

    ``type``:
      * ``synthetic``: generated latent clips (a blob that follows the drags) — tests,
        benchmarks and the tiny recipe; needs no files.
      * ``latent_cache``: a folder written by ``puppet-master cache-latents`` (``*.safetensors``).
      * ``dragamove``: the authors' test-batch format (``*.pkl`` with SVD latents).
    """

    name: str = "data"
    type: Literal["synthetic", "latent_cache", "dragamove"] = "synthetic"
    path: str | None = None
    weight: float = Field(1.0, gt=0)
    min_drag_motion: float = Field(0.0, ge=0, description=(
        "latent_cache only: keep clips whose largest drag moves at least this far from start to last frame "
        "(normalised image units, e.g. 0.04 = 10 px at 256x256)"))
    num_clips: int = Field(64, ge=1, description="synthetic only")
    latent_size: int = Field(8, ge=1, description="synthetic only")
    embedding_dim: int = Field(32, ge=1, description="synthetic only")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.type != "synthetic" and not self.path:
            raise ValueError(f"data source {self.name!r} of type {self.type} needs a 'path'")
        if self.min_drag_motion > 0 and self.type != "latent_cache":
            raise ValueError(f"data source {self.name!r}: min_drag_motion filters latent_cache sources only, "
                             f"not {self.type}")
        return self


class DataConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()])
    num_frames: int = Field(14, ge=2)
    num_drags: int = Field(5, ge=1)
    batch_size: int = Field(1, ge=1, description="per process, per accumulation step")
    num_workers: int = Field(0, ge=0)
    samples_per_epoch: int | None = Field(None, ge=1, description="default: total size of all sources")


class ModelConfig(_Strict):
    """Where the UNet starts from.

    * ``scratch``: random weights with ``unet`` constructor arguments (small configs).
    * ``svd``: ``pretrained`` is an SVD img2vid folder / hub id; its UNet is converted
      (drag modules zero-initialised) and its VAE / image encoder / scheduler are used
      for validation and export.
    * ``checkpoint``: ``pretrained`` is a drag-UNet folder or a pipeline folder (its
      ``unet/``) from an earlier run.
    """

    init: Literal["scratch", "svd", "checkpoint"] = "scratch"
    pretrained: str | None = None
    unet: dict[str, Any] = Field(default_factory=dict)
    components: str | None = Field(None, description="pipeline folder or 'tiny' for VAE/encoder/scheduler (validation, export)")
    freeze: Literal["none", "backbone"] = "none"

    @model_validator(mode="after")
    def _pretrained_needed(self):
        if self.init != "scratch" and not self.pretrained:
            raise ValueError(f"model.init={self.init} needs model.pretrained (a folder or hub id)")
        return self


class OptimConfig(_Strict):
    optimizer: Literal["adamw", "adamw8bit", "adam", "sgd"] = Field("adamw", description=(
        "adamw8bit: bitsandbytes' 8-bit AdamW (optimizer state in 8 bits, ~75 % less optimizer memory; "
        "needs the bitsandbytes package and a CUDA GPU)"))
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="Adam's two moment decays, each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(1.0, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    drag_lr_scale: float = Field(
        1.0, gt=0,
        description="learning rate of the drag modules (modulation nets, drag-token MLPs) = lr × this; "
                    "the zero-initialised drag path of a model trained from scratch learns slowly at the backbone's lr",
    )

    @field_validator("optimizer")
    @classmethod
    def _bitsandbytes_installed(cls, v: str) -> str:
        if v == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("adamw8bit needs the bitsandbytes package (pip install bitsandbytes; CUDA GPUs only); "
                             "install it or use adamw")
        return v


class DistillConfig(_Strict):
    """Consistency distillation (``objective: consistency``; training/consistency.py, docs/design.md §5).

    Not in the Puppet-Master paper: latent consistency distillation (LCM, AnimateLCM) of a
    drag UNet (the *teacher*) into a few-step student that starts from the teacher's weights.
    """

    teacher: str | None = Field(None, description=(
        "pipeline folder, hub id or 'default' of the teacher (its UNet and scheduler); default: model.pretrained"))
    grid_steps: int = Field(50, ge=2, le=1000, description="steps of the teacher scheduler's Karras σ grid")
    skip: int = Field(1, ge=1, description="grid intervals one teacher ODE step covers (LCM's skipping step)")
    sigma_max: float | None = Field(None, gt=0, description=(
        "cap of the grid's largest σ (e.g. the warp_init_sigma the student samples from); default: the scheduler's"))
    min_guidance: float = Field(1.0, ge=0, description="teacher CFG weight at frame 0 (folded into the student)")
    max_guidance: float = Field(5.0, ge=0, description="teacher CFG weight at the last frame")
    solver: Literal["euler", "heun"] = "euler"
    target_ema_decay: float = Field(0.95, ge=0, lt=1, description="μ of the target network (EMA of the student)")
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = Field(0.001, gt=0, description="pseudo-Huber constant (latent units)")
    sampler_steps: int = Field(4, ge=1, le=1000, description=(
        "sampling steps (UNet calls) the exported student pipeline states in model_index.json: the σ's of the "
        "teacher's schedule for one step more, less its last σ_min call (training.consistency.student_settings)"))

    @model_validator(mode="after")
    def _skip_within_grid(self):
        if self.skip >= self.grid_steps:
            raise ValueError(f"distill.skip={self.skip} must be below distill.grid_steps={self.grid_steps}")
        if self.min_guidance > self.max_guidance:
            raise ValueError("distill.min_guidance must not exceed distill.max_guidance")
        return self


class TrainConfig(_Strict):
    """Everything a run needs; see ``configs/*.yaml``."""

    output_dir: str = "runs/puppet-master"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds Python, numpy and torch (0 to 2**32 - 1)")
    max_steps: int = Field(1000, ge=1, description="optimizer steps; also the length of the LR schedule")
    stop_at_step: int | None = Field(None, ge=1, description=(
        "end the run at this step (checkpoint and export there) while the LR schedule keeps max_steps' length"))
    gradient_accumulation_steps: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    cond_dropout_prob: float = Field(0.1, ge=0, le=1, description="CFG: drop all drags of a clip")
    image_dropout_prob: float = Field(0.0, ge=0, le=1, description="CFG: also zero the image latent and embedding")
    p_mean: float = 0.7
    p_std: float = Field(1.6, gt=0)
    frame_weight_ramp: bool = False
    non_first_frame_weight: float = Field(1.0, ge=1, description=(
        "authors' loss option: frames 1..N-1 weigh this much more than frame 0 (1 = off); not renormalised"))
    weight_increasing: bool = Field(False, description=(
        "authors' loss option: with non_first_frame_weight = w, frame weights rise linearly from 1 (frame 0) "
        "to w (last frame) instead of (1, w, ..., w)"))
    scale_model_input: bool = Field(True, description=(
        "feed the UNet c_in·(x + σε) (EDM, as at sampling time); false feeds x + σε unscaled, as the authors' "
        "training script does although their sampler applies c_in"))
    motion_weight: float = Field(0.0, ge=0, description="extra loss weight on moving latent cells (trainer.motion_weights)")
    motion_scale: float = Field(0.25, gt=0, description="latent difference from frame 0 counted as fully moving")
    use_ema: bool = True
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    validate_every: int | None = Field(None, ge=1)
    validation_steps: int = Field(25, ge=1, description="sampling steps of validation videos")
    log_with: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    log_every: int = Field(10, ge=1)
    resume: str | None = Field(None, description="'latest' or a checkpoint folder")
    export_pipeline: bool = True
    max_nonfinite_steps: int = Field(20, ge=1, description=(
        "consecutive batches with a NaN/inf loss that stop the run (each one is skipped: no weight changes)"))
    objective: Literal["edm", "consistency"] = Field("edm", description=(
        "edm: the paper's denoising loss; consistency: distil model.pretrained into a few-step student (distill)"))
    distill: DistillConfig = Field(default_factory=DistillConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)

    @model_validator(mode="after")
    def _stop_within_schedule(self):
        if self.stop_at_step is not None and self.stop_at_step > self.max_steps:
            raise ValueError(f"stop_at_step={self.stop_at_step} is past max_steps={self.max_steps}")
        return self

    @model_validator(mode="after")
    def _distillation_has_a_teacher(self):
        if self.objective == "consistency":
            if self.model.init != "checkpoint":
                raise ValueError("objective=consistency starts the student from the teacher: set model.init=checkpoint "
                                 "and model.pretrained=<teacher pipeline>")
            if self.distill.teacher is None:
                self.distill.teacher = self.model.pretrained
        return self

    @property
    def last_step(self) -> int:
        """The step the run ends at: ``stop_at_step``, else ``max_steps`` (the LR schedule's length)."""
        return self.stop_at_step or self.max_steps

    @field_validator("output_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("output_dir must not be empty")
        path = Path(v)
        for part in (path, *path.parents):
            if part.exists() and not part.is_dir():
                raise ValueError(f"{str(part)!r} is a file, not a folder: give output_dir a folder (created if missing)")
        return v

    @field_validator("log_with")
    @classmethod
    def _tracker_installed(cls, v: str) -> str:
        package = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(v)
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(f"log_with={v} needs the {package} package (pip install {package}); install it or use "
                             "log_with=none")
        return v


def _set(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in ``tree``; a numeric key indexes a list (``data.sources.0.path``)."""
    keys = dotted.split(".")
    node: Any = tree
    for depth, k in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise UserInputError(f"override {dotted!r}: {k!r} is not an index of a list of {len(node)} entries")
            if last:
                node[int(k)] = value
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            if last:
                node[k] = value
            else:
                node = node.setdefault(k, {})
        else:
            raise UserInputError(f"override {dotted!r}: {keys[depth - 1]!r} is not a section")


#: Largest config file read (a config is a few hundred lines of YAML; :mod:`puppet_master.limits`).
MAX_CONFIG_BYTES = limits.MAX_CONFIG_BYTES


def _read_yaml(path: Path) -> Any:
    """The YAML document of a config file (``None`` when empty).

    Raises:
        UserInputError: not a regular file, larger than :data:`MAX_CONFIG_BYTES`, not UTF-8
            text, not YAML, nested too deeply, holding an overlong integer or more than
            :data:`~puppet_master.limits.MAX_CONFIG_NODES` values once its aliases are
            expanded (:func:`~puppet_master.values.parse_yaml`).
    """
    raw = limits.read_bytes_bounded(path, "config file", MAX_CONFIG_BYTES, "MAX_CONFIG_BYTES")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}): give a YAML file") from None
    return parse_yaml(text, f"config file {str(path)!r}") or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply ``key.sub=value`` overrides (values parsed as YAML).

    Raises:
        UserInputError: missing, oversized or non-UTF-8 file, invalid YAML, malformed
            override, or a value that fails validation (the message names the field and
            the problem).
    """
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise UserInputError(f"config file {str(p)!r} does not exist")
        tree = _read_yaml(p)
        if not isinstance(tree, dict):
            raise UserInputError(f"config file {str(p)!r} must hold a mapping of settings")
    for item in overrides or []:
        if "=" not in item:
            raise UserInputError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw, f"override {key.strip()!r}")
        except YAMLSyntaxError:
            value = raw  # not YAML: the text itself (a string setting)
        _set(tree, key.strip(), value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "finite_number":
            message = "must be a finite number (not .nan or .inf)"
        raise UserInputError(f"invalid config: {where}: {message}") from None
