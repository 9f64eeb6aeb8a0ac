import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from puppet_master.data.dataset import PAPER_MIXTURE, MixtureDataset
from puppet_master.errors import UserInputError
from puppet_master.training import Trainer, TrainingDiverged, edm_loss, load_config
from puppet_master.training import trainer as trainer_module
from puppet_master.training.data import (LatentCacheDataset, SyntheticDragDataset, collate,
                                         largest_drag_motion)
from puppet_master.training.trainer import motion_weights, sample_noise

HELPER = Path(__file__).parent / "helpers" / "train_and_dump.py"
sys.path.insert(0, str(HELPER.parent))
from train_and_dump import TINY_UNET  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _cfg(tmp_path, *extra):
    return load_config(None, TINY_UNET + [
        f"output_dir={tmp_path / 'run'}", "data.num_frames=3", "data.batch_size=2", "log_with=none",
        "export_pipeline=false", "checkpoint_every=1000", "optim.lr=1e-3",
        "data.sources=[{type: synthetic, num_clips: 8, latent_size: 8, embedding_dim: 32}]", *extra,
    ])


def test_configs_in_repo_validate():
    recipe = REPO / "recipes" / "default-model" / "configs"
    for path in (REPO / "configs" / "tiny.yaml", REPO / "configs" / "puppet-master-paper.yaml",
                 REPO / "configs" / "puppet-master-distill.yaml", *sorted(recipe.glob("*.yaml"))):
        cfg = load_config(path)
        assert cfg.max_steps > 0
    stage1 = load_config(recipe / "default-model.yaml")
    stage2 = load_config(recipe / "default-model-stage2.yaml")
    assert stage2.model.init == "checkpoint" and stage2.model.pretrained == f"{stage1.output_dir}/pipeline"
    assert stage2.motion_weight > 0 and stage1.motion_weight == 0
    assert [s.min_drag_motion > 0 for s in stage2.data.sources] == [True, False]
    stage3 = load_config(recipe / "default-model-stage3.yaml")
    assert stage3.model.unet["drag_warp_image_latents"] is True and stage3.stop_at_step < stage3.max_steps
    distill = load_config(recipe / "default-model-distill.yaml")
    assert distill.objective == "consistency" and distill.distill.sigma_max == 2.0
    paper = load_config(REPO / "configs" / "puppet-master-paper.yaml")
    assert paper.optim.lr == 1e-5 and paper.max_steps == 12500 and paper.data.num_frames == 14
    assert paper.data.batch_size * paper.gradient_accumulation_steps == 64
    assert {s.name: s.weight for s in paper.data.sources} == PAPER_MIXTURE


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lr=-1"], "optim.lr"),
        (["max_steps=zero"], "max_steps"),
        (["no_such_key=1"], "no_such_key"),
        (["model.init=svd"], "model.pretrained"),
        (["data.sources=[{type: latent_cache}]"], "path"),
        (["data.sources=[{type: synthetic, min_drag_motion: 0.1}]"], "min_drag_motion"),
        (["mixed_precision=fp8"], "mixed_precision"),
        (["lr1e-3"], "key.sub=value"),
    ],
)
def test_config_validation_errors_are_clear(overrides, message):
    with pytest.raises(UserInputError, match=message):
        load_config(None, overrides)


def test_missing_config_file():
    with pytest.raises(UserInputError, match="does not exist"):
        load_config("/no/such.yaml")


def test_cfg_dropout_rate_and_determinism():
    keys = torch.arange(20000)
    sigma, eps, drop_drags, drop_image = sample_noise(keys, 0, (1,), 0.7, 1.6, 0.1, 0.0)
    assert abs(drop_drags.float().mean().item() - 0.1) < 0.01
    assert not drop_image.any()
    assert abs(sigma.log().mean().item() - 0.7) < 0.05 and abs(sigma.log().std().item() - 1.6) < 0.05
    again = sample_noise(keys[:5], 0, (1,), 0.7, 1.6, 0.1, 0.0)
    assert torch.equal(again[0], sigma[:5]) and torch.equal(again[1], eps[:5])


