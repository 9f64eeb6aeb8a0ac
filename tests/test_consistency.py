"""Consistency distillation (training/consistency.py, docs/design.md §5): the grid, the teacher's ODE step, the target."""

import copy

import pytest
import torch

from puppet_master.errors import UserInputError
from puppet_master.pipelines import build_components
from puppet_master.training import load_config
from puppet_master.training.consistency import (ConsistencyDistillation, DistillSettings, edm_denoiser,
                                                guided_denoiser, pseudo_huber, sample_distill_draws, sigma_grid)


@pytest.fixture(scope="module")
def tiny():
    comps = build_components("tiny", seed=0, with_image_encoder=False)
    return comps["unet"].eval(), comps["scheduler"]


def _inputs(unet, b=2, n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 4, size, size, generator=g)
    image = torch.randn(b, 4, size, size, generator=g)
    dim = unet.config.cross_attention_dim
    emb = torch.randn(b, 1, dim, generator=g)
    drags = torch.zeros(b, n, unet.config.num_drags, 4)
    drags[:, :, 0] = torch.tensor([0.3, 0.4, 0.3, 0.4])
    drags[:, :, 0, 2] += torch.linspace(0, 0.3, n)
    return x, image, emb, drags


def test_the_grid_is_the_schedulers_own_karras_schedule(tiny):
    _, scheduler = tiny
    scheduler.set_timesteps(12)
    torch.testing.assert_close(sigma_grid(scheduler, 12), scheduler.sigmas[:-1].float())
    capped = sigma_grid(scheduler, 8, sigma_max=2.0)
    assert capped.shape == (8,) and capped[0].item() == pytest.approx(2.0) and capped[-1].item() == pytest.approx(0.002)
    assert bool((capped[:-1] > capped[1:]).all())
    with pytest.raises(UserInputError, match="sigma_max"):
        sigma_grid(scheduler, 8, sigma_max=0.001)


def test_the_student_samples_the_longer_schedule_without_its_sigma_min_call(tiny):
    """N student steps = the σ's of the (N+1)-step schedule less the last (σ_min, where f(x, σ_min) ≈ x), then 0."""
    from types import SimpleNamespace

    from puppet_master.training.consistency import student_settings

    _, teacher = tiny
    for steps in (2, 3, 4, 8):
        settings = student_settings(SimpleNamespace(sigma_max=2.0, sampler_steps=steps), teacher)
        assert settings["num_inference_steps"] == steps and settings["max_guidance_scale"] == 1.0
        student = settings["scheduler"]
        student.set_timesteps(steps)
        longer = type(teacher).from_config(teacher.config, sigma_max=2.0)
        longer.set_timesteps(steps + 1)
        assert len(student.sigmas) == steps + 1 and student.sigmas[-1] == 0
        torch.testing.assert_close(student.sigmas[:-1], longer.sigmas[:steps], rtol=1e-5, atol=1e-7)
        assert longer.sigmas[steps].item() == pytest.approx(teacher.config.sigma_min)  # the call skipped
    # one step: from σ_max straight to 0; the teacher's scheduler is not changed
    one = student_settings(SimpleNamespace(sigma_max=2.0, sampler_steps=1), teacher)["scheduler"]
    one.set_timesteps(1)
    assert one.sigmas.tolist() == pytest.approx([2.0, 0.0]) and teacher.config.sigma_min == pytest.approx(0.002)


def test_the_teacher_step_is_one_step_of_the_pipelines_guided_euler_sampler(tiny):
    """The distillation's teacher solver equals diffusers' EulerDiscreteScheduler step on CFG-combined outputs.

    In float64 (diffusers' step itself computes in float32): a random tiny UNet amplifies float32
    rounding of its input (1e-9) a thousandfold, which would hide what is compared here, the formulas.
    """
    unet, scheduler = tiny
    unet = copy.deepcopy(unet).double()
    x, image, emb, drags = (t.double() for t in _inputs(unet))
    w = torch.linspace(1.0, 5.0, x.shape[1], dtype=torch.float64)
    scheduler.set_timesteps(10)
    i = 3
    t, s_hi, s_lo = scheduler.timesteps[i], scheduler.sigmas[i].double(), scheduler.sigmas[i + 1].double()
    # what the pipeline does at step i (v-prediction outputs combined per frame, then scheduler.step);
    # the scheduler finds its step index from the timestep
    model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
    with torch.no_grad():
        out = unet(model_in, t.double().expand(4), image_latents=torch.cat([torch.zeros_like(image), image]),
                   encoder_hidden_states=torch.cat([torch.zeros_like(emb), emb]),
                   drags=torch.cat([torch.zeros_like(drags), drags])).sample
    uncond, cond = out.chunk(2)
    expected = scheduler.step(uncond + w[None, :, None, None, None] * (cond - uncond), t, x).prev_sample

    distill = ConsistencyDistillation(unet, unet, scheduler, DistillSettings(grid_steps=10), seed=0, num_frames=3)
    distill.frame_guidance = w
    got = distill.teacher_step(x, s_hi.expand(2), s_lo.expand(2), image, emb, drags)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and it is a real step: far from the input
    assert (got - x).abs().mean() > 0.1


