"""The ``angio`` pipeline (X-ray angiography video segmentation, RNPLL-style, MOSXAV)."""

from medml.pipelines.angio.pipeline import AngioConfig, AngioPipeline

__all__ = ["AngioConfig", "AngioPipeline"]
