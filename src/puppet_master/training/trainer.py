"""Fine-tuning the drag UNet with accelerate (paper App. C; docs/design.md §5–6).

One loop for CPU, one GPU and many (DDP via ``accelerate launch``): EDM loss with
``log σ ~ N(p_mean, p_std²)``, weight ``λ(σ) = 1 + 1/σ²`` (optional frame ramp),
classifier-free-guidance dropout of the drags (p = 0.1), mixed precision, gradient
accumulation / clipping / checkpointing, EMA of the weights, periodic checkpoints that
resume exactly, validation videos, TensorBoard logging, export of a pipeline folder.

Determinism: the noise level, noise and dropout of a sample are drawn from a generator
seeded by ``(seed, key)`` where ``key`` is the sample's position in the data stream, so
a resumed run and a data-parallel run reproduce the single-process run.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import math
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader

from .. import edm
from ..drags import DragSet
from ..errors import TrainingDiverged, UserInputError, optional_imports  # noqa: F401  (TrainingDiverged re-exported)
from ..models import UNetDragSpatioTemporalConditionModel
from ..pipelines import PuppetMasterPipeline
from ..pipelines.components import build_components, load_svd_components
from ..pipelines.loading import load_pipeline, resolve_model
from ..pipelines.pipeline_puppet_master import SAMPLING_DEFAULTS
from ..values import parse_json
from ..video import draw_drags, to_uint8_frames, write_video
from .config import OptimConfig, TrainConfig
from .consistency import ConsistencyDistillation, DistillSettings, student_settings
from .data import PositionSampler, build_mixture, collate, steps_to_positions
from .ema_state import (LEGACY_EMA_FILE, custom_pickles, has_legacy_ema, load_ema_state, read_ema_settings,
                        save_ema_state)
from .loop import LoopSettings, TrainingLoop
from .losses import edm_denoising_loss, motion_weights, sample_noise  # noqa: F401  (re-exported)

DRAG_MODULE_MARKERS = (".flow_convs.", ".drag_token_mlps.")


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` returns."""

    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step
    global_step: int = 0
    output_dir: Path | None = None
    pipeline_dir: Path | None = None
    unet: torch.nn.Module | None = None  # the trained (unwrapped, non-EMA) UNet


def edm_loss(unet, batch: dict, config: TrainConfig, frame_weights: torch.Tensor) -> torch.Tensor:
    """EDM training loss of a batch (mean over samples), docs/design.md §5.

    The noise level, noise and dropout flags of each sample come from :func:`sample_noise`
    (a function of ``(config.seed, batch["key"])``); the loss itself is
    :func:`~puppet_master.training.losses.edm_denoising_loss`, with the config's motion
    weighting and the authors' options (``non_first_frame_weight``, ``weight_increasing``,
    ``scale_model_input``; off by default, which is EDM-consistent).
    """
    x = batch["latents"]
    sigma, eps, drop_drags, drop_image = sample_noise(
        batch["key"].cpu(), config.seed, tuple(x.shape[1:]), config.p_mean, config.p_std,
        config.cond_dropout_prob, config.image_dropout_prob,
    )
    return edm_denoising_loss(
        unet, x, batch["image_latents"], batch["embedding"], batch["drags"],
        sigma.to(x.device, x.dtype), eps.to(x.device, x.dtype), drop_drags.to(x.device), drop_image.to(x.device),
        frame_weights, config.motion_weight, config.motion_scale,
        non_first_frame_weight=config.non_first_frame_weight, weight_increasing=config.weight_increasing,
        scale_model_input=config.scale_model_input,
    )


class EDMObjective:
    """The paper's objective (``objective: edm``): :func:`edm_loss` on each batch; no state of its own."""

    def __init__(self, config: TrainConfig, device) -> None:
        self.config = config
        self.frame_weights = edm.frame_weights(config.data.num_frames, config.frame_weight_ramp, device=device)

    def loss(self, unet, batch: dict) -> tuple[torch.Tensor, dict]:
        return edm_loss(unet, batch, self.config, self.frame_weights), {}

    def after_update(self, unet) -> None:
        pass

    def save(self, folder: Path) -> None:
        pass

    def load(self, folder: Path) -> None:
        pass


