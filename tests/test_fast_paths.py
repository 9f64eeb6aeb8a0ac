"""The UNet's fast paths compute what the plain definitions compute.

Drag-token sampling by index gather equals ``grid_sample``; the lean diffusers-layer
forwards equal diffusers'; precomputed drag conditioning equals the in-forward one; the
forward runs on the ``meta`` device (so it creates no CPU tensor and reads no tensor value
on the host: CUDA-graph safe) and compiles as one graph; the static-buffer UNet runner
used for CUDA-graph replay returns the eager results.
"""

import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.resnet import AlphaBlender as DiffusersAlphaBlender
from diffusers.models.upsampling import Upsample2D as DiffusersUpsample2D
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from puppet_master.drags import DragSet
from puppet_master.models import UNetDragSpatioTemporalConditionModel
from puppet_master.models import fast_layers
from puppet_master.models.drag_modules import bilinear_taps, gather_taps, sample_at_points
from puppet_master.pipelines import PuppetMasterPipeline, build_components
from puppet_master.pipelines.cuda_graph import GraphedUNet
from puppet_master.pipelines.components import SIZES

TINY = SIZES["tiny"]["unet"]


def _randomised(seed=1, **kwargs):
    """Tiny UNet with seeded weights at sensible scales (zero-initialised layers active)."""
    model = UNetDragSpatioTemporalConditionModel(**TINY, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(r / p[0].numel() ** 0.5 if p.ndim >= 2 else 0.05 * r)
    return model.eval()


def _inputs(b=2, n=4, h=16, w=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    drags = torch.zeros(b, n, 5, 4)
    drags[:, :, 0, :2] = torch.tensor([0.3, 0.4])
    drags[:, :, 0, 2:] = torch.tensor([0.3, 0.4]) + torch.linspace(0, 1, n)[:, None] * torch.tensor([0.4, 0.2])
    drags[0, :, 3] = torch.tensor([0.0, 1.0, 0.99, 0.02])  # on the image border
    return dict(
        sample=torch.randn(b, n, 4, h, w, generator=g),
        timestep=torch.full((b,), 0.3),
        image_latents=torch.randn(b, 4, h, w, generator=g),
        encoder_hidden_states=torch.randn(b, 1, 32, generator=g),
        drags=drags,
    )


def test_gather_taps_equal_grid_sample_including_borders():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, 7, 5, 9, generator=g)
    points = torch.rand(6, 10, 2, generator=g)
    points[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # corners
    points[1, :3] = torch.tensor([[0.5 / 9, 0.5 / 5], [1 - 0.5 / 9, 0.3], [0.05, 0.97]])  # cell centres / near edges
    taps = bilinear_taps(points, 5, 9)
    assert taps.index.shape == (6, 40) and taps.weight.shape == (6, 10, 4)
    torch.testing.assert_close(taps.weight.sum(-1), torch.ones(6, 10))
    torch.testing.assert_close(gather_taps(features, taps), sample_at_points(features, points), atol=1e-6, rtol=1e-6)


def test_drag_tokens_do_not_backpropagate_into_the_sampled_features():
    """Stop-gradient of paper §3.2: the tokens see the features, the gradient of the tokens does not reach them."""
    model = _randomised()
    block = model.down_blocks[0]
    inp = _inputs(b=1, n=3)
    cond = model.prepare_drag_conditioning(inp["drags"][:1], 16, 16)
    hidden = torch.randn(3, 32, 16, 16, requires_grad=True)
    context = torch.zeros(3, 1, 32)
    with torch.no_grad():  # no modulation: the returned hidden states would carry a gradient of their own
        for emb in block.flow_convs:
            emb.conv_out.weight.zero_()
            emb.conv_out.bias.zero_()
    _, ctx = block._condition(0, hidden, context, cond)
    tokens = ctx[:, 1:]
    assert tokens.abs().sum() > 0  # the drag slot is used: real tokens
    tokens.square().sum().backward()
    assert hidden.grad is None or hidden.grad.abs().max() == 0
    mlp_grad = block.drag_token_mlps[0][0].weight.grad
    assert mlp_grad is not None and mlp_grad.abs().max() > 0  # the token MLP itself is trained
    # the feature values do reach the tokens
    with torch.no_grad():
        _, ctx2 = block._condition(0, hidden * 2, context, cond)
    assert (ctx2[:, 1:] - tokens).abs().max() > 1e-4


def test_lean_layers_keep_keys_and_match_diffusers_forwards():
    model = _randomised()
    kinds = {type(m) for m in model.modules()}
    assert {fast_layers.AlphaBlender, fast_layers.Upsample2D, fast_layers.TemporalConv3d} <= kinds
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, fast_layers.AlphaBlender):
            m.__class__ = DiffusersAlphaBlender
        elif isinstance(m, fast_layers.Upsample2D):
            m.__class__ = DiffusersUpsample2D
        elif isinstance(m, fast_layers.TemporalConv3d):
            m.__class__ = torch.nn.Conv3d
    assert list(plain.state_dict()) == list(model.state_dict())
    inp = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**inp).sample, plain(**inp).sample, atol=1e-5, rtol=1e-5)


