"""Shared state of one app: the backend, the live-model holder, auth, metrics."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import backbone as backbone_spec
from ..backbone import BackboneError
from ..backends.base import Backend
from ..bundle import BundleError
from ..capture import Capturer
from ..rollback import RollbackGuard
from ..shadow import Shadow
from ..classifier import Backbone, Classifier
from .errors import ApiError
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("fruitpipe.api")


class ModelHolder:
    """The live :class:`Classifier`, re-read from the registry when its pointer moves.

    ``get()`` checks the pointer at most every ``refresh_seconds`` (a ``stat`` locally), loads
    the new version on the shared :class:`Backbone` (only the small head is read) and swaps the
    reference in one assignment. A request that already holds the old classifier finishes with
    it; nothing is closed under its feet. A version that fails to load leaves the old one live.
    """

    def __init__(self, backend: Backend, settings: Settings, metrics: Metrics) -> None:
        self.registry = backend.registry
        self.settings = settings
        self.metrics = metrics
        self._backbones: dict[str, Backbone] = {}  # registry name -> the one shared instance
        self._backbones_lock = threading.Lock()
        self._current: Classifier | None = None
        self._signature: Any = object()
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.on_swap: Any = None  # called (old version or None, new version) after each swap

    @property
    def backbone(self) -> Backbone:
        """The default backbone (MobileNetV2), shared."""
        return self.backbone_for(backbone_spec.DEFAULT)

    def backbone_for(self, spec: backbone_spec.Spec) -> Backbone:
        """The shared :class:`Backbone` of ``spec`` (loaded on first use; ``backbone_path`` is the
        default backbone's local copy, the others are found by :func:`fruitpipe.backbone.resolve`)."""
        with self._backbones_lock:
            if spec.name not in self._backbones:
                self._backbones[spec.name] = Backbone(
                    spec, self.settings.backbone_path if spec is backbone_spec.DEFAULT else None,
                    num_threads=self.settings.inference_threads, workers=self.settings.inference_workers)
            return self._backbones[spec.name]

    def _signature_now(self) -> Any:
        sig = getattr(self.registry, "pointer_signature", None)
        return sig() if callable(sig) else self.registry.live_version()

    def refresh(self, force: bool = False) -> None:
        """Check the pointer now; load and swap if it moved. Only one thread loads at a time."""
        if not self._lock.acquire(blocking=self._current is None or force):
            return  # another request is already refreshing; keep serving the current model
        try:
            self._next_check = time.monotonic() + self.settings.model_refresh_seconds
            signature = self._signature_now()
            if signature == self._signature and not force and self._current is not None:
                return
            version = self.registry.live_version()
            if version is None:
                self._signature = signature
                return
            if self._current is not None and self._current.version == version:
                self._signature = signature
                return
            try:
                clf = Classifier(self.registry.fetch(version), backbones=self.backbone_for)
            except (BundleError, BackboneError, OSError, ValueError, LookupError) as exc:
                self.last_error = f"cannot load model {version}: {exc}"
                log.error(self.last_error)
                return  # keep the old one; try again at the next check
            old = self._current.version if self._current is not None else None
            self._current = clf  # the swap: one reference assignment
            self._signature = signature
            self.last_error = None
            self.metrics.set_model(clf.version)
            log.info("serving model %s", clf.version)
            if self.on_swap is not None:
                self.on_swap(old, clf.version)
        finally:
            self._lock.release()

    def load_version(self, version: str) -> Classifier:
        """``version`` from the registry on the shared backbone (the shadow's candidate)."""
        return Classifier(self.registry.fetch(version), backbones=self.backbone_for)

    def get(self) -> Classifier:
        if self._current is None or time.monotonic() >= self._next_check:
            self.refresh()
        clf = self._current
        if clf is None:
            raise ApiError(503, "no_model", self.last_error or "no live model in the registry yet")
        return clf

    @property
    def current(self) -> Classifier | None:
        return self._current


@dataclass
class AppState:
    backend: Backend
    settings: Settings
    holder: ModelHolder
    metrics: Metrics
    static_dir: Path
    capture: Capturer
    shadow: Shadow
    rollback: RollbackGuard


def state(request: Request) -> AppState:
    return request.app.state.fruitpipe


def check_admin(authorization: str, settings: Settings) -> None:
    """Check an ``Authorization`` header value against the admin token.

    Raises :class:`ApiError` 401 without a bearer token, 403 with a wrong one, 503 when the
    server has no token configured or cannot read it now (writes are denied, never waved
    through). The comparison takes constant time.
    """
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "unauthorized", "this action needs 'Authorization: Bearer <admin token>'",
                       {"WWW-Authenticate": "Bearer"})
    try:
        expected = settings.token_provider()
    except Exception:  # noqa: BLE001 - e.g. Secrets Manager unreachable: deny, and say so
        log.exception("cannot read the admin token")
        raise ApiError(503, "auth_unavailable", "the admin token cannot be read right now; try again later") from None
    if not expected:
        raise ApiError(503, "auth_unavailable", "no admin token is configured on the server")
    if not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(403, "forbidden", "the admin token is not valid")


# Declares the bearer scheme in the OpenAPI document (so /docs has an "Authorize" button); the
# check itself is check_admin, which gives our own error codes.
BEARER = HTTPBearer(auto_error=False, description="the admin token (see docs/api.md, Auth)")


def require_admin(request: Request,
                  _credentials: HTTPAuthorizationCredentials | None = Security(BEARER)) -> None:
    """The write routes' dependency. :class:`~fruitpipe.api.middleware.RequestGuard` finds the routes
    that declare it and runs :func:`check_admin` before their body is read; this repeats the check
    where the app runs without the guard."""
    check_admin(request.headers.get("authorization", ""), state(request).settings)
