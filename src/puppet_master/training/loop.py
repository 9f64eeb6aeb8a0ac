"""The one optimizer-step loop of every trainer in the package (docs/design.md §5–6).

:class:`~puppet_master.training.Trainer` (accelerate, the drag UNet, EDM loss or consistency
distillation), the embedded default model's in-memory recipe
(:func:`~puppet_master.training.recipe.train_unet_in_memory`) and the VAE trainers
(:func:`~puppet_master.training.vae.train_vae`, :func:`~puppet_master.training.vae.train_vae_fast`)
all run :class:`TrainingLoop`. It owns what they share:

* **the step budget**: a fixed number of optimizer steps, or as many as fit a wall-clock
  budget (timed over the first steps, then fixed: ``LoopReport.steps_planned``; a rerun that
  passes that number repeats the schedule), and a hard stop when the budget runs out;
* **the learning rate**: a torch/diffusers scheduler stepped once per optimizer step, or a
  factor ``lr_at(step, planned_steps)`` of each group's base rate;
* **the non-finite policy** (one for all trainers): a micro-batch whose loss is NaN or
  infinite contributes no gradient; an optimizer step without a finite micro-batch changes
  no weight (no optimizer, EMA or target update) but counts as a step, so a position-based
  data stream stays aligned; ``max_nonfinite`` such micro-batches in a row stop the run with
  :class:`~puppet_master.errors.TrainingDiverged`, naming the last saved step. Under data
  parallelism the processes agree (a loss non-finite on any process is skipped on all);
* gradient accumulation and clipping (through accelerate when an ``Accelerator`` is given),
  the EMA step, a hook after every update (e.g. a consistency target network);
* **periodic saving** every ``save_every_steps`` steps and/or ``save_every_s`` seconds, and
  once at the end; logging every ``log_every`` steps; a progress bar.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..errors import TrainingDiverged

#: Consecutive non-finite micro-batches that stop a run (the policy in the module docstring).
MAX_NONFINITE = 20


@dataclass
class LoopSettings:
    """How long a :class:`TrainingLoop` runs and when it saves and logs.

    Attributes:
        steps: the optimizer step to stop at (counted from 0, so a resumed run passes the
            same number), or ``None`` to plan it from ``budget_s``.
        start_step: the step a resumed run starts from.
        budget_s: wall-clock seconds; the run stops when they are spent even if steps are left.
        grad_clip: clip the global gradient norm to this (``None``: no clipping).
        max_nonfinite: consecutive non-finite micro-batches that stop the run.
        save_every_steps, save_every_s: periodic saving (either, both or neither); the loop
            also saves once at the end unless the last step was just saved.
        log_every: call ``on_log`` every this many steps.
        timing_steps: steps timed (after two warm-up steps) to plan ``steps`` from ``budget_s``.
        progress: description of a progress bar, or ``None`` for none.
    """

    steps: int | None
    start_step: int = 0
    budget_s: float = math.inf
    grad_clip: float | None = 1.0
    max_nonfinite: int = MAX_NONFINITE
    save_every_steps: int | None = None
    save_every_s: float | None = None
    log_every: int = 25
    timing_steps: int = 10
    progress: str | None = None


@dataclass
class LoopReport:
    """What :meth:`TrainingLoop.run` did.

    ``losses`` holds one mean loss per optimizer step (over its micro-batches and, with
    several processes, over the processes); ``stats`` the last step's extra figures;
    ``skipped_steps`` the steps that changed no weight because no micro-batch was finite.
    """

    steps_planned: int | None = None
    steps_done: int = 0
    final_step: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    skipped_steps: int = 0
    last_saved_step: int | None = None

    @property
    def recent_loss(self) -> float:
        """Mean loss of the last 50 steps (NaN if none ran)."""
        tail = [x for x in self.losses[-50:] if math.isfinite(x)]
        return sum(tail) / len(tail) if tail else float("nan")


class TrainingLoop:
    """Runs optimizer steps over a stream of batches (module docstring: budget, learning rate, non-finite policy, saving).

    Args:
        model: the trained module (accelerate-prepared when ``accelerator`` is given).
        optimizer: its optimizer (prepared likewise).
        settings: :class:`LoopSettings`.
        params: the parameters clipped and averaged into the EMA (default: the model's
            trainable parameters).
        lr_scheduler: stepped once per optimizer step (a torch/diffusers scheduler).
        lr_at: ``f(step, planned_steps or None) -> factor``; each group's learning rate is its
            base rate times the factor (the base rate is the group's ``lr`` when the loop starts).
        ema: an object with ``step(parameters)`` (diffusers ``EMAModel``), stepped after each update
            with ``ema_params`` (default: ``params``; pass the list the EMA was built over).
        accelerator: an ``accelerate.Accelerator``: accumulation, backward, clipping, gathering.
        after_update: ``f(step)`` after each optimizer step that changed the weights.
        on_log: ``f(step, record)`` every ``log_every`` steps; ``record`` holds ``loss`` (mean
            over the last ``log_every`` steps), ``lr``, ``seconds`` and the loss function's stats.
        on_save: ``f(step)`` for periodic and final saves.
        on_step_end: ``f(step, mean_loss, seconds)`` after every optimizer step (validation, trackers).
        describe_save: ``f(step) -> str`` naming a saved step in the divergence message
            (default ``"step N"``).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: LoopSettings, *,
                 params: Iterable[torch.nn.Parameter] | None = None, lr_scheduler=None,
                 lr_at: Callable[[int, int | None], float] | None = None, ema=None,
                 ema_params: Iterable[torch.nn.Parameter] | None = None, accelerator=None,
                 after_update: Callable[[int], None] | None = None,
                 on_log: Callable[[int, dict], None] | None = None, on_save: Callable[[int], None] | None = None,
                 on_step_end: Callable[[int, float, float], None] | None = None,
                 describe_save: Callable[[int], str] | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.settings = settings
        self.params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.lr_scheduler = lr_scheduler
        self.lr_at = lr_at
        self.ema = ema
        self.ema_params = list(ema_params) if ema_params is not None else self.params
        self.describe_save = describe_save or (lambda step: f"step {step}")
        self.acc = accelerator
        self.after_update = after_update
        self.on_log = on_log
        self.on_save = on_save
        self.on_step_end = on_step_end
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    # ------------------------------------------------------------------ pieces
    def _accumulate(self):
        return self.acc.accumulate(self.model) if self.acc is not None else contextlib.nullcontext()

    def _sync(self) -> bool:
        return self.acc.sync_gradients if self.acc is not None else True

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all().float().reshape(1)
        if self.acc is not None and self.acc.num_processes > 1:
            finite = self.acc.reduce(finite.to(self.acc.device), reduction="sum") / self.acc.num_processes
        return bool(finite.item() == 1.0)

    def _mean_over_processes(self, value: float) -> float:
        if self.acc is None or self.acc.num_processes == 1:
            return value
        t = torch.tensor([value], device=self.acc.device)
        return float(self.acc.gather(t).mean())

    def _set_lr(self, step: int, planned: int | None) -> None:
        if self.lr_at is None:
            return
        factor = self.lr_at(step, planned)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def _current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _sync_device(self) -> None:
        device = self.acc.device if self.acc is not None else next(iter(self.params)).device if self.params else None
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    # ------------------------------------------------------------------ run
    def run(self, batches: Iterable[Any], compute_loss: Callable[[Any], tuple[torch.Tensor, dict]]) -> LoopReport:
        """Take optimizer steps until the planned step, the budget or the batches run out.

        Args:
            batches: micro-batches (``gradient_accumulation_steps`` of them per optimizer
                step with an accelerator; one otherwise). An endless iterator is fine.
            compute_loss: ``f(batch) -> (scalar loss, stats dict of floats)``; runs under the
                accelerator's autocast when there is one.

        Returns:
            :class:`LoopReport`.

        Raises:
            TrainingDiverged: ``max_nonfinite`` consecutive non-finite micro-batches.
        """
        s = self.settings
        t0 = time.perf_counter()
        report = LoopReport(steps_planned=s.steps, final_step=s.start_step,
                            last_saved_step=s.start_step if s.start_step > 0 else None)  # a resumed run's checkpoint
        step, planned = s.start_step, s.steps
        streak, step_losses, finite_in_step = 0, [], 0
        last_save_t, t_timing = time.perf_counter(), None
        window: list[float] = []
        bar = tqdm(total=planned, initial=step, desc=s.progress, disable=s.progress is None or not self._is_main())

        def out_of_time() -> bool:
            return time.perf_counter() - t0 > s.budget_s

        iterator = iter(batches)
        while (planned is None or step < planned) and not out_of_time():
            self._set_lr(step, planned)
            try:
                batch = next(iterator)
            except StopIteration:
                break
            with self._accumulate():
                autocast = self.acc.autocast() if self.acc is not None else contextlib.nullcontext()
                with autocast:
                    loss, stats = compute_loss(batch)
                finite = self._all_finite(loss)
                if finite:
                    streak = 0
                    finite_in_step += 1
                    step_losses.append(float(loss.detach().float()))
                    if self.acc is not None:
                        self.acc.backward(loss)
                    else:
                        loss.backward()
                else:
                    streak += 1
                    if streak >= s.max_nonfinite:
                        bar.close()
                        saved = report.last_saved_step
                        raise TrainingDiverged(
                            f"loss became {float(loss.detach().float())} at step {step + 1} ({streak} non-finite "
                            f"batch{'es' if streak > 1 else ''} in a row); stopped. Last saved: "
                            f"{self.describe_save(saved) if saved is not None else 'none (nothing was saved yet)'}. "
                            "Lower the learning rate or use bf16/fp32.")
                sync = self._sync()
                if sync:
                    if finite_in_step:
                        if s.grad_clip:
                            if self.acc is not None:
                                self.acc.clip_grad_norm_(self.params, s.grad_clip)
                            else:
                                torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip)
                        self.optimizer.step()
                    if self.lr_scheduler is not None:
                        self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            if not sync:
                continue
            step += 1
            updated = finite_in_step > 0
            mean_loss = self._mean_over_processes(sum(step_losses) / len(step_losses) if step_losses else float("nan"))
            finite_in_step, step_losses = 0, []
            if updated:
                if self.ema is not None:
                    self.ema.step(self.ema_params)
                if self.after_update is not None:
                    self.after_update(step)
            else:
                report.skipped_steps += 1
            report.losses.append(mean_loss)
            report.stats = stats
            window.append(mean_loss)
            bar.update()
            if math.isfinite(mean_loss):
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{self._current_lr():.2e}")
            # plan the step count from the budget once the speed is known
            if planned is None and step == s.start_step + 2:
                self._sync_device()
                t_timing = time.perf_counter()
            elif planned is None and step == s.start_step + 2 + s.timing_steps and t_timing is not None:
                self._sync_device()
                per_step = (time.perf_counter() - t_timing) / s.timing_steps
                left = s.budget_s - (time.perf_counter() - t0)
                planned = max(step + 1, step + int(0.97 * left / per_step))
                report.steps_planned = planned
                bar.total = planned
                if self.on_log is not None:
                    self.on_log(step, {"event": "planned", "steps": planned, "s_per_step": per_step})
            if self.on_log is not None and step % s.log_every == 0:
                finite_window = [x for x in window if math.isfinite(x)]
                record = {"loss": sum(finite_window) / len(finite_window) if finite_window else float("nan"),
                          "lr": self._current_lr(), "seconds": time.perf_counter() - t0, **stats}
                self.on_log(step, record)
                window = []
            if self.on_step_end is not None:
                self.on_step_end(step, mean_loss, time.perf_counter() - t0)
            due_steps = s.save_every_steps is not None and step % s.save_every_steps == 0
            due_time = s.save_every_s is not None and time.perf_counter() - last_save_t > s.save_every_s
            if self.on_save is not None and (due_steps or due_time) and (planned is None or step < planned):
                self.on_save(step)
                report.last_saved_step = step
                last_save_t = time.perf_counter()
        bar.close()
        report.final_step = step
        report.steps_done = step - s.start_step
        if self.on_save is not None and report.last_saved_step != step and report.steps_done > 0:
            self.on_save(step)
            report.last_saved_step = step
        report.seconds = time.perf_counter() - t0
        return report

    def _is_main(self) -> bool:
        return self.acc.is_local_main_process if self.acc is not None else True
