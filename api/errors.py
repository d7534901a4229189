"""The API's one error hierarchy, mapped to RFC 9457 ``application/problem+json`` in one place.

Routes and dependencies raise :class:`ApiError` subclasses; :func:`install` registers the
handlers that turn them (and FastAPI's request validation errors, unknown routes, Kafka and
MongoDB outages, and anything unexpected) into problem documents.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from pymongo.errors import ConnectionFailure, ExecutionTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from schemas.envelope import error_field

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"
"""Problem ``type`` URIs are references relative to the API's base URL, e.g. ``/problems/not-found``."""


class FieldError(BaseModel):
    """One offending field of a request."""

    field: str = Field(examples=["definition.schedule.expression"])
    """Dotted path of the field, as named in the command (``definition.`` for a task's definition),
    or the query parameter / header name."""
    message: str = Field(examples=["invalid cron expression '61 * * * *'"])
    pointer: str | None = Field(default=None, examples=["#/schedule/expression"])
    """JSON pointer (RFC 6901) into the request body, when the field is in the body."""


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(examples=["/problems/validation"])
    title: str = Field(examples=["Request validation failed"])
    status: int = Field(examples=[422])
    detail: str | None = Field(default=None, examples=["schedule.expression: invalid cron expression"])
    instance: str | None = Field(default=None, examples=["/v1/tasks"])
    errors: list[FieldError] | None = None
    """For 422: every offending field."""


class ApiError(Exception):
    """Base of every error the API answers with; subclasses fix the status and problem type."""

    status: int = 500
    slug: str = "internal"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = list(errors) if errors else None
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    """The request is malformed in a way no field explains."""

    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ApiError):
    """No valid bearer token."""

    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None) -> None:
        # RFC 6750 section 3: no error code when the request carried no credentials at all.
        challenge = 'Bearer realm="scheduler"' + (', error="invalid_token"' if detail else "")
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    """The token is valid but lacks the role."""

    status, slug, title = 403, "forbidden", "Not allowed"


class NotFound(ApiError):
    """No such resource in the caller's tenant (another tenant's resources are not found either)."""

    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ApiError):
    """The route exists but not with this method."""

    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ApiError):
    """The command conflicts with the task's state (stale revision, completed task, id taken)."""

    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ApiError):
    """The request body exceeds the configured limit."""

    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(ApiError):
    """The request body is not JSON."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class Unprocessable(ApiError):
    """The request is well-formed but invalid; ``errors`` names the fields."""

    status, slug, title = 422, "validation", "Request validation failed"


class TooManyRequests(ApiError):
    """The tenant reached a quota; try again after ``Retry-After`` seconds (or delete tasks)."""

    status, slug, title = 429, "quota-exceeded", "Quota exceeded"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class ServiceUnavailable(ApiError):
    """Kafka or MongoDB cannot be reached; try again after ``Retry-After`` seconds."""

    status, slug, title = 503, "unavailable", "Service unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": description}
    for status, description in {
        401: "No valid bearer token (expired, tampered, unsigned, wrong audience or issuer)",
        403: "The token lacks the role this operation needs",
        422: "Invalid input; `errors` names every offending field",
        503: "Kafka or MongoDB unreachable; retry after `Retry-After` seconds",
    }.items()
}
"""Error responses every authenticated route documents in OpenAPI."""


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI response entries for extra problem statuses of a route."""
    described = {
        400: "The request body could not be read as JSON text (e.g. it is not UTF-8)",
        404: "No such task or execution in the caller's tenant",
        409: "Conflict with the task's state (stale `If-Match` revision, completed task)",
        413: "Request body larger than the configured limit",
        429: "The tenant reached a quota; retry after `Retry-After` seconds",
    }
    return {
        s: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": described.get(s, "Problem")}
        for s in statuses
    }


def problem_response(request: Request | None, error: ApiError) -> Response:
    """The problem+json response of an error."""
    return render_problem(error, request.url.path if request is not None else None)