def test_export_holds_the_ema_weights_and_validation_leaves_training_weights_alone(tmp_path):
    """Validation and export swap the EMA weights in and back out: the training itself is unchanged."""
    tiny = ["model.components=tiny", "ema_decay=0.5", "max_steps=3", "validation_steps=1"]
    plain = Trainer(_cfg(tmp_path / "a", *tiny, "validate_every=1000"), progress=False).train()
    validated = Trainer(_cfg(tmp_path / "b", *tiny, "validate_every=1", "export_pipeline=true"), progress=False).train()
    assert validated.losses == plain.losses and len(list((tmp_path / "b" / "run" / "validation").glob("*.gif"))) == 3
    from puppet_master.models import UNetDragSpatioTemporalConditionModel

    exported = UNetDragSpatioTemporalConditionModel.from_pretrained(validated.pipeline_dir / "unet").state_dict()
    ema = UNetDragSpatioTemporalConditionModel.from_pretrained(tmp_path / "b" / "run" / "unet-ema").state_dict()
    raw = validated.unet.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in exported.items())
    assert any(not torch.equal(v, raw[k]) for k, v in exported.items()), "the export must be the EMA, not the raw weights"


def test_mixture_is_stateless_and_weighted():
    a = SyntheticDragDataset(4, 3, 8, 8, seed=1)
    b = SyntheticDragDataset(4, 3, 8, 8, seed=2)
    mix = MixtureDataset([a, b], [0.8, 0.2], seed=0)
    picks = [mix.locate(g)[0] for g in range(4000)]
    assert abs(sum(p == 0 for p in picks) / 4000 - 0.8) < 0.03
    torch.testing.assert_close(mix[17]["latents"], mix[17]["latents"])
    batch = collate([mix[0], mix[1]])
    assert batch["latents"].shape == (2, 3, 4, 8, 8) and batch["drags"].shape == (2, 3, 5, 4)
    assert batch["key"].tolist() == [0, 1]


def test_motion_weights_mark_moving_cells_only():
    x = torch.randn(2, 4, 3, 8, 8)
    x[:] = x[:, :1]  # every frame equals frame 0 ...
    x[0, 2:, :, 4, 4] += 1.0  # ... except one cell of clip 0 from frame 2 on (mean |diff| 1.0)
    x[0, 3, :, 0, 7] += 0.1  # and a small change of 0.1 in frame 3's corner cell
    w = motion_weights(x, weight=4.0, scale=0.25)
    assert w.shape == (2, 4, 1, 8, 8)
    assert torch.equal(w[1], torch.ones_like(w[1]))  # a static clip keeps the plain loss
    assert torch.equal(w[0, :2], torch.ones_like(w[0, :2]))  # frame 0 and frame 1 did not move
    # the moved cell and its 3x3 neighbourhood get 1 + 4 * min(1 / 0.25, 1) = 5
    torch.testing.assert_close(w[0, 2, 0, 3:6, 3:6], torch.full((3, 3), 5.0))
    assert w[0, 2, 0, 1, 1] == 1 and w[0, 2, 0, 6, 6] == 1
    # the corner's 0.1 counts 0.4 of "fully moving": 1 + 4 * 0.4, on its 2x2 pooled neighbourhood
    torch.testing.assert_close(w[0, 3, 0, 0:2, 6:8], torch.full((2, 2), 2.6))
    assert torch.equal(motion_weights(x, 0.0, 0.25), torch.ones(2, 4, 1, 8, 8))


def test_motion_weight_raises_the_loss_only_where_the_clip_moves(tmp_path):
    plain = _cfg(tmp_path, "data.num_frames=4")
    weighted = _cfg(tmp_path, "data.num_frames=4", "motion_weight=4.0")
    torch.manual_seed(0)
    unet = trainer_module.build_unet(plain).eval()
    item = SyntheticDragDataset(1, 4, 8, 32, seed=3)[0]
    moving = collate([dict(item, key=5)])
    static = collate([dict(item, latents=item["latents"][:1].expand(4, -1, -1, -1).clone(), key=5)])
    with torch.no_grad():
        ones = torch.ones(4)
        assert edm_loss(unet, static, weighted, ones).item() == pytest.approx(edm_loss(unet, static, plain, ones).item())
        assert edm_loss(unet, moving, weighted, ones).item() > 1.05 * edm_loss(unet, moving, plain, ones).item()


