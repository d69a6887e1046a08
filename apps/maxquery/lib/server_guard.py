"""Checks in front of MONAI Label's HTTP endpoints, and the server's CORS policy.

MONAI Label runs training, scoring and batch inference in a background process: the request is queued first and
only read by the app later, so a bad option would come back as a failed task, not as an answer to the request. The
routes installed here sit in front of MONAI Label's own routes (same paths, same roles), check the request with
the app, answer HTTP 4xx naming the problem, and hand a valid request to MONAI Label's own handler unchanged:

- ``POST /infer/{model}``: the ``params`` form field must be a JSON object that does not set ``image``, and no
  label is uploaded (the app's models take none); an uploaded file or a session image is marked as such for
  :meth:`MaxQueryApp.infer`, which otherwise accepts only datastore image ids. The inference runs in a worker
  thread, so the server keeps answering (``/info/``, the datastore) meanwhile; at most ``infer_concurrency``
  inferences run at once, and a request beyond that is answered at once with HTTP 503 and a ``Retry-After``
  header instead of waiting in an unbounded queue;
- ``POST /train/{model}``, ``POST /train/``, ``POST /scoring/{method}``, ``POST /scoring/``,
  ``POST /batch/infer/{model}``: the options are checked before the task is queued;
- ``PUT /model/{model}`` and ``DELETE /model/{model}``: refused (HTTP 403); the served model is replaced by
  training only, which keeps a backup;
- ``GET`` and ``DELETE /session/{session_id}``: the id must be a plain id (it names a folder).

CORS: MONAI Label allows every origin, with credentials, unless ``MONAI_LABEL_CORS_ORIGINS`` is set. This app
allows no cross-origin request unless origins are configured (3D Slicer is no browser and OHIF is served by the
server itself, so neither needs one).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, UploadFile
from monailabel.config import settings
from monailabel.endpoints import batch_infer, infer, scoring, session, train
from monailabel.endpoints.infer import ResultType
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.utils.app import app_instance
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from .options import NAME_PATTERN, shown

__all__ = [
    "DEFAULT_INFER_CONCURRENCY",
    "GuardedApp",
    "InferenceSlots",
    "configure_cors",
    "cors_origins",
    "install",
    "is_uploaded_input",
]

logger = logging.getLogger(__name__)

_UPLOADED: ContextVar[bool] = ContextVar("maxquery_uploaded_input", default=False)
MAX_PARAMS_CHARS = 100_000
DEFAULT_INFER_CONCURRENCY = 2
RETRY_AFTER_SECONDS = 5
MODEL_FILE_REFUSAL = (
    "the served model is not replaced or deleted through /model: training (POST /train/{model}) replaces it only "
    "with a better model and keeps a backup; an operator restores a backup with apps/maxquery/restore_model.py."
)


class GuardedApp(Protocol):
    """What the routes need from the app."""

    def check_infer_call(self, model: str, image: str, params: dict[str, Any], uploaded: bool) -> None:
        """Check an inference request before MONAI Label reads it (raises ``HTTPException``)."""

    def check_background_request(self, kind: str, name: str | None, params: dict[str, Any]) -> None:
        """Check a training/scoring/batch-inference request before it is queued (raises ``HTTPException``)."""


class InferenceSlots:
    """A fixed number of inference slots, taken without waiting.

    Args:
        size: how many inferences may run at once.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"the number of inference slots must be at least 1, got {size}.")
        self.size = int(size)
        self._semaphore = threading.BoundedSemaphore(self.size)

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        return self._semaphore.acquire(blocking=False)

    def release(self) -> None:
        """Give a slot back."""
        self._semaphore.release()


_SLOTS = InferenceSlots(DEFAULT_INFER_CONCURRENCY)


def is_uploaded_input() -> bool:
    """Whether the inference request being served carries its image (an upload or a session), not an image id."""
    return _UPLOADED.get()


@contextmanager
def _uploaded(value: bool) -> Iterator[None]:
    token = _UPLOADED.set(value)
    try:
        yield
    finally:
        _UPLOADED.reset(token)


