"""The ``fundus`` pipeline (colour fundus photographs: optic disc/cup, vCDR, glaucoma, fovea; REFUGE2)."""

from medml.pipelines.fundus.config import FundusConfig
from medml.pipelines.fundus.pipeline import FundusPipeline

__all__ = ["FundusConfig", "FundusPipeline"]
