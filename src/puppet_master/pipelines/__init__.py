"""Pipelines: drag-conditioned image-to-video sampling (DESIGN §5)."""

from .components import build_components, make_scheduler
from .pipeline_puppet_master import PuppetMasterPipeline, PuppetMasterPipelineOutput, guidance_scales

__all__ = ["PuppetMasterPipeline", "PuppetMasterPipelineOutput", "build_components", "guidance_scales", "make_scheduler"]
