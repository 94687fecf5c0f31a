"""CT-SSG chest CT classification (importing registers the pipeline)."""

from medml.pipelines.ct.pipeline import CtPipeline

__all__ = ["CtPipeline"]
