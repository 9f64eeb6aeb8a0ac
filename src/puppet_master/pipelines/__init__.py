"""Pipelines: drag-conditioned image-to-video sampling (docs/design.md §5): Puppet-Master and DragAnything."""

from .components import build_components, make_scheduler
from .draganything_components import build_draganything_components
from .loading import DEFAULT_MODEL_DIR, load_pipeline
from .pipeline_draganything import (
    DragAnythingPipeline,
    DragAnythingPipelineOutput,
    load_draganything_pipeline,
)
from .pipeline_puppet_master import (
    PuppetMasterPipeline,
    PuppetMasterPipelineOutput,
    guidance_scales,
)
from .pipeline_svd_base import SVDStylePipeline
from .schedulers import SCHEDULER_NAMES, scheduler_from_name

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DragAnythingPipeline",
    "DragAnythingPipelineOutput",
    "PuppetMasterPipeline",
    "PuppetMasterPipelineOutput",
    "SCHEDULER_NAMES",
    "SVDStylePipeline",
    "build_components",
    "build_draganything_components",
    "guidance_scales",
    "load_draganything_pipeline",
    "load_pipeline",
    "make_scheduler",
    "scheduler_from_name",
]
