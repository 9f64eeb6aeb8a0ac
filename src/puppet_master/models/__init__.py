"""Models: the drag-conditioned UNet, its attention processor and drag layers (docs/design.md §4)."""

from .attention import AllToFirstAttnProcessor
from .drag_modules import DragConditioning, DragEmbedding, sincos_pos_embed_2d
from .unet_drag import UNetDragSpatioTemporalConditionModel, UNetDragSpatioTemporalConditionOutput

__all__ = [
    "AllToFirstAttnProcessor",
    "DragConditioning",
    "DragEmbedding",
    "UNetDragSpatioTemporalConditionModel",
    "UNetDragSpatioTemporalConditionOutput",
    "sincos_pos_embed_2d",
]
