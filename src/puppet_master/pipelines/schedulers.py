"""Named samplers: diffusers schedulers configured to the model's EDM parameterisation (docs/design.md §5).

Both pipelines sample an EDM model (Karras et al. 2022) with σ_data = 1 and v-prediction: at
noise level σ the UNet sees ``c_in·x = x/√(σ²+1)`` and the time input ``c_noise = ¼ ln σ``,
and the denoised estimate is ``c_skip·x + c_out·F`` (:mod:`puppet_master.edm`). Their loops use
only the scheduler API (``set_timesteps``, ``timesteps``, ``sigmas``, ``init_noise_sigma``,
``scale_model_input``, ``step``, ``step_index``, ``set_begin_index``), so any diffusers
scheduler that gives the UNet those inputs samples these models. :func:`scheduler_from_name`
builds the named choices from a model's own scheduler configuration (its σ_min and σ_max):

=============  ==============================================================================
``euler``      ``EulerDiscreteScheduler`` with SVD's configuration (Karras σ, v-prediction,
               continuous timesteps): the paper's sampler, and the default of released weights.
``edm-euler``  ``EDMEulerScheduler(sigma_data=1, prediction_type="v_prediction", rho=7)``: the
               same Euler steps written in EDM terms (equal latents to float rounding; tested).
``dpmpp-2m``   ``EDMDPMSolverMultistepScheduler``: DPM-Solver++ (Lu et al. 2022), 2nd-order
               multistep, same EDM settings; fewer steps for the same quality.
``dpmpp-3m``   the same, 3rd-order multistep.
=============  ==============================================================================

Heun's 2nd-order method is not offered: diffusers' ``HeunDiscreteScheduler`` has no
continuous-timestep mode. It always hands the UNet the discrete DDPM timestep it
interpolates from its beta schedule (``_sigma_to_t``: 999 for every σ above that schedule's
largest, about 14.6 for SVD's betas, and values in [0, 999] below), never ``c_noise = ¼ ln σ``,
so no configuration gives this UNet the time input it was trained with. (The ``solver_type=
"heun"`` option of the DPM-Solver schedulers is a multistep correction, not Heun's method.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import (
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
)

from ..errors import UserInputError
from .components import SVD_SCHEDULER_CONFIG

#: The named sampler choices, the paper's first.
SCHEDULER_NAMES = ("euler", "edm-euler", "dpmpp-2m", "dpmpp-3m")

#: Karras et al.'s ρ of the σ schedule (``EulerDiscreteScheduler`` has it fixed at 7).
KARRAS_RHO = 7.0


def edm_parameters(config: Mapping[str, Any]) -> dict[str, float]:
    """``sigma_min`` and ``sigma_max`` of a scheduler configuration that samples an EDM v-prediction model.

    Accepts SVD's ``EulerDiscreteScheduler`` configuration (Karras σ, ``v_prediction``,
    ``timestep_type="continuous"``) and the ``EDMEulerScheduler`` /
    ``EDMDPMSolverMultistepScheduler`` ones (``sigma_data=1``, ``v_prediction``, Karras σ with
    ρ = 7), which is what :func:`scheduler_from_name` builds.

    Raises:
        ValueError: a configuration that does not describe that parameterisation (another
            prediction type, discrete timesteps, σ_data ≠ 1, another schedule).
    """
    name = config.get("_class_name", "")
    if config.get("prediction_type") != "v_prediction":
        raise ValueError(f"{name or 'the scheduler'} predicts {config.get('prediction_type')!r}, not v_prediction")
    if "sigma_data" in config:  # diffusers' EDM schedulers
        if float(config["sigma_data"]) != 1.0 or config.get("sigma_schedule", "karras") != "karras" \
                or float(config.get("rho", KARRAS_RHO)) != KARRAS_RHO:
            raise ValueError(f"{name} must have sigma_data=1 and Karras sigmas with rho=7, got {dict(config)}")
    elif not (config.get("use_karras_sigmas") and config.get("timestep_type") == "continuous"):
        raise ValueError(f"{name or 'the scheduler'} is not SVD's EDM Euler scheduler (Karras sigmas, continuous "
                         f"timesteps), got {dict(config)}")
    if config.get("sigma_min") is None or config.get("sigma_max") is None:
        raise ValueError(f"{name or 'the scheduler'} does not state sigma_min and sigma_max")
    return {"sigma_min": float(config["sigma_min"]), "sigma_max": float(config["sigma_max"])}


def scheduler_from_name(name: str, config: Mapping[str, Any]):
    """Build the named sampler for a model whose scheduler configuration is ``config``.

    Args:
        name: one of :data:`SCHEDULER_NAMES` (module docstring).
        config: the model's scheduler configuration (``pipe.scheduler.config``); its σ_min
            and σ_max carry over (:func:`edm_parameters`).

    Returns:
        A new diffusers scheduler, built on the CPU (it keeps its tables there).

    Raises:
        UserInputError: an unknown name (the message lists the choices).
        ValueError: ``config`` is not an EDM v-prediction scheduler configuration.
    """
    if name not in SCHEDULER_NAMES:
        raise UserInputError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULER_NAMES)}")
    sigmas = edm_parameters(config)
    edm = dict(sigma_data=1.0, sigma_schedule="karras", prediction_type="v_prediction", rho=KARRAS_RHO,
               final_sigmas_type="zero", **sigmas)
    with torch.device("cpu"):
        if name == "euler":
            return EulerDiscreteScheduler(**{**SVD_SCHEDULER_CONFIG, **sigmas})
        if name == "edm-euler":
            return EDMEulerScheduler(**edm)
        order = 2 if name == "dpmpp-2m" else 3
        return EDMDPMSolverMultistepScheduler(solver_order=order, algorithm_type="dpmsolver++", **edm)