def test_guided_denoiser_is_the_conditional_one_at_guidance_one(tiny):
    unet, _ = tiny
    unet = copy.deepcopy(unet).double()  # float64: batch composition changes float32 kernels' rounding
    x, image, emb, drags = (t.double() for t in _inputs(unet))
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    with torch.no_grad():
        cond = edm_denoiser(unet, x, sigma, image, emb, drags)
        guided = guided_denoiser(unet, x, sigma, image, emb, drags, torch.ones(3, dtype=torch.float64))
        strong = guided_denoiser(unet, x, sigma, image, emb, drags, torch.full((3,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(guided, cond, atol=1e-9, rtol=1e-9)
    assert (strong - cond).abs().max() > 1e-3


def test_the_loss_trains_the_student_and_leaves_teacher_and_target_alone(tiny):
    teacher, scheduler = tiny
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    x, image, emb, drags = _inputs(teacher)
    batch = {"latents": x, "image_latents": image, "embedding": emb, "drags": drags, "key": torch.tensor([0, 1])}
    distill = ConsistencyDistillation(teacher, student, scheduler, DistillSettings(grid_steps=40), 0, 3)
    loss, stats = distill.loss(student, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0 and stats["sigma_hi"] > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in [*teacher.parameters(), *distill.target.parameters()])
    # draws depend on (seed, key) only
    a, b = sample_distill_draws(torch.tensor([5, 9]), 0, (2,), 7), sample_distill_draws(torch.tensor([9]), 0, (2,), 7)
    assert a[0][1] == b[0][0] and torch.equal(a[1][1], b[1][0]) and bool((a[0] < 7).all())


def test_target_network_averages_the_student_and_round_trips(tiny, tmp_path):
    unet, scheduler = tiny
    student = build_components("tiny", seed=1, with_image_encoder=False)["unet"]
    distill = ConsistencyDistillation(unet, unet, scheduler, DistillSettings(target_ema_decay=0.75), 0, 3)
    before = [p.detach().clone() for p in distill.target.parameters()]
    distill.after_update(student)
    for b, t, s in zip(before, distill.target.parameters(), student.parameters()):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)
    distill.save(tmp_path)
    other = ConsistencyDistillation(unet, unet, scheduler, DistillSettings(), 0, 3)
    other.load(tmp_path)
    for a, b in zip(distill.target.parameters(), other.target.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(UserInputError, match="no consistency_target"):
        other.load(tmp_path / "nowhere")


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away():
    a = torch.zeros(1, 4, dtype=torch.float64)
    small, large = torch.full((1, 4), 1e-5, dtype=torch.float64), torch.full((1, 4), 10.0, dtype=torch.float64)
    assert pseudo_huber(small, a, 1e-3).item() == pytest.approx(0.5 * 1e-10 / 1e-3, rel=1e-3)
    assert pseudo_huber(large, a, 1e-3).item() == pytest.approx(10.0 - 1e-3, rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["objective=consistency"], "model.init=checkpoint"),
    (["objective=consistency", "model.init=checkpoint", "model.pretrained=x", "distill.skip=50"], "distill.skip"),
    (["distill.solver=rk4"], "distill.solver"),
])
def test_distillation_config_errors(overrides, message):
    with pytest.raises(UserInputError, match=message):
        load_config(None, overrides)


def test_teacher_and_student_must_match(tiny):
    unet, scheduler = tiny
    other = build_components("tiny", seed=0, with_image_encoder=False, num_drags=3)["unet"]
    with pytest.raises(UserInputError, match="same configuration"):
        ConsistencyDistillation(unet, other, scheduler, DistillSettings(), 0, 3)


@pytest.mark.slow
def test_a_distilled_tiny_student_at_2_steps_is_closer_to_the_50_step_teacher(tiny_pipeline_dir, tmp_path, capsys):
    """End to end on CPU: ``puppet-master train`` with ``objective=consistency`` distils the tiny pipeline; the
    exported student states its sampling (4 steps, no CFG, 2 ≥ σ > σ_min) and ``animate --model STUDENT`` uses it; at 2
    steps it lands closer to the teacher's 50-step, CFG-guided result (same noise, warped start at σ = 2) than the
    teacher itself at 2 steps, with or without CFG: on average over 6 inputs and on at least 5 of them."""
    import numpy as np
    import PIL.Image

    from puppet_master.cli import main
    from puppet_master.drags import DragSet
    from puppet_master.pipelines import PuppetMasterPipeline

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(["train", "-q", f"output_dir={run}", "max_steps=60", "objective=consistency", "model.init=checkpoint",
              f"model.pretrained={tiny_pipeline_dir}", f"model.components={tiny_pipeline_dir}", "data.num_frames=3",
              "data.batch_size=4", "log_with=none", "checkpoint_every=100000", "use_ema=true", "ema_decay=0.5",
              "cond_dropout_prob=0", "optim.lr=3e-3", "optim.lr_scheduler=constant", "distill.sigma_max=2.0",
              "distill.grid_steps=16", "distill.skip=2",
              "data.sources=[{type: synthetic, num_clips: 32, latent_size: 8, embedding_dim: 32}]"])
    assert done.value.code == 0, capsys.readouterr().err
    student = PuppetMasterPipeline.from_pretrained(run / "pipeline")
    teacher = PuppetMasterPipeline.from_pretrained(tiny_pipeline_dir)
    assert student.sampling_settings()["num_inference_steps"] == 4
    assert student.sampling_settings()["max_guidance_scale"] == 1.0 and student.scheduler.config.sigma_max == 2.0
    assert student.scheduler.config.sigma_min > teacher.scheduler.config.sigma_min  # no call at σ_min
    # the teacher's best 2-step try: on the student's schedule (σ ≤ 2), with and without its CFG
    teacher_short = PuppetMasterPipeline(**{**teacher.components, "scheduler": student.scheduler})
    far = {"student": [], "teacher": [], "teacher, no CFG": []}
    for i in range(6):
        image = PIL.Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        drags = DragSet.from_pairs([((20 + i, 20), (40, 30 + i))], 64, 64, num_frames=3)

        def sample(pipe, steps, guidance, seed=i):
            return pipe(image, drags, num_frames=3, height=64, width=64, num_inference_steps=steps,
                        max_guidance_scale=guidance, warp_init_sigma=2.0, output_type="latent",
                        generator=torch.Generator().manual_seed(seed)).frames

        reference = sample(teacher, 50, 5.0)
        for name, latents in (("student", sample(student, 2, None)), ("teacher", sample(teacher_short, 2, 5.0)),
                              ("teacher, no CFG", sample(teacher_short, 2, 1.0))):
            far[name].append((latents - reference).pow(2).mean().item())
    rounded = {k: [round(x, 4) for x in v] for k, v in far.items()}
    for other in ("teacher", "teacher, no CFG"):
        # closer on average, and on at least 5 of the 6 inputs: single inputs can be within float rounding of a tie
        # (one was 0.3 % the other way on an Intel Xeon where an AMD EPYC gave 6 of 6)
        assert np.mean(far["student"]) < np.mean(far[other]), rounded
        assert sum(s < t for s, t in zip(far["student"], far[other])) >= 5, rounded
    # a checkpoint exported by hand states the same sampling as the run's own export
    with pytest.raises(SystemExit) as done:
        main(["export-checkpoint", str(run / "checkpoints" / "step-00000060"), "--base", str(tiny_pipeline_dir),
              "-o", str(tmp_path / "exported")])
    assert done.value.code == 0, capsys.readouterr().err
    exported = PuppetMasterPipeline.from_pretrained(tmp_path / "exported")
    assert exported.sampling_settings() == student.sampling_settings()
    assert exported.scheduler.config.sigma_max == 2.0
    # the student folder is an ordinary model: animate samples it with its own settings
    PIL.Image.new("RGB", (64, 64), (200, 80, 40)).save(tmp_path / "in.png")
    with pytest.raises(SystemExit) as done:
        main(["animate", str(tmp_path / "in.png"), "--drag", "20,20:40,30", "--model", str(run / "pipeline"),
              "--frames", "3", "--size", "64", "-o", str(tmp_path / "v.gif"), "-q"])
    assert done.value.code == 0 and (tmp_path / "v.gif").is_file()