def _guarded() -> GuardedApp | None:
    instance = app_instance()
    return instance if hasattr(instance, "check_background_request") else None


def _params_object(params: str) -> dict[str, Any]:
    if len(params or "") > MAX_PARAMS_CHARS:
        raise HTTPException(status_code=422, detail=f"params: at most {MAX_PARAMS_CHARS} characters.")
    try:
        parsed = json.loads(params) if params else {}
    except ValueError as error:
        raise HTTPException(status_code=422, detail=f"params must be a JSON object: {error}") from error
    if not isinstance(parsed, dict):
        raise HTTPException(status_code=422, detail=f"params must be a JSON object, got {type(parsed).__name__}.")
    return parsed


def _check_session(session_id: str) -> None:
    if not NAME_PATTERN.fullmatch(session_id or ""):
        raise HTTPException(status_code=404, detail="Session Not Found")


def _background(kind: str, name: str | None, params: dict | None) -> None:
    app = _guarded()
    if app is not None:
        app.check_background_request(kind, name, params or {})


def _task_snapshot(task: Any) -> Any:
    """A JSON-ready copy of the task record that MONAI Label returns for a background request.

    MONAI Label hands back the very dict its worker thread goes on filling, which soon holds a ``deque`` of log
    lines; serialised at that moment, the answer is an HTTP 500. The copy is taken at once and holds lists.
    """
    if not isinstance(task, dict):
        return task
    return {key: list(value) if isinstance(value, deque) else value for key, value in dict(task).items()}


