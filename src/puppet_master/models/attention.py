"""All-to-first spatial attention (paper §3.3, eq. 5; docs/design.md §4 C)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


# Adapted from diffusers.models.attention_processor.AttnProcessor2_0 (diffusers 0.42): the same pre- and
# post-processing of the Attention layer (spatial_norm, group_norm, norm_q/norm_k, to_out, residual, rescale).
class AllToFirstAttnProcessor:
    """Spatial self-attention whose keys and values come from frame 0 of the same video.

    For a video of ``N`` frames the layer sees hidden states ``(B·N, L, C)`` (``L`` =
    ``h·w`` tokens per frame). Queries are ``to_q`` of every frame; keys and values are
    ``to_k`` / ``to_v`` of frame 0 only, shared by all ``N`` frames of that video:
    ``softmax(q_n k_0ᵀ · scale) v_0`` per head, then ``to_out`` and the layer's
    residual / rescale handling, exactly like diffusers' default processor.

    All frames of a video are attended in one ``scaled_dot_product_attention`` call
    with ``N·L`` queries against ``L`` keys, so keys and values are never repeated
    ``N`` times. Works for any ``N`` and any resolution.

    Attributes:
        num_frames: frames per video; set by the UNet before each forward pass.

    Raises:
        ValueError: if called with ``encoder_hidden_states`` (it is a self-attention)
            or when ``B·N`` is not a multiple of ``num_frames``.
    """

    def __init__(self, num_frames: int | None = None) -> None:
        self.num_frames = num_frames

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("AllToFirstAttnProcessor is for self-attention layers (attn1) only")
        if attention_mask is not None:
            raise ValueError("AllToFirstAttnProcessor does not support attention masks")
        num_frames = self.num_frames
        if num_frames is None:
            raise ValueError("AllToFirstAttnProcessor.num_frames must be set before the forward pass")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            bf, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(bf, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        batch_frames, tokens, _ = hidden_states.shape
        if batch_frames % num_frames:
            raise ValueError(f"batch of {batch_frames} frames is not a multiple of num_frames={num_frames}")
        batch = batch_frames // num_frames

        query = attn.to_q(hidden_states)  # (B·N, L, C)
        first = hidden_states.view(batch, num_frames, tokens, -1)[:, 0]  # (B, L, C)
        key = attn.to_k(first)
        value = attn.to_v(first)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        heads = attn.heads
        inner = key.shape[-1]
        head_dim = inner // heads
        # (B, heads, N·L, d) against (B, heads, L, d)
        query = query.view(batch, num_frames * tokens, heads, head_dim).transpose(1, 2)
        key = key.view(batch, tokens, heads, head_dim).transpose(1, 2)
        value = value.view(batch, tokens, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch_frames, tokens, heads * head_dim).to(query.dtype)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(bf, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def naive_all_to_first_attention(attn: Attention, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Reference all-to-first attention with explicit products and softmax (for tests).

    Args:
        attn: a diffusers ``Attention`` self-attention layer.
        hidden_states: ``(B·N, L, C)``.
        num_frames: ``N``.

    Returns:
        ``(B·N, L, C)``: per frame, per head, ``softmax(q kᵀ · scale) v`` with ``k, v``
        from frame 0 of the same video, then ``to_out``.
    """
    bf, tokens, _ = hidden_states.shape
    out = torch.empty_like(hidden_states)
    heads = attn.heads
    for f in range(bf):
        first = (f // num_frames) * num_frames
        q = attn.to_q(hidden_states[f])
        k = attn.to_k(hidden_states[first])
        v = attn.to_v(hidden_states[first])
        d = q.shape[-1] // heads
        per_head = []
        for hh in range(heads):
            qs, ks, vs = (t[:, hh * d : (hh + 1) * d] for t in (q, k, v))
            weights = torch.softmax(qs @ ks.T * attn.scale, dim=-1)
            per_head.append(weights @ vs)
        out[f] = attn.to_out[0](torch.cat(per_head, dim=-1))
    return out