def test_precomputed_conditioning_equals_in_forward_conditioning():
    model = _randomised(drag_warp_image_latents=True)
    inp = _inputs()
    drags = inp.pop("drags")
    cond = model.prepare_drag_conditioning(drags, 16, 16, image_latents=inp["image_latents"], precompute_modulation=True)
    assert set(cond.modulation) == {"down_blocks.0", "down_blocks.1", "down_blocks.2", "up_blocks.1", "up_blocks.2", "up_blocks.3"}
    assert cond.warped_latents is not None
    with torch.no_grad():
        ref = model(**inp, drags=drags).sample
        fast = model(**inp, drag_conditioning=cond).sample
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-6)
    # the cache matters: changing a cached modulation changes the output
    scale1, shift = cond.modulation["down_blocks.0"][0]
    cond.modulation["down_blocks.0"][0] = (scale1, shift + 1)
    with torch.no_grad():
        assert (model(**inp, drag_conditioning=cond).sample - ref).abs().max() > 1e-3


class _HostTensorSpy(TorchDispatchMode):
    """Records every aten op that takes or returns a CPU tensor."""

    def __init__(self):
        super().__init__()
        self.host_ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            self.host_ops.append(str(func))
        return out


@pytest.mark.parametrize("precomputed", [False, True])
def test_forward_creates_no_host_tensor(precomputed):
    """On ``meta``: a CPU tensor made inside the forward shows up as a CPU output, ``.item()`` or numpy fails.

    That is what CUDA-graph capture and a sync-free GPU forward need (no host tensor, no
    host-to-device copy, no value read on the host).
    """
    with torch.device("meta"):
        model = UNetDragSpatioTemporalConditionModel(**TINY, drag_warp_image_latents=True).eval()
    inp = {k: v.to("meta") for k, v in _inputs().items()}
    drags = inp.pop("drags")
    spy = _HostTensorSpy()
    with torch.no_grad():
        if precomputed:
            cond = model.prepare_drag_conditioning(drags, 16, 16, image_latents=inp["image_latents"],
                                                   precompute_modulation=True)
            with spy:
                out = model(**inp, drag_conditioning=cond).sample
        else:
            with spy:
                out = model(**inp, drags=drags, force_drop_ids=torch.zeros(2, device="meta")).sample
    assert out.device.type == "meta" and out.shape == (2, 4, 4, 16, 16)
    assert spy.host_ops == []


