"""MONAI-style transforms that MONAI lacks (ECG filters, ...); import them from their modules."""

from medml.transforms.angio import ToUnitGrey, ToUnitGreyd, frame_preprocessing, to_unit_grey  # noqa: F401
