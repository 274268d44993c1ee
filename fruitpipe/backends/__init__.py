"""Backends: where data, models and training runs live. ``local`` (a folder) or ``aws`` (S3, Step Functions)."""

from .base import (Backend, DataStore, ModelRegistry, ModelVersion, NotFound, RetrainRunning,
                   RetrainStatus, Trainer, UploadResult, VersionRejected)

__all__ = ["Backend", "DataStore", "ModelRegistry", "ModelVersion", "NotFound", "RetrainRunning",
           "RetrainStatus", "Trainer", "UploadResult", "VersionRejected"]