def build_objective(config: TrainConfig, unet, device):
    """The training objective of ``config.objective``: :class:`EDMObjective` or consistency distillation.

    For ``consistency`` the teacher (``distill.teacher``: a pipeline folder, hub id or
    ``"default"``) is loaded in float32 with its scheduler, and the target network starts
    as a copy of ``unet`` (the student, started from the teacher).

    Raises:
        UserInputError: a teacher that cannot be loaded or does not match the student.
    """
    if config.objective == "edm":
        return EDMObjective(config, device)
    d = config.distill
    teacher_pipe = load_pipeline(d.teacher, device="cpu")
    settings = DistillSettings(grid_steps=d.grid_steps, skip=d.skip, sigma_max=d.sigma_max,
                               min_guidance=d.min_guidance, max_guidance=d.max_guidance, solver=d.solver,
                               target_ema_decay=d.target_ema_decay, loss=d.loss, huber_c=d.huber_c)
    return ConsistencyDistillation(teacher_pipe.unet, unet, teacher_pipe.scheduler, settings, config.seed,
                                   config.data.num_frames).to(device)


def make_optimizer(groups: list[dict], optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer of ``optim.optimizer`` over parameter ``groups``.

    ``adamw8bit`` is bitsandbytes' ``AdamW8bit`` (8-bit optimizer state, CUDA only).

    Raises:
        UserInputError: ``adamw8bit`` asked for but bitsandbytes is not installed.
    """
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    kwargs = dict(lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    if optim.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserInputError(
                "optim.optimizer=adamw8bit needs the bitsandbytes package (pip install bitsandbytes; CUDA GPUs only): "
                "install it or use optim.optimizer=adamw"
            ) from None
        return bnb.optim.AdamW8bit(groups, **kwargs)
    opt_cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(groups, **kwargs)


def check_unet_options(options: dict) -> None:
    """Check ``model.unet`` keys against the drag UNet's constructor arguments.

    Raises:
        UserInputError: a key the constructor does not take (the message names it and
            the closest valid name).
    """
    valid = [n for n in inspect.signature(UNetDragSpatioTemporalConditionModel.__init__).parameters if n != "self"]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; valid keys: {', '.join(valid)}"
            raise UserInputError(f"model.unet.{key} is not an argument of the drag UNet{hint}")


def build_unet(config: TrainConfig) -> UNetDragSpatioTemporalConditionModel:
    """The UNet to train, from scratch, SVD or a previous checkpoint (see :class:`ModelConfig`).

    Raises:
        UserInputError: missing pretrained folder, or a ``model.unet`` key the UNet does
            not take.
    """
    m = config.model
    check_unet_options(m.unet)
    kwargs = dict(m.unet)
    kwargs.setdefault("num_frames", config.data.num_frames)
    kwargs.setdefault("num_drags", config.data.num_drags)
    try:
        if m.init == "scratch":
            unet = UNetDragSpatioTemporalConditionModel(**kwargs)
        elif m.init == "svd":
            svd = UNetSpatioTemporalConditionModel.from_pretrained(m.pretrained, subfolder="unet")
            kwargs.pop("num_frames")
            unet = UNetDragSpatioTemporalConditionModel.from_svd_unet(svd, num_frames=config.data.num_frames, **kwargs)
        else:
            path = Path(resolve_model(m.pretrained) if m.pretrained == "default" else m.pretrained)
            sub = "unet" if (path / "unet" / "config.json").is_file() else None
            # model.unet entries override the saved config (e.g. drag_warp_image_latents: true)
            unet = UNetDragSpatioTemporalConditionModel.from_pretrained(str(path), subfolder=sub, **dict(m.unet))
            for key, value in m.unet.items():
                if unet.config.get(key) != value:
                    raise UserInputError(f"model.unet.{key}={value!r} cannot be applied to a pretrained UNet")
    except (OSError, ValueError) as exc:
        if isinstance(exc, UserInputError):
            raise
        raise UserInputError(f"cannot build the UNet from model.pretrained={m.pretrained!r}: {exc}") from exc
    if m.freeze == "backbone":
        for name, p in unet.named_parameters():
            p.requires_grad_(any(k in f".{name}" for k in DRAG_MODULE_MARKERS))
    return unet


def param_groups(unet, lr: float, drag_lr_scale: float = 1.0) -> list[dict]:
    """Optimizer parameter groups: the backbone at ``lr``, the drag modules at ``lr × drag_lr_scale``.

    Drag modules are the parameters whose names contain ``.flow_convs.`` or
    ``.drag_token_mlps.`` (modulation nets and drag-token MLPs, paper §3.2). Frozen
    parameters are left out; an empty group is dropped. With ``drag_lr_scale == 1`` the
    result is one group holding every trainable parameter (the old behaviour, so resuming
    a checkpoint saved before this option keeps a matching optimizer state).

    Returns:
        list of ``{"params": [...], "lr": float, "name": "backbone" | "drag"}``.
    """
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    if drag_lr_scale == 1.0:
        return [{"params": [p for _, p in trainable], "lr": lr, "name": "all"}]
    drag = [p for n, p in trainable if any(k in f".{n}" for k in DRAG_MODULE_MARKERS)]
    drag_ids = {id(p) for p in drag}
    backbone = [p for _, p in trainable if id(p) not in drag_ids]
    groups = [{"params": backbone, "lr": lr, "name": "backbone"}, {"params": drag, "lr": lr * drag_lr_scale, "name": "drag"}]
    return [g for g in groups if g["params"]]


def load_components(config: TrainConfig, unet) -> dict | None:
    """VAE / image encoder / scheduler for validation and export, or ``None`` if not configured."""
    m = config.model
    source = m.components or (m.pretrained if m.init == "svd" else None)
    if source is None:
        return None
    if source == "tiny":
        comps = build_components("tiny", seed=config.seed)
    elif m.init == "svd" and source == m.pretrained:
        comps = load_svd_components(source)
    else:
        pipe = PuppetMasterPipeline.from_pretrained(source)
        comps = dict(vae=pipe.vae, image_encoder=pipe.image_encoder, feature_extractor=pipe.feature_extractor,
                     scheduler=pipe.scheduler)
        # the source pipeline's sampling settings (model_index.json: warped start, detail transfer, ...) carry over
        comps.update({name: pipe.config[name] for name in SAMPLING_DEFAULTS if pipe.config.get(name) is not None})
    if config.objective == "consistency":
        comps.update(student_settings(config.distill, comps["scheduler"]))
    comps["unet"] = unet
    return comps


def _read_trainer_state(checkpoint: Path) -> int:
    """The ``global_step`` of a checkpoint's ``trainer_state.json``.

    Raises:
        UserInputError: the file is not JSON holding a non-negative integer ``global_step``.
    """
    path = checkpoint / "trainer_state.json"
    try:
        state = parse_json(path.read_bytes(), f"{path}")
        step = state["global_step"]
    except (OSError, UserInputError, TypeError, KeyError):
        step = None
    if type(step) is not int or step < 0:
        raise UserInputError(f"{checkpoint / 'trainer_state.json'} does not hold a step number: not a checkpoint "
                             "of puppet-master train")
    return step


def _check_safetensors_header(path: Path) -> None:
    """Refuse a checkpoint's safetensors file that is missing, truncated or not safetensors (reads the header only).

    Raises:
        UserInputError: naming the file and what is wrong.
    """
    if not path.is_file():
        raise UserInputError(f"{path} is missing: the checkpoint is incomplete; resume from another one")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (OSError, SafetensorError) as exc:
        raise UserInputError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())}): the "
                             "checkpoint is damaged; resume from another one") from None


def _check_resumed_state(optimizer, scheduler, scheduler_keys: set[str], ckpt: Path) -> None:
    """Check the optimizer and LR-scheduler state just loaded from ``ckpt`` (before the first step uses it).

    ``torch.load(weights_only=True)`` keeps code out, not wrong values: a state file may
    hold other keys or values of the wrong type, which would fail (or silently change the
    run) at the first step.

    Args:
        optimizer: the prepared optimizer (its ``param_groups`` after loading).
        scheduler: the wrapped ``torch.optim.lr_scheduler`` object after loading.
        scheduler_keys: the keys of the scheduler's ``state_dict()`` before loading (a loaded
            state may lack some, as one saved by an older torch does, but not add any).

    Raises:
        UserInputError: naming the file, the entry and the fix.
    """
    for i, group in enumerate(optimizer.param_groups):
        for key in ("lr", "initial_lr", "eps", "weight_decay"):
            value = group.get(key)
            if key not in group or (key == "eps" and value is None):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserInputError(f"{ckpt / 'optimizer.bin'}: parameter group {i} has {key}={value!r}, not a finite "
                                     "number >= 0; the checkpoint is damaged: resume from another one")
        betas = group.get("betas")
        if betas is not None and not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise UserInputError(f"{ckpt / 'optimizer.bin'}: parameter group {i} has betas={betas!r}, not two numbers "
                                 "in [0, 1); the checkpoint is damaged: resume from another one")
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                raise UserInputError(f"{ckpt / 'optimizer.bin'}: its {key} of shape {tuple(value.shape)} belongs to a "
                                     f"parameter of shape {tuple(param.shape)}; resume with the model settings the run "
                                     "was trained with")
    extra = sorted(map(str, set(scheduler.state_dict()) - scheduler_keys))
    if extra:
        raise UserInputError(f"{ckpt / 'scheduler.bin'} does not hold this run's learning-rate schedule (unexpected "
                             f"entries: {', '.join(extra)}); resume from another checkpoint")
    for key, value in scheduler.state_dict().items():
        if key in ("last_epoch", "_step_count") and (type(value) is not int or value < -1):
            raise UserInputError(f"{ckpt / 'scheduler.bin'}: {key}={value!r} is not a step number; resume from another "
                                 "checkpoint")
        if key in ("base_lrs", "_last_lr") and not (isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise UserInputError(f"{ckpt / 'scheduler.bin'}: {key}={value!r} is not a list of finite learning rates; "
                                 "resume from another checkpoint")


@dataclass
class _RunState:
    """What the stages of :meth:`Trainer.train` share: the prepared model, optimizer and data."""

    unet: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    ema: EMAModel | None
    dataset: object
    params: list[torch.nn.Parameter]
    param_names: list[str]
    objective: object = None


class Trainer:
    """Runs a :class:`TrainConfig`. ``Trainer(config).train()`` → :class:`TrainResult`."""

    def __init__(self, config: TrainConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.output_dir = Path(config.output_dir)
        log_with = None if config.log_with == "none" else config.log_with
        if log_with == "tensorboard":
            with optional_imports("train"):
                import tensorboard  # noqa: F401 - optional dependency: accelerate's TensorBoard tracker writes with it
        # several processes without CUDA (torchrun / accelerate launch on CPUs): DDP over gloo
        multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(
            cpu=multi_cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
        )

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.checkpoint_root.glob("step-*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

    def _save_checkpoint(self, run: _RunState, step: int) -> Path:
        """accelerate's state (model, optimizer, scheduler, RNG) + the EMA as safetensors/JSON, then renamed into place."""
        acc = self.accelerator
        final = self.checkpoint_root / f"step-{step:08d}"
        tmp = self.checkpoint_root / f".tmp-step-{step:08d}"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if run.ema is not None:
                save_ema_state(run.ema, run.param_names, tmp)
            run.objective.save(tmp)
            (tmp / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in sorted(p for p in self.checkpoint_root.glob("step-*"))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _checkpoint_to_resume(self) -> Path | None:
        """The checkpoint ``config.resume`` names, checked before anything is loaded; ``None`` to start afresh."""
        resume = self.config.resume
        if not resume:
            return None
        ckpt = self.latest_checkpoint() if resume == "latest" else Path(resume)
        if ckpt is None:
            self.accelerator.print(f"no checkpoint in {self.checkpoint_root}: starting from step 0")
            return None
        if not ckpt.is_dir():
            raise UserInputError(f"checkpoint {ckpt} does not exist: give resume=latest or OUTPUT_DIR/checkpoints/step-N")
        if not (ckpt / "trainer_state.json").is_file():
            raise UserInputError(f"{ckpt} is not a complete checkpoint (no trainer_state.json)")
        if has_legacy_ema(ckpt) and self.config.use_ema:
            raise UserInputError(
                f"{ckpt} keeps its EMA in the old pickle format ({LEGACY_EMA_FILE}), which is never loaded because "
                f"unpickling can run code: export its weights with `puppet-master export-checkpoint {ckpt} --base "
                f"BASE -o FOLDER` and train on from FOLDER (model.init=checkpoint model.pretrained=FOLDER)")
        pickles = custom_pickles(ckpt)
        if pickles:
            raise UserInputError(f"{ckpt} holds {', '.join(pickles)}, a pickle this version never loads (it could run "
                                 "code); delete it if the checkpoint is yours, or do not resume from it")
        step = _read_trainer_state(ckpt)
        if step > self.config.last_step:
            which = "stop_at_step" if self.config.stop_at_step else "max_steps"
            raise UserInputError(f"{ckpt} is at step {step}, beyond {which}={self.config.last_step}: there is nothing "
                                 f"to train; raise {which} to train on, or export the checkpoint with "
                                 "`puppet-master export-checkpoint`")
        for name in ("model.safetensors", *(["ema.safetensors"] if self.config.use_ema else [])):
            _check_safetensors_header(ckpt / name)
        if self.config.use_ema:
            read_ema_settings(ckpt)
        return ckpt

    def _resume(self, run: _RunState, ckpt: Path | None) -> int:
        """Load checkpoint ``ckpt`` (from :meth:`_checkpoint_to_resume`) into ``run``; returns its step (0 if ``None``).

        accelerate reads the model from safetensors and the optimizer, scheduler and RNG
        states with ``torch.load(weights_only=True)``; the EMA comes from
        ``ema.safetensors`` + ``ema.json`` (:mod:`.ema_state`). No pickle is unpickled.
        """
        acc = self.accelerator
        if ckpt is None:
            return 0
        start_step = _read_trainer_state(ckpt)
        scheduler = getattr(run.lr_scheduler, "scheduler", run.lr_scheduler)  # accelerate wraps it
        scheduler_keys = set(scheduler.state_dict())
        try:
            acc.load_state(str(ckpt))
        except ValueError as exc:
            if "parameter group" not in str(exc):
                raise UserInputError(f"cannot resume from {ckpt}: {' '.join(str(exc).split())}") from None
            raise UserInputError(
                f"{ckpt} was saved with another optim.drag_lr_scale (its optimizer has a different number "
                f"of parameter groups): resume with the scale it was trained with, or start a new output_dir "
                f"from its exported weights (model.init=checkpoint model.pretrained=FOLDER)") from exc
        except (pickle.UnpicklingError, RuntimeError, OSError, KeyError, EOFError, TypeError, SafetensorError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserInputError(f"cannot resume from {ckpt}: a state file is unreadable or not plain data "
                                 f"({first})") from None
        _check_resumed_state(run.optimizer, scheduler, scheduler_keys, ckpt)
        if run.ema is not None:
            load_ema_state(run.ema, run.param_names, ckpt)
        run.objective.load(ckpt)
        acc.print(f"resumed from {ckpt} at step {start_step}")
        return start_step

    # ------------------------------------------------------------------ loop
    def train(self) -> TrainResult:
        """Train until ``stop_at_step`` (default ``max_steps``); resume first if ``config.resume`` says so.

        Stages: :meth:`_setup` (model, optimizer, EMA, objective, data), :meth:`_resume`,
        :meth:`_loader`, then the optimizer steps of
        :class:`~puppet_master.training.loop.TrainingLoop` (the package's one training loop:
        accumulation, clipping, the non-finite policy, EMA, periodic checkpoints) with
        logging and validation after each step, and :meth:`_finish` (export).

        Raises:
            TrainingDiverged: the loss stayed NaN/inf for ``max_nonfinite_steps`` batches in a
                row (the last good checkpoint is kept and named).
            UserInputError: bad data, model settings or checkpoint.
        """
        cfg, acc = self.config, self.accelerator
        ckpt = self._checkpoint_to_resume()  # a bad resume= fails before the model is built
        run = self._setup()
        start_step = self._resume(run, ckpt)
        loader = self._loader(run, start_step)
        self._start_logging()
        run.unet.train()
        settings = LoopSettings(steps=cfg.last_step, start_step=start_step, grad_clip=cfg.optim.grad_clip,
                                max_nonfinite=cfg.max_nonfinite_steps, save_every_steps=cfg.checkpoint_every,
                                log_every=cfg.log_every,
                                progress="training" if self.progress and acc.is_local_main_process else None)
        loop = TrainingLoop(
            run.unet, run.optimizer, settings, params=run.params, lr_scheduler=run.lr_scheduler, ema=run.ema,
            ema_params=list(acc.unwrap_model(run.unet).parameters()), accelerator=acc,
            after_update=lambda step: run.objective.after_update(acc.unwrap_model(run.unet)),
            on_log=self._log, on_save=lambda step: self._save_checkpoint(run, step),
            on_step_end=lambda step, loss, seconds: self._after_step(run, step),
            describe_save=lambda step: str(self.checkpoint_root / f"step-{step:08d}"),
        )
        report = loop.run(loader, lambda batch: run.objective.loss(run.unet, self._to_device(batch)))
        result = TrainResult(output_dir=self.output_dir, losses=report.losses)
        return self._finish(run, report.final_step, result)

    def _to_device(self, batch: dict) -> dict:
        device = self.accelerator.device
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def _setup(self) -> _RunState:
        """Seed, build the UNet, optimizer, scheduler, EMA, objective and data mixture; prepare them with accelerate."""
        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed)
        unet = build_unet(cfg)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        groups = param_groups(unet, cfg.optim.lr, cfg.optim.drag_lr_scale)
        params = [p for g in groups for p in g["params"]]
        optimizer = make_optimizer(groups, cfg.optim)
        lr_scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                                     num_training_steps=cfg.max_steps)
        ema = None
        if cfg.use_ema:
            ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=UNetDragSpatioTemporalConditionModel,
                           model_config=unet.config)
        names = [n for n, _ in unet.named_parameters()]
        dataset = build_mixture(cfg.data, cfg.seed)
        objective = build_objective(cfg, unet, acc.device)
        unet, optimizer, lr_scheduler = acc.prepare(unet, optimizer, lr_scheduler)
        if ema is not None:
            ema.to(acc.device)  # saved and restored by save_ema_state / load_ema_state, never pickled
        return _RunState(unet, optimizer, lr_scheduler, ema, dataset, params, names, objective)

    def _loader(self, run: _RunState, start_step: int) -> DataLoader:
        """The data stream from ``start_step`` on (positions, not epochs: a resumed run sees the same samples)."""
        cfg, acc = self.config, self.accelerator
        per_step = steps_to_positions(1, cfg.data.batch_size, cfg.gradient_accumulation_steps, acc.num_processes)
        loader = DataLoader(run.dataset, batch_size=cfg.data.batch_size,
                            sampler=PositionSampler(start_step * per_step, max(cfg.last_step - start_step, 0) * per_step),
                            collate_fn=collate, num_workers=cfg.data.num_workers, drop_last=True)
        return acc.prepare_data_loader(loader, device_placement=True) if acc.num_processes > 1 else loader

    def _start_logging(self) -> None:
        """Trackers (TensorBoard / wandb) and ``OUTPUT_DIR/config.json``."""
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process and acc.log_with:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in cfg.model_dump().items()}
            acc.init_trackers("puppet-master", config=flat)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(cfg.model_dump(), indent=1))

    def _log(self, step: int, record: dict) -> None:
        """Send a loop record (loss, lr, seconds, the objective's figures) to the trackers."""
        if self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def _after_step(self, run: _RunState, step: int) -> None:
        """Validation after optimizer step ``step`` (checkpoints and logging are the loop's)."""
        cfg = self.config
        if cfg.validate_every and step % cfg.validate_every == 0:
            self.validate(run.unet, run.ema, run.dataset, step)

    def _finish(self, run: _RunState, step: int, result: TrainResult) -> TrainResult:
        """Export the EMA UNet and pipeline (main process) and close the trackers."""
        acc = self.accelerator
        result.global_step = step
        acc.wait_for_everyone()
        result.unet = acc.unwrap_model(run.unet)
        if acc.is_main_process:
            result.pipeline_dir = self.export(result.unet, run.ema)
        acc.end_training()
        return result

    # ------------------------------------------------------------------ outputs
    def _components(self, unet) -> dict | None:
        """VAE / image encoder / scheduler, loaded once per run, with ``unet`` as the UNet."""
        if not hasattr(self, "_loaded_components"):
            self._loaded_components = load_components(self.config, None)
        if self._loaded_components is None:
            return None
        return {**self._loaded_components, "unet": unet}

    @staticmethod
    @contextlib.contextmanager
    def _with_ema(unet, ema):
        """Swap the EMA weights into ``unet`` for the duration of the block."""
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        try:
            yield unet
        finally:
            if ema is not None:
                ema.restore(unet.parameters())

    def validate(self, unet, ema, dataset, step: int) -> Path | None:
        """Sample one video from the first data item's first frame and drags; write a GIF with the drags."""
        acc = self.accelerator
        if not acc.is_main_process:
            return None
        model = acc.unwrap_model(unet)
        comps = self._components(model)
        if comps is None:
            return None
        item = dataset[0]
        pipe = PuppetMasterPipeline(**comps).to(acc.device)
        pipe.set_progress_bar_config(disable=True)
        # the first frame comes back from its (unscaled) latent through the VAE
        first = item["image_latents"][None, None].to(acc.device) * pipe.vae.config.scaling_factor
        image = ((pipe.decode_latents(first)[0, 0].clamp(-1, 1) + 1) / 2).cpu()
        n = item["drags"].shape[0]
        h, w = image.shape[-2:]
        model.eval()
        with self._with_ema(model, ema):
            frames = pipe(image, item["drags"][None], num_frames=n, height=h, width=w,
                          num_inference_steps=self.config.validation_steps, generator=torch.Generator().manual_seed(0),
                          output_type="np").frames[0]
        model.train()
        video = to_uint8_frames(frames)
        video = draw_drags(video, DragSet.from_tensor(item["drags"], w, h).trajectories)
        out = self.output_dir / "validation" / f"step-{step:08d}.gif"
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_video(video, out, fps=7, overwrite=True)

    def export(self, unet, ema) -> Path | None:
        """Save the EMA UNet (``unet-ema/``) and, with components, a pipeline folder (``pipeline/``)."""
        out = self.output_dir
        if ema is not None:
            ema.save_pretrained(out / "unet-ema")
        if not self.config.export_pipeline:
            return None
        comps = self._components(unet)
        if comps is None:
            return None
        with self._with_ema(unet, ema):
            pipe = PuppetMasterPipeline(**comps)
            tmp = out / ".pipeline-partial"
            if tmp.exists():
                shutil.rmtree(tmp)
            pipe.save_pretrained(tmp)
        final = out / "pipeline"
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final