def test_latent_cache_filter_keeps_clips_whose_drags_move(tmp_path):
    from safetensors.torch import save_file

    def clip(name, dx):
        drags = torch.zeros(3, 5, 4)
        drags[:, 0, :2] = 0.5
        drags[:, 0, 2] = 0.5 + torch.tensor([0.0, dx / 2, dx])
        drags[:, 0, 3] = 0.5
        save_file({"latents": torch.zeros(3, 4, 2, 2), "image_latents": torch.zeros(4, 2, 2),
                   "embedding": torch.zeros(1, 8), "drags": drags}, str(tmp_path / f"{name}.safetensors"))
        return drags

    drags = clip("still", 0.0)
    clip("small", 0.02)
    clip("large", 0.1)
    assert largest_drag_motion(drags) == 0.0
    assert largest_drag_motion(torch.zeros(3, 5, 4)) == 0.0
    assert len(LatentCacheDataset(tmp_path)) == 3
    assert [f.stem for f in LatentCacheDataset(tmp_path, min_drag_motion=0.04).files] == ["large"]
    with pytest.raises(UserInputError, match="min_drag_motion"):
        LatentCacheDataset(tmp_path, min_drag_motion=0.5)


def _eval_loss(unet, dataset, cfg, keys=range(1000, 1016)):
    items = [dict(dataset.sources[0][0], key=k) for k in keys]
    batch = collate(items)
    unet.eval()
    with torch.no_grad():
        return edm_loss(unet, batch, cfg, torch.ones(cfg.data.num_frames)).item()


def test_tiny_model_overfits_one_clip(tmp_path):
    cfg = _cfg(tmp_path, "max_steps=300", "use_ema=false", "cond_dropout_prob=0.0", "data.batch_size=4",
               "data.sources=[{type: synthetic, num_clips: 1, latent_size: 8, embedding_dim: 32}]")
    torch.manual_seed(0)
    dataset = trainer_module.build_mixture(cfg.data, cfg.seed)
    init = trainer_module.build_unet(cfg)
    before = _eval_loss(init, dataset, cfg)
    result = Trainer(cfg, progress=False).train()
    after = _eval_loss(result.unet, dataset, cfg)
    assert len(result.losses) == 300
    print(f"eval loss before {before:.4f} after {after:.4f}")
    assert after <= 0.2 * before, (before, after)


