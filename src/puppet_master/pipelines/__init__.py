"""Pipelines: drag-conditioned image-to-video sampling (docs/design.md §5)."""

from .components import build_components, make_scheduler
from .loading import DEFAULT_MODEL_DIR, load_pipeline
from .pipeline_puppet_master import PuppetMasterPipeline, PuppetMasterPipelineOutput, guidance_scales

__all__ = ["DEFAULT_MODEL_DIR", "PuppetMasterPipeline", "PuppetMasterPipelineOutput", "build_components", "guidance_scales", "load_pipeline", "make_scheduler"]
