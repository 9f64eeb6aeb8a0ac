"""Models: the drag-conditioned UNet, its attention processor and drag layers (docs/design.md §4);
DragAnything's ControlNet and the SVD UNet that takes its residuals; an image VAE with a tiny decoder (§5)."""

from .attention import AllToFirstAttnProcessor
from .controlnet_draganything import DragAnythingConditioningEmbedding, DragAnythingControlNetModel, DragAnythingControlNetOutput
from .drag_modules import DragConditioning, DragEmbedding, sincos_pos_embed_2d
from .unet_drag import UNetDragSpatioTemporalConditionModel, UNetDragSpatioTemporalConditionOutput
from .unet_svd_controlnet import UNetSpatioTemporalControlNetConditionModel
from .vae_tiny_decoder import AutoencoderKLTinyDecoder

__all__ = [
    "AllToFirstAttnProcessor",
    "AutoencoderKLTinyDecoder",
    "DragAnythingConditioningEmbedding",
    "DragAnythingControlNetModel",
    "DragAnythingControlNetOutput",
    "DragConditioning",
    "DragEmbedding",
    "UNetDragSpatioTemporalConditionModel",
    "UNetDragSpatioTemporalConditionOutput",
    "UNetSpatioTemporalControlNetConditionModel",
    "sincos_pos_embed_2d",
]
