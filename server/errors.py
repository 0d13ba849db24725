"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

One exception type carries status, type, code and param from wherever a request fails to the
handlers below, which are the only place an error body is written. Unexpected exceptions become
a 500 whose message names no path, traceback or object address; the details go to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        type="not_found_error",
        param="model",
        code="model_not_found",
    )


def unavailable(message: str, *, retry_after: int | None = None) -> APIError:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return APIError(503, message, type="server_error", code="unavailable", headers=headers)


def internal_error() -> APIError:
    return APIError(500, "The server had an error while processing your request.", type="server_error")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence and the offending field, from pydantic's error list."""
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request.", None
    if first.get("type") == "missing" and param:
        return f"Missing required parameter: '{param}'.", param
    message = str(first.get("msg", "Invalid value"))
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"Invalid value for '{param}': {message}{more}." if param else f"{message}{more}."), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation_error(exc)
        return error_response(invalid_request(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = APIError(
                404, f"Unknown request URL: {request.method} {request.url.path}.",
                type="not_found_error", code="unknown_url",
            )
        elif exc.status_code == 405:
            error = APIError(
                405, f"Method {request.method} is not allowed for {request.url.path}.",
                type="invalid_request_error", code="method_not_allowed",
            )
        elif exc.status_code == 413:
            error = APIError(
                413, str(exc.detail), type="invalid_request_error", code="request_too_large",
            )
        else:
            error = APIError(exc.status_code, str(exc.detail), type="invalid_request_error")
        return error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(internal_error())