@pytest.mark.slow
def test_fullgraph_compile_matches_eager():
    """``torch.compile(fullgraph=True)`` traces the whole forward (no graph break); AOT autograd backend."""
    torch._dynamo.reset()
    model = _randomised()
    inp = _inputs()
    drags = inp.pop("drags")
    cond = model.prepare_drag_conditioning(drags, 16, 16, precompute_modulation=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref = model(**inp, drag_conditioning=cond).sample
        out = compiled(**inp, drag_conditioning=cond).sample
        # raw drags (the training path) trace too
        out_raw = compiled(**inp, drags=drags).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_raw, ref, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_static_buffer_runner_returns_eager_results_for_new_inputs_and_conditionings():
    model = _randomised()
    inp = _inputs()
    drags = inp.pop("drags")
    cond_a = model.prepare_drag_conditioning(drags, 16, 16, precompute_modulation=True)
    cond_b = model.prepare_drag_conditioning(drags.flip(0), 16, 16, precompute_modulation=True)
    runner = GraphedUNet(model, use_graph=False)
    args = (inp["image_latents"], inp["encoder_hidden_states"])
    with torch.no_grad():
        for step, (cond, t) in enumerate([(cond_a, 0.3), (cond_a, -0.5), (cond_b, 0.1), (cond_a, 0.2)]):
            sample = inp["sample"] * (1 + step)
            out = runner(sample, torch.tensor(t), *args, cond).clone()
            ref = model(sample, torch.tensor(t), *args, drag_conditioning=cond).sample
            torch.testing.assert_close(out, ref)
    assert runner._cond_source is cond_a  # the static conditioning was refreshed when it changed


def test_pipeline_static_unet_path_equals_eager(tiny_pipeline_dir):
    pipe = PuppetMasterPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    drags = DragSet.from_pairs([((20, 20), (40, 30))], 64, 64, num_frames=4)
    kwargs = dict(num_frames=4, height=64, width=64, num_inference_steps=3, output_type="latent")
    eager = pipe(image, drags, generator=torch.Generator().manual_seed(0), **kwargs).frames
    pipe.enable_cuda_graph()
    fast = pipe(image, drags, generator=torch.Generator().manual_seed(0), **kwargs).frames
    again = pipe(image, drags, generator=torch.Generator().manual_seed(0), **kwargs).frames
    pipe.disable_cuda_graph()
    torch.testing.assert_close(fast, eager)
    torch.testing.assert_close(again, eager)


def test_components_built_under_a_device_context_land_on_it():
    """``AlphaBlender.mix_factor`` is created with ``torch.Tensor([...])``, which ignores ``torch.device``."""
    with torch.device("meta"):
        comps = build_components("tiny", seed=0)
    assert {p.device.type for p in comps["unet"].parameters()} == {"meta"}


def test_animate_threads_option(tmp_path, tiny_pipeline_dir):
    from puppet_master.cli import main
    from puppet_master.video import read_video

    image = tmp_path / "in.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out.gif"
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["animate", str(image), "--drag", "20,20:40,30", "--model", str(tiny_pipeline_dir), "--output", str(out),
                  "--steps", "1", "--frames", "4", "--size", "64", "--threads", "1", "-q"])
        assert exit_info.value.code in (0, None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert read_video(out).shape == (4, 64, 64, 3)


def test_keep_freed_memory_serves_large_tensors_from_the_heap():
    """Large tensors stop being mmap'ed blocks (each mapped fresh, page-faulted and zero-filled by the kernel)."""
    import ctypes
    import sys

    from puppet_master.runtime import keep_freed_memory

    if not sys.platform.startswith("linux"):
        assert keep_freed_memory() is False
        return

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def mmapped_bytes_while_holding(mib):
        block = torch.ones(mib * 2**18)  # float32
        held = libc.mallinfo2().hblkhd
        del block
        return held

    base = libc.mallinfo2().hblkhd
    assert keep_freed_memory() is True
    assert mmapped_bytes_while_holding(64) - base < 2**20


def test_half_precision_forward_with_raw_drags_keeps_float32_positions(monkeypatch):
    """A bf16 UNet given raw ``drags=`` samples at the same points as fp32 (positions never cast to bf16)."""
    inp = _inputs(n=3)
    # coordinates that bfloat16 (8 significant bits) cannot hold: each would move by up to 1/256
    drags = torch.zeros(2, 3, 5, 4)
    drags[:, :, 0] = torch.tensor([0.3337, 0.4123, 0.6071, 0.5309])
    drags[:, :, 1] = torch.tensor([0.8123, 0.1877, 0.7919, 0.2331])
    assert not torch.equal(drags.bfloat16().float(), drags)
    inp["drags"] = drags
    seen = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _randomised(drag_warp_image_latents=True).to(dtype)
        real = model.prepare_drag_conditioning

        def spy(*args, real=real, dtype=dtype, **kwargs):
            seen[dtype] = real(*args, **kwargs)
            return seen[dtype]

        monkeypatch.setattr(model, "prepare_drag_conditioning", spy)
        with torch.no_grad():
            out = model(**{k: v.to(dtype) if k not in ("drags", "timestep") else v for k, v in inp.items()}).sample
        assert out.dtype == dtype and torch.isfinite(out.float()).all()
    full, half = seen[torch.float32], seen[torch.bfloat16]
    assert half.drags.dtype == torch.float32 and torch.equal(half.drags, drags)
    assert set(half.taps) == set(full.taps) and len(half.taps) == 3
    for size in full.taps:
        assert torch.equal(half.taps[size].index, full.taps[size].index)
        assert torch.equal(half.taps[size].weight, full.taps[size].weight)  # float32 in both
        assert torch.equal(half.encodings[size], full.encodings[size].to(torch.bfloat16))
        assert torch.equal(half.pos_tokens[size], full.pos_tokens[size].to(torch.bfloat16))
    # the drag-warped first-frame latents follow the same float32 drags
    torch.testing.assert_close(half.warped_latents.float(), full.warped_latents, atol=0.02, rtol=0.02)