def test_resume_reproduces_the_next_losses_exactly(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a", "max_steps=6", "checkpoint_every=3"), progress=False).train()
    first = Trainer(_cfg(tmp_path / "b", "max_steps=3", "checkpoint_every=3"), progress=False).train()
    assert (tmp_path / "b" / "run" / "checkpoints" / "step-00000003" / "trainer_state.json").is_file()
    resumed = Trainer(_cfg(tmp_path / "b", "max_steps=6", "checkpoint_every=3", "resume=latest"), progress=False).train()
    assert first.losses == straight.losses[:3]
    assert resumed.losses == straight.losses[3:]
    for (k, a), b in zip(straight.unet.state_dict().items(), resumed.unet.state_dict().values()):
        assert torch.equal(a, b), k


def test_stop_at_step_ends_the_run_early_on_the_full_lr_schedule(tmp_path):
    """stop_at_step=3 of a 6-step cosine schedule is the first half of the 6-step run; resuming finishes it.

    (Without warm-up the second step's lr is 0.93·lr on a 6-step schedule and 0.75·lr on a 3-step one,
    so the third loss tells the two schedules apart.)
    """
    cosine = ["optim.lr_scheduler=cosine", "optim.warmup_steps=0", "max_steps=6", "checkpoint_every=1000"]
    straight = Trainer(_cfg(tmp_path / "a", *cosine), progress=False).train()
    stopped = Trainer(_cfg(tmp_path / "b", *cosine, "stop_at_step=3", "export_pipeline=true", "model.components=tiny"),
                      progress=False).train()
    assert stopped.global_step == 3 and stopped.losses == straight.losses[:3]
    assert (tmp_path / "b" / "run" / "checkpoints" / "step-00000003" / "trainer_state.json").is_file()
    assert stopped.pipeline_dir is not None and (stopped.pipeline_dir / "model_index.json").is_file()
    resumed = Trainer(_cfg(tmp_path / "b", *cosine, "resume=latest"), progress=False).train()
    assert resumed.losses == straight.losses[3:]
    with pytest.raises(UserInputError, match="stop_at_step"):
        _cfg(tmp_path, "max_steps=6", "stop_at_step=7")


def test_drag_lr_scale_multiplies_the_update_of_the_drag_modules_only(tmp_path):
    from accelerate.utils import set_seed

    # one plain SGD step: the update is -lr x gradient, and the gradient does not depend on the lr
    common = ("max_steps=1", "use_ema=false", "optim.optimizer=sgd", "optim.lr=1e-2", "optim.grad_clip=1e9")
    cfg = _cfg(tmp_path / "init", *common)
    set_seed(cfg.seed)
    initial = {k: v.clone() for k, v in trainer_module.build_unet(cfg).state_dict().items()}
    plain = Trainer(_cfg(tmp_path / "a", *common), progress=False).train().unet.state_dict()
    scaled = Trainer(_cfg(tmp_path / "b", *common, "optim.drag_lr_scale=10"), progress=False).train().unet.state_dict()
    checked = {"drag": 0, "backbone": 0}
    for k, before in initial.items():
        da, db = plain[k] - before, scaled[k] - before
        if da.abs().max() < 1e-7:
            continue
        is_drag = ".flow_convs." in f".{k}" or ".drag_token_mlps." in f".{k}"
        torch.testing.assert_close(db, 10 * da if is_drag else da, rtol=1e-3, atol=1e-7, msg=k)
        checked["drag" if is_drag else "backbone"] += 1
    assert checked["drag"] >= 4 and checked["backbone"] >= 20, checked

    groups = trainer_module.param_groups(trainer_module.build_unet(cfg), 1e-3, 5.0)
    assert [g["name"] for g in groups] == ["backbone", "drag"]
    assert groups[1]["lr"] == pytest.approx(5e-3)
    # a checkpoint's optimizer state belongs to its parameter groups: resuming with another scale is refused
    with pytest.raises(UserInputError, match="drag_lr_scale"):
        Trainer(_cfg(tmp_path / "a", "max_steps=2", "use_ema=false", "optim.drag_lr_scale=10", "checkpoint_every=1",
                     "resume=latest"), progress=False).train()


def test_two_process_ddp_matches_one_process_with_doubled_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # float64 and plain SGD: the updates are then a linear function of the averaged gradients, so
    # both runs agree to ~1e-8 (AdamW divides by sqrt(v) and turns reduction-order noise on
    # parameters with ~zero true gradient into full-size updates: 1e-6..1e-5 apart by chance)
    sgd = ["--float64", "optim.optimizer=sgd", "optim.lr=1e-2", "optim.grad_clip=1.0"]
    one = subprocess.run([sys.executable, str(HELPER), str(tmp_path / "one"), "2", *sgd], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                          str(HELPER), str(tmp_path / "two"), "1", *sgd], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "result.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "result.pt", weights_only=True)
    assert a["processes"] == 1 and b["processes"] == 2
    for k in a["initial"]:
        assert torch.equal(a["initial"][k], b["initial"][k])
    # the parameter updates agree up to float reduction-order noise (batch-2 kernels vs 2 x batch-1 + all-reduce)
    da = torch.cat([(a["state"][k] - a["initial"][k]).flatten() for k in a["state"]])
    db = torch.cat([(b["state"][k] - b["initial"][k]).flatten() for k in b["state"]])
    assert da.norm() > 0
    assert (da - db).norm() / da.norm() < 1e-6, ((da - db).norm() / da.norm()).item()
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), atol=1e-9, rtol=1e-7)


