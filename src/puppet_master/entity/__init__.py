"""DragAnything's entity representation: masks, DIFT features and per-frame conditions (Wu et al. 2024).

* :mod:`.masks`: entity masks (user files, GrabCut or SAM), drag → entity assignment,
  inscribed-circle radius;
* :mod:`.dift`: diffusion features of the first frame from an SD-1.5 UNet, averaged per entity;
* :mod:`.conditions`: the per-frame Gaussian trajectory maps and entity-feature maps.
"""

from .conditions import DragAnythingConditions, draganything_conditions, gaussian_disc_template
from .dift import DIFT_ENSEMBLE, DIFT_TIMESTEP, DIFT_UP_BLOCK, DiftFeaturizer, entity_features, pool_channels
from .masks import (
    MAX_RADIUS,
    assign_drags_to_masks,
    inscribed_radius,
    load_mask,
    load_sam_state_dict,
    resize_mask,
    sam_entity_masks,
    segment_entities,
)

__all__ = [
    "DIFT_ENSEMBLE",
    "DIFT_TIMESTEP",
    "DIFT_UP_BLOCK",
    "DiftFeaturizer",
    "DragAnythingConditions",
    "MAX_RADIUS",
    "assign_drags_to_masks",
    "draganything_conditions",
    "entity_features",
    "gaussian_disc_template",
    "inscribed_radius",
    "load_mask",
    "load_sam_state_dict",
    "pool_channels",
    "resize_mask",
    "sam_entity_masks",
    "segment_entities",
]
