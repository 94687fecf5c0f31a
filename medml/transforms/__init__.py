"""MONAI-style transforms that MONAI lacks (ECG filters, ...); import them from their modules."""
