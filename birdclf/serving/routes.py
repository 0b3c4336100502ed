"""The API's routes, each declared once on one APIRouter; what a route needs comes in through Depends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..constants import API_PREFIX
from ..settings import Settings
from .openapi import error_responses
from .prediction import PredictionService
from .request_models import query_top_k
from .schemas import HealthResponse, LabelsResponse, ModelResponse, PredictResponse

__all__ = ["router", "get_service", "get_settings_of_app", "route_methods", "Service", "AppSettings"]

router = APIRouter(prefix=API_PREFIX)
_NO_MODEL = error_responses(_503="no model loaded (the server log says why), or past the request deadline")


def get_service(request: Request) -> PredictionService:
    """The app's one PredictionService (made by create_app)."""
    return request.app.state.service


def get_settings_of_app(service: Annotated[PredictionService, Depends(get_service)]) -> Settings:
    """The settings the app was made with (never read from the environment here)."""
    return service.settings


Service = Annotated[PredictionService, Depends(get_service)]
AppSettings = Annotated[Settings, Depends(get_settings_of_app)]
QueryTopK = Annotated[int | None, Depends(query_top_k)]


def _get(path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """router.get that answers HEAD too (HEAD stays out of the schema)."""
    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        router.add_api_route(path, endpoint, methods=["GET"], **options)
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
        return endpoint
    return register


@router.post("/predict", response_model=PredictResponse, summary="Top-k species for one or more images")
async def predict(request: Request, service: Service, top_k: QueryTopK) -> JSONResponse:
    """Top-k species, the bird probability and the verdict for each image of the request."""
    return JSONResponse(await service.predict(request, top_k))


@_get("/health", response_model=HealthResponse, summary="Is the model loaded (anonymous on Azure, for probes)",
      responses={503: {"model": HealthResponse, "description": "the model cannot serve"}})
async def health(service: Service) -> JSONResponse:
    """ok with the model's facts, or 503 saying why not."""
    status, body = await service.health()
    return JSONResponse(body, status_code=status)


@_get("/labels", response_model=LabelsResponse, responses=_NO_MODEL, summary="The species the model knows")
async def labels(service: Service) -> JSONResponse:
    """The model's facts and its labels."""
    predictor = await service.ready_predictor()
    return JSONResponse({"model": predictor.info(), "labels": list(predictor.labels)})


@_get("/model", response_model=ModelResponse, responses=_NO_MODEL, summary="Model info and its model card")
async def model_card(service: Service) -> JSONResponse:
    """The model's facts and its card."""
    predictor = await service.ready_predictor()
    return JSONResponse({"model": predictor.info(), "card": dict(predictor.config.card)})


_METHOD_ORDER = ("GET", "HEAD", "POST")


def route_methods() -> dict[str, tuple[str, ...]]:
    """Route name (under /api) -> its methods, from the router itself, plus the docs page and the schema."""
    found: dict[str, set[str]] = {}
    for route in router.routes:
        found.setdefault(route.path[len(API_PREFIX) + 1:], set()).update(getattr(route, "methods", ()))
    out = {name: tuple(m for m in _METHOD_ORDER if m in methods) for name, methods in found.items()}
    return {**out, "docs": ("GET",), "openapi.json": ("GET",)}
