"""Pipelines: drag-conditioned image-to-video sampling (docs/design.md §5): Puppet-Master and DragAnything."""

from .components import build_components, make_scheduler
from .draganything_components import build_draganything_components
from .loading import DEFAULT_MODEL_DIR, load_pipeline
from .pipeline_puppet_master import PuppetMasterPipeline, PuppetMasterPipelineOutput, guidance_scales
from .pipeline_draganything import DragAnythingPipeline, DragAnythingPipelineOutput, load_draganything_pipeline

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DragAnythingPipeline",
    "DragAnythingPipelineOutput",
    "PuppetMasterPipeline",
    "PuppetMasterPipelineOutput",
    "build_components",
    "build_draganything_components",
    "guidance_scales",
    "load_draganything_pipeline",
    "load_pipeline",
    "make_scheduler",
]