def _router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    role_user = settings.MONAI_LABEL_AUTH_ROLE_USER
    role_annotator = settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
    role_admin = settings.MONAI_LABEL_AUTH_ROLE_ADMIN

    @router.post("/infer/{model}")
    async def guarded_infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: ResultType | None = None,
        user: User = Depends(RBAC(role_user)),
    ) -> Any:
        app = _guarded()
        uploaded = bool(file)
        if app is not None:
            if label:
                raise HTTPException(status_code=422, detail="label: the app's models take no label as input.")
            if session_id:
                _check_session(session_id)
                sessions = app_instance().sessions()
                if sessions is None or sessions.get_session(session_id) is None:
                    raise HTTPException(status_code=404, detail=f"session '{shown(session_id)}' not found.")
                uploaded = True
            app.check_infer_call(model, image, _params_object(params), uploaded)
        slots = _SLOTS
        if not slots.try_acquire():
            raise HTTPException(
                status_code=503,
                detail=(
                    f"the server is already running {slots.size} inference request(s), its limit (--conf "
                    f"infer_concurrency); retry in {RETRY_AFTER_SECONDS} s."
                ),
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

        def run() -> Any:
            with _uploaded(uploaded):
                return infer.run_inference(background_tasks, model, image, session_id, params, file, label, output)

        try:
            return await run_in_threadpool(run)
        finally:
            slots.release()

    @router.post("/train/{model}")
    async def guarded_train_model(
        model: str,
        params: dict | None = None,
        run_sync: bool | None = False,
        enqueue: bool | None = False,
        user: User = Depends(RBAC(role_admin)),
    ) -> Any:
        _background("train", model, params)
        return _task_snapshot(train.run_model(model, params, run_sync, enqueue))

    @router.post("/train/")
    async def guarded_train_all(
        params: dict | None = None, run_sync: bool | None = False, user: User = Depends(RBAC(role_admin))
    ) -> Any:
        _background("train", None, params)
        return _task_snapshot(train.run(params, run_sync))

    @router.post("/scoring/{method}")
    async def guarded_scoring_method(
        method: str,
        params: dict | None = None,
        run_sync: bool | None = False,
        user: User = Depends(RBAC(role_annotator)),
    ) -> Any:
        _background("scoring", method, params)
        return _task_snapshot(scoring.run_method(method, params, run_sync))

    @router.post("/scoring/")
    async def guarded_scoring_all(
        params: dict | None = None, run_sync: bool | None = False, user: User = Depends(RBAC(role_annotator))
    ) -> Any:
        _background("scoring", None, params)
        return _task_snapshot(scoring.run(params, run_sync))

    @router.post("/batch/infer/{model}")
    async def guarded_batch_infer(
        model: str,
        images: BatchInferImageType | None = BatchInferImageType.IMAGES_ALL,
        params: dict | None = None,
        run_sync: bool | None = False,
        user: User = Depends(RBAC(role_admin)),
    ) -> Any:
        _background("batch_infer", model, {**(params or {}), "images": images.value if images else "all"})
        return _task_snapshot(batch_infer.run(model, images, params, run_sync))

    @router.put("/model/{model}")
    async def guarded_model_upload(model: str, user: User = Depends(RBAC(role_annotator))) -> Any:
        raise HTTPException(status_code=403, detail=MODEL_FILE_REFUSAL)

    @router.delete("/model/{model}")
    async def guarded_model_delete(model: str, user: User = Depends(RBAC(role_annotator))) -> Any:
        raise HTTPException(status_code=403, detail=MODEL_FILE_REFUSAL)

    @router.get("/session/{session_id}")
    async def guarded_get_session(
        session_id: str, update_ts: bool = False, image: bool = False, user: User = Depends(RBAC(role_user))
    ) -> Any:
        _check_session(session_id)
        return session.get_session(session_id, update_ts, image)

    @router.delete("/session/{session_id}")
    async def guarded_remove_session(session_id: str, user: User = Depends(RBAC(role_user))) -> Any:
        _check_session(session_id)
        return session.remove_session(session_id)

    return router


def cors_origins() -> list[str]:
    """The cross-origin origins allowed: MONAI Label's ``MONAI_LABEL_CORS_ORIGINS`` (none when it is unset)."""
    return [str(origin).rstrip("/") for origin in settings.MONAI_LABEL_CORS_ORIGINS or []]


def _cors_kwargs(origins: Iterable[str]) -> dict[str, Any]:
    origins = list(origins)
    return {
        "allow_origins": origins,
        # credentials (cookies, authorization headers) are sent cross-origin only to origins named one by one
        "allow_credentials": bool(origins) and "*" not in origins,
        "allow_methods": ["*"],
        "allow_headers": ["*"],
    }


def configure_cors(app: FastAPI, origins: Iterable[str]) -> None:
    """Allow cross-origin requests from ``origins`` only (none: same-origin only), with MONAI Label's CORS layer.

    MONAI Label adds its CORS middleware when its module is imported, before any app code runs, so the middleware
    is reconfigured where it is: in the built middleware stack if the server has started, and in the app's
    middleware list for any later build.
    """
    kwargs = _cors_kwargs(origins)
    for middleware in app.user_middleware:
        if middleware.cls is CORSMiddleware:
            middleware.kwargs.update(kwargs)
    layer, depth = app.middleware_stack, 0
    while layer is not None and depth < 32:
        if isinstance(layer, CORSMiddleware):
            CORSMiddleware.__init__(layer, layer.app, **kwargs)
        layer, depth = getattr(layer, "app", None), depth + 1
    logger.info("CORS: cross-origin requests allowed from %s", kwargs["allow_origins"] or "no origin")


def install(app: FastAPI, infer_concurrency: int = DEFAULT_INFER_CONCURRENCY) -> None:
    """Put the checking routes in front of MONAI Label's routes and apply the CORS policy.

    Routes installed by an earlier instance of the app (MONAI Label may load the app's modules again) are replaced,
    so that the routes and the app share this module.

    Args:
        app: MONAI Label's FastAPI application.
        infer_concurrency: how many inference requests may run at once.
    """
    global _SLOTS
    _SLOTS = InferenceSlots(infer_concurrency)
    configure_cors(app, cors_origins())
    routes = _router().routes
    for route in routes:
        route.maxquery_guard = True  # type: ignore[attr-defined]
    app.router.routes[:] = routes + [r for r in app.router.routes if not getattr(r, "maxquery_guard", False)]
    logger.info("request checks installed in front of MONAI Label's infer, train, scoring and model routes.")
