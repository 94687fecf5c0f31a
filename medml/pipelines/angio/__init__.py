"""The ``angio`` pipeline (X-ray angiography video segmentation, RNPLL-style, MOSXAV)."""

from medml.pipelines.angio.config import AngioConfig
from medml.pipelines.angio.pipeline import AngioPipeline

__all__ = ["AngioConfig", "AngioPipeline"]
