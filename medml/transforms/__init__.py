"""MONAI-style transforms that MONAI lacks (ECG filters, ...); import them from their modules.

`apply_transform` runs a composed MONAI pipeline and lets a transform's own error (a `medml` `SignalError` naming
the file, say) reach the caller: MONAI wraps every exception raised inside a `Compose` in
``RuntimeError("applying transform ...")``, once per nesting level, which would hide the reason from
``failures.csv`` and from the engine's one-line errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["apply_transform"]

_MONAI_WRAPPER = "applying transform"


def apply_transform(transform: Callable[[Any], Any], data: Any) -> Any:
    """``transform(data)``, re-raising the original exception in place of MONAI's ``RuntimeError`` wrappers."""
    try:
        return transform(data)
    except RuntimeError as err:
        cause: BaseException = err
        while isinstance(cause, RuntimeError) and str(cause).startswith(_MONAI_WRAPPER) and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is err:
            raise
        raise cause from None
