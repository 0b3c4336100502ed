"""The API's OpenAPI schema: FastAPI's own, with /api/predict's body taken from the request models and each error
answer it really gives described, and without FastAPI's default 422 (invalid requests are answered 400)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from ..constants import API_PREFIX
from .prediction import IMAGE_TYPES, PredictionService
from .schemas import ErrorResponse

__all__ = ["error_responses", "predict_openapi", "api_openapi"]


def error_responses(**cases: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: status -> {error, status} with what it means on this route."""
    return {int(status[1:]): {"model": ErrorResponse, "description": text} for status, text in cases.items()}


def predict_openapi(service: PredictionService) -> tuple[dict[str, Any], dict[int | str, dict[str, Any]]]:
    """The request body (from the request models) and every error answer of /api/predict."""
    limits = service.settings
    image = {"schema": {"type": "string", "format": "binary", "description": (
        f"one image (JPEG, PNG, WebP, GIF, BMP or TIFF) of at most {limits.max_bytes} bytes (BIRDCLF_MAX_BYTES) and "
        f"{limits.max_pixels} pixels (BIRDCLF_MAX_PIXELS)")}}
    forms = {"multipart/form-data": {"schema": service.models.form.model_json_schema()},
             "application/json": {"schema": service.models.url_body.model_json_schema()}}
    body = {"requestBody": {"required": True, "content": {**{media: image for media in IMAGE_TYPES}, **forms},
                            "description": "one image as the raw body, image files as multipart `file` parts, or "
                            f"JSON with image URLs; at most {limits.max_images} images (BIRDCLF_MAX_IMAGES), each "
                            f"of at most {limits.max_bytes} bytes and {limits.max_pixels} pixels"}}
    responses = error_responses(
        _400="a parameter is invalid, a body is malformed, an image cannot be decoded, or a URL cannot be fetched",
        _408="the request body did not arrive within BIRDCLF_REQUEST_TIMEOUT seconds",
        _413=f"over a limit: {limits.max_images} images, {limits.max_bytes} bytes or {limits.max_pixels} pixels "
             "an image, the decode memory, or the size of a JSON body or form field",
        _415="the Content-Type is not image/*, application/octet-stream, multipart/form-data or application/json",
        _503="busy (retry after the Retry-After header's seconds), past the request deadline, or no model loaded")
    return body, responses


def api_openapi(app: FastAPI, service: PredictionService) -> Callable[[], dict[str, Any]]:
    """app.openapi for this service: /api/predict's body and errors from its limits, no 422 anywhere."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        body, errors = predict_openapi(service)
        predict = schema["paths"][f"{API_PREFIX}/predict"]["post"]
        predict.update(body)
        predict["responses"].update({str(status): {"description": answer["description"], "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
            for status, answer in errors.items()})
        schema["components"]["schemas"].setdefault("ErrorResponse", ErrorResponse.model_json_schema())
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(name, None)
        return schema
    return openapi
