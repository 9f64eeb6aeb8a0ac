"""Replaying the denoising step's UNet call from a CUDA graph (static shapes).

A 50-step sampling call evaluates the UNet 50 times with the same shapes; only the noisy
latents and the timestep change. On a GPU the eager forward of the full-size model
launches thousands of small kernels, and the host time to launch them is a large part of
the step. :class:`GraphedUNet` records one forward in a ``torch.cuda.CUDAGraph`` and
replays it: inputs are copied into fixed (static) buffers, the graph runs, and the
output buffer is returned.

The UNet forward is graph-safe when it gets a precomputed
:class:`~puppet_master.models.DragConditioning` and a tensor timestep on the device: it
then creates no host tensors, copies nothing between host and device and never reads a
tensor value on the host (``tests/test_fast_paths.py`` checks this on the ``meta`` device).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..models.drag_modules import DragConditioning


def _signature(tensors: list[torch.Tensor]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class GraphedUNet:
    """Calls a drag UNet through static input buffers, replaying a CUDA graph on CUDA devices.

    ``runner(sample, timestep, image_latents, encoder_hidden_states, drag_conditioning)``
    returns the UNet's ``sample`` output ``(B, N, C, h, w)``. The first call for a new set
    of shapes/dtypes (of every input, the drag conditioning's tensors included) warms the
    UNet up and captures a graph; later calls copy the inputs into the static buffers
    (the conditioning only when a different object is passed) and replay it.

    On a CPU (``use_graph=False``) the same static-buffer path runs the UNet eagerly, so
    the bookkeeping can be tested without a GPU.

    The returned tensor is the graph's output buffer: it is overwritten by the next call,
    so consume or copy it first (the pipeline does, with ``.float()`` / CFG arithmetic).

    Args:
        unet: the drag UNet (possibly ``torch.compile``'d in default mode).
        use_graph: capture and replay a CUDA graph (default: when the UNet is on CUDA).
        warmup: eager calls on a side stream before capture (lets cuDNN/cuBLAS pick
            algorithms and compiled code finish its first-call work).
    """

    def __init__(self, unet: torch.nn.Module, use_graph: bool | None = None, warmup: int = 2) -> None:
        self.unet = unet
        self.use_graph = use_graph
        self.warmup = warmup
        self.captures = 0
        self._key: tuple | None = None
        self._graph = None
        self._inputs: list[torch.Tensor] = []
        self._cond: DragConditioning | None = None
        self._cond_source: DragConditioning | None = None
        self._output: torch.Tensor | None = None
        self._run: Callable[[], torch.Tensor] | None = None

    def reset(self) -> None:
        """Drop the captured graph and its buffers (frees their memory)."""
        self._key = self._graph = self._cond = self._cond_source = self._output = self._run = None
        self._inputs = []

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        image_latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        drag_conditioning: DragConditioning | None,
    ) -> torch.Tensor:
        timestep = torch.as_tensor(timestep, device=sample.device)
        inputs = [sample, timestep, image_latents, encoder_hidden_states]
        cond_tensors = drag_conditioning.tensors() if drag_conditioning is not None else []
        key = (_signature(inputs), _signature(cond_tensors), drag_conditioning is None,
               drag_conditioning.structure() if drag_conditioning is not None else None)
        if key != self._key:
            self._capture(inputs, drag_conditioning)
            self._key = key
        else:
            for dst, src in zip(self._inputs, inputs):
                dst.copy_(src)
            if drag_conditioning is not None and drag_conditioning is not self._cond_source:
                for dst, src in zip(self._cond.tensors(), cond_tensors):
                    dst.copy_(src)
                self._cond_source = drag_conditioning
        if self._graph is not None:
            self._graph.replay()
            return self._output
        return self._run()

    def _capture(self, inputs: list[torch.Tensor], cond: DragConditioning | None) -> None:
        self.reset()
        self._inputs = [t.clone() for t in inputs]
        self._cond = cond.map_tensors(torch.clone) if cond is not None else None
        self._cond_source = cond
        sample, timestep, image_latents, states = self._inputs

        def run() -> torch.Tensor:
            return self.unet(sample, timestep, image_latents=image_latents, encoder_hidden_states=states,
                             drag_conditioning=self._cond).sample

        self._run = run
        use_graph = self.use_graph if self.use_graph is not None else sample.device.type == "cuda"
        if not use_graph:
            return
        stream = torch.cuda.Stream(device=sample.device)
        stream.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream(sample.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._output = run()
        self._graph = graph
        self.captures += 1
