"""Training: the shared trainer, uniform task sampling and self-describing checkpoints.

Names are imported lazily so that ``chatnt --help`` does not pay for torch and datasets.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "chatnt_core.training.config",
    "load_train_config": "chatnt_core.training.config",
    "Trainer": "chatnt_core.training.trainer",
    "TrainResult": "chatnt_core.training.trainer",
    "load_model_from_checkpoint": "chatnt_core.training.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'chatnt_core.training' has no attribute {name!r}")
