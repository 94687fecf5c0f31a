"""ProtoECGNet on PTB-XL: importing this package registers the ``ecg`` pipeline."""

from medml.pipelines.ecg import pipeline  # noqa: F401  (registration side effect)