def render_problem(error: ApiError, instance: str | None) -> Response:
    """Serialise ``error`` as an RFC 9457 document with its headers."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail or error.title,
        "instance": instance,
    }
    if error.errors:
        body["errors"] = [e.model_dump(exclude_none=True) for e in error.errors]
    try:
        content = orjson.dumps(body)
    except orjson.JSONEncodeError:
        # A message or field path echoing client text that is not valid Unicode (a lone
        # surrogate): show it escaped rather than fail while reporting the client's error.
        content = orjson.dumps(_printable(body))
    return Response(content, status_code=error.status, media_type=PROBLEM_MEDIA_TYPE, headers=error.headers)


def _printable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates as ``\\udXXX`` escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Request validation errors -> field paths
# ---------------------------------------------------------------------------------------------

DEFINITION_ROUTES = frozenset({"create_task", "update_task"})
"""Routes whose body is a task definition: its fields are named ``definition.<path>``."""


def validation_errors(errors: Sequence[Mapping[str, Any]], body: Any, route_name: str | None) -> list[FieldError]:
    """Turn pydantic/FastAPI error entries into :class:`FieldError` s naming each field."""
    out: list[FieldError] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = loc[0] if loc else "body"
        if err.get("type") == "json_invalid":
            out.append(FieldError(field="body", message=f"request body is not valid JSON: {message}", pointer="#"))
            continue
        if where == "body":
            path = error_field([p for p in loc[1:] if isinstance(p, int | str)], body)
            parts = [p for p in (path or "").split(".") if p]
            pointer = "#/" + "/".join(parts) if parts else "#"
            prefix = "definition" if route_name in DEFINITION_ROUTES else None
            field = ".".join(p for p in (prefix, *parts) if p) or "body"
            out.append(FieldError(field=field, message=message, pointer=pointer))
        else:
            # query, path, header, cookie: the parameter's name is the field.
            name = ".".join(str(p) for p in loc[1:]) or str(where)
            if where == "header":
                name = name.replace("_", "-").title()
            out.append(FieldError(field=name, message=message))
    return out


# ---------------------------------------------------------------------------------------------
# Business rejections (CommandRejected events seen while waiting) -> errors
# ---------------------------------------------------------------------------------------------


def rejection_error(reason: str, field: str | None) -> ApiError:
    """The error answering a ``CommandRejected`` event.

    The decider names the field of the command: ``task_id`` (missing task -> 404, id taken
    -> 409), ``execution_id`` and ``backfill_id`` (404), ``expected_revision`` (409), no field (a state conflict
    such as a completed task, 409), anything else (invalid input, 422).
    """
    if field == "task_id":
        return NotFound(reason) if "not found" in reason else Conflict(reason)
    if field in ("execution_id", "backfill_id"):
        return NotFound(reason)
    if field is None or field == "expected_revision":
        return Conflict(reason)
    pointer_parts = field.split(".")
    if pointer_parts[0] == "definition":
        pointer_parts = pointer_parts[1:]
    return Unprocessable(
        f"{field}: {reason}", errors=[FieldError(field=field, message=reason, pointer="#/" + "/".join(pointer_parts))]
    )


# ---------------------------------------------------------------------------------------------
# Installing the handlers
# ---------------------------------------------------------------------------------------------


def install(app: FastAPI, retry_after: int) -> None:
    """Register every exception handler on ``app``: the single place errors become HTTP."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return problem_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        route = request.scope.get("route")
        errors = validation_errors(exc.errors(), exc.body, getattr(route, "name", None))
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem_response(request, Unprocessable(detail, errors=errors))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        mapped: dict[int, type[ApiError]] = {
            400: BadRequest,
            401: Unauthorized,
            403: Forbidden,
            404: NotFound,
            405: MethodNotAllowed,
            413: PayloadTooLarge,
            415: UnsupportedMediaType,
            422: Unprocessable,
            503: ServiceUnavailable,
        }
        cls = mapped.get(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else None
        if cls is None:
            error = ApiError(detail)
            error.status, error.title, error.slug = exc.status_code, detail or "Error", "http"
        else:
            error = cls(detail)
        error.headers.update(exc.headers or {})
        return problem_response(request, error)

    async def on_kafka(request: Request, exc: Exception) -> Response:
        log.warning("kafka unavailable: %r", exc)
        return problem_response(request, ServiceUnavailable("Kafka is unreachable", retry_after=retry_after))

    async def on_mongo(request: Request, exc: Exception) -> Response:
        log.warning("views unavailable: %r", exc)
        return problem_response(request, ServiceUnavailable("the views are unreachable", retry_after=retry_after))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Never expected: the tests fuzz for it. Logged with the traceback, answered without it.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, ApiError("an unexpected error occurred"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(KafkaError, on_kafka)
    app.add_exception_handler(ConnectionFailure, on_mongo)
    app.add_exception_handler(ExecutionTimeout, on_mongo)
    app.add_exception_handler(Exception, on_unexpected)