def test_a_nan_batch_is_skipped_and_a_run_of_them_stops_with_the_last_checkpoint(tmp_path, monkeypatch):
    """The loop's one non-finite policy (training/loop.py): skip the batch; max_nonfinite_steps in a row stop."""
    real = trainer_module.edm_loss
    calls = {"n": 0, "bad": {4}}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in calls["bad"] else loss

    monkeypatch.setattr(trainer_module, "edm_loss", flaky)
    result = Trainer(_cfg(tmp_path / "one", "max_steps=6", "checkpoint_every=2"), progress=False).train()
    assert result.global_step == 6
    assert math.isnan(result.losses[3]) and all(math.isfinite(x) for i, x in enumerate(result.losses) if i != 3)

    calls.update(n=0, bad={4, 5, 6})
    with pytest.raises(TrainingDiverged, match="step 5 .*step-00000004"):
        Trainer(_cfg(tmp_path / "two", "max_steps=6", "checkpoint_every=1", "keep_checkpoints=5",
                     "max_nonfinite_steps=2"), progress=False).train()
    ckpts = sorted((tmp_path / "two" / "run" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == [f"step-0000000{i}" for i in (1, 2, 3, 4)]
    # the skipped step 4 changed no weight; the steps before it did
    from safetensors.torch import load_file

    w2, w3, w4 = (load_file(str(c / "model.safetensors")) for c in ckpts[1:])
    assert any(not torch.equal(w2[k], w3[k]) for k in w3)
    assert all(torch.equal(w3[k], w4[k]) for k in w3)


def test_checkpoint_init_applies_unet_overrides_and_refuses_unknown_ones(tmp_path):
    from puppet_master.models import UNetDragSpatioTemporalConditionModel
    from puppet_master.pipelines.components import SIZES

    UNetDragSpatioTemporalConditionModel(**SIZES["tiny"]["unet"]).save_pretrained(tmp_path / "unet")
    base = [f"output_dir={tmp_path / 'run'}", "model.init=checkpoint", f"model.pretrained={tmp_path / 'unet'}",
            "data.sources=[{type: synthetic, num_clips: 8, latent_size: 8, embedding_dim: 32}]"]
    unet = trainer_module.build_unet(load_config(None, base + ["model.unet={drag_warp_image_latents: true}"]))
    assert unet.config.drag_warp_image_latents is True
    assert trainer_module.build_unet(load_config(None, base)).config.drag_warp_image_latents is False
    with pytest.raises(UserInputError, match="model.unet.no_such_option"):
        trainer_module.build_unet(load_config(None, base + ["model.unet={no_such_option: 3}"]))


def test_train_command_exports_a_pipeline_animate_can_use(tmp_path, capsys):
    from puppet_master.cli import main

    run = tmp_path / "run"
    args = ["train", "--config", str(REPO / "configs" / "tiny.yaml"), "-q", f"output_dir={run}", "max_steps=4",
            "checkpoint_every=2", "validate_every=4", "validation_steps=2", "data.num_frames=4", "data.batch_size=2"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)
    assert (run / "pipeline" / "model_index.json").is_file() and (run / "unet-ema" / "config.json").is_file()
    assert (run / "validation" / "step-00000004.gif").is_file()
    assert list((run / "logs").rglob("events.out.tfevents*"))
    image = tmp_path / "img.png"
    import numpy as np
    import PIL.Image

    PIL.Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    with pytest.raises(SystemExit) as exc:
        main(["animate", str(image), "--drag", "10,10:30,30", "--model", str(run / "pipeline"), "-o", str(tmp_path / "v.gif"),
              "--steps", "1", "--frames", "4", "--size", "64", "-q"])
    assert exc.value.code in (0, None) and (tmp_path / "v.gif").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_latent_cache_round_trip(tmp_path, tiny_pipeline_dir, shared_dir):
    from puppet_master.training.cache import build_cache
    from puppet_master.training.data import LatentCacheDataset

    n = build_cache(shared_dir / "data" / "dragamove-test-dev", str(tiny_pipeline_dir), tmp_path / "cache", size=64,
                    limit=2, progress=False)
    assert n == 2
    assert build_cache(shared_dir / "data" / "dragamove-test-dev", str(tiny_pipeline_dir), tmp_path / "cache", size=64,
                       limit=2, progress=False) == 0  # resumable: finished files are skipped
    ds = LatentCacheDataset(tmp_path / "cache")
    item = ds[0]
    assert item["latents"].shape == (14, 4, 8, 8) and item["image_latents"].shape == (4, 8, 8)
    assert item["embedding"].shape == (1, 32) and item["drags"].shape == (14, 5, 4)
    assert item["category"] == "StorageFurniture"
    torch.testing.assert_close(item["latents"][0], item["image_latents"] * 0.18215)
    cfg = _cfg(tmp_path, "max_steps=2", "data.num_frames=14", "data.batch_size=1",
               f"data.sources=[{{type: latent_cache, path: '{tmp_path / 'cache'}'}}]")
    assert len(Trainer(cfg, progress=False).train().losses) == 2


def test_export_checkpoint_writes_the_ema_weights_of_a_stopped_run(tmp_path, capsys):
    from puppet_master.cli import main
    from puppet_master.pipelines import PuppetMasterPipeline, build_components

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "-q", f"output_dir={run}", "max_steps=4",
              "checkpoint_every=2", "validate_every=100", "data.num_frames=4", "data.batch_size=2", "ema_decay=0.5",
              "optim.warmup_steps=0", "optim.lr=1e-2"])
    assert exc.value.code in (0, None)
    ckpt = run / "checkpoints"
    # the run's own export at max_steps holds the EMA weights of step 4: exporting that checkpoint must give them back
    with pytest.raises(SystemExit) as exc:
        main(["export-checkpoint", str(ckpt / "step-00000004"), "--base", str(run / "pipeline"), "-o", str(tmp_path / "e4")])
    assert exc.value.code in (0, None)
    final = PuppetMasterPipeline.from_pretrained(run / "pipeline").unet.state_dict()
    e4 = PuppetMasterPipeline.from_pretrained(tmp_path / "e4").unet.state_dict()
    for k, v in final.items():
        assert torch.equal(v, e4[k]), k
    # step 2 is another set of weights; --fp16 stores half precision that loads back close to float32
    with pytest.raises(SystemExit) as exc:
        main(["export-checkpoint", str(ckpt / "step-00000002"), "--base", str(run / "pipeline"), "-o", str(tmp_path / "e2"),
              "--fp16"])
    assert exc.value.code in (0, None)
    from safetensors.torch import load_file

    stored = load_file(next((tmp_path / "e2" / "unet").glob("*.safetensors")))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    e2 = PuppetMasterPipeline.from_pretrained(tmp_path / "e2").unet.float().state_dict()
    assert any(not torch.allclose(e2[k], v, atol=1e-3) for k, v in final.items())
    from puppet_master.training.export import load_ema_weights

    shadow2 = load_ema_weights(ckpt / "step-00000002")
    for (k, v), s in zip(PuppetMasterPipeline.from_pretrained(tmp_path / "e4").unet.named_parameters(), shadow2):
        assert torch.allclose(e2[k], s, atol=2e-3 * (1 + s.abs().max().item())), k
    capsys.readouterr()
    # user mistakes: an existing output, a missing checkpoint, a base of another architecture
    other = tmp_path / "other"
    PuppetMasterPipeline(**build_components("tiny", seed=0, block_out_channels=(32, 32, 32, 32))).save_pretrained(other)
    for args, message in [
        ([str(ckpt / "step-00000004"), "--base", str(run / "pipeline"), "-o", str(tmp_path / "e4")], "already exists"),
        ([str(ckpt / "step-00000099"), "--base", str(run / "pipeline"), "-o", str(tmp_path / "x")], "does not exist"),
        ([str(ckpt / "step-00000004"), "--base", str(other), "-o", str(tmp_path / "y")], "the run was trained from"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["export-checkpoint", *args])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
