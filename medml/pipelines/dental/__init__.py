"""The ``dental`` pipeline: HierarchicalDet (hierarchical diffusion detection) on DENTEX panoramics."""

from medml.pipelines.dental.config import DentalConfig
from medml.pipelines.dental.pipeline import DentalPipeline

__all__ = ["DentalConfig", "DentalPipeline"]
