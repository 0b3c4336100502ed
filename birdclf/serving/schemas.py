"""The API's JSON shapes as pydantic models, for the OpenAPI schema and the docs page."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

__all__ = ["TopK", "PredictionOut", "ModelRef", "PredictResponse", "UrlRequest", "ErrorResponse", "HealthResponse",
           "LabelsResponse", "ModelResponse"]


class TopK(BaseModel):
    """One candidate species."""

    label: str
    probability: float = Field(ge=0, le=1)


class PredictionOut(BaseModel):
    """The answer for one image."""

    filename: str = Field(description="the multipart file name, the URL, or 'image' for a raw body")
    top_k: list[TopK] = Field(description="most likely species first")
    bird_probability: Optional[float] = Field(description="probability that the photo shows a bird at all")
    is_bird: Optional[bool] = Field(description="bird_probability >= the model's bird threshold")
    verdict: Literal["species", "unsure", "not_a_bird"] = Field(
        description="species: confidently top_k[0]; unsure: a bird, but top_k are only suggestions; "
                    "not_a_bird: probably no bird in the photo")
    box: Optional[list[int]] = Field(
        default=None, min_length=4, max_length=4,
        description="where the bird is: [x, y, width, height] in the photo's pixels (after EXIF rotation); null "
                    "when no bird was found or the model has no bird map (models exported before the find stage)")
    birds: Optional[int] = Field(default=None, ge=0, description="bird-like places found in the photo; the answer "
                                                                   "is for the most bird-like one")


class ModelRef(BaseModel):
    """Which model answered."""

    name: str
    version: str


class PredictResponse(BaseModel):
    """POST /api/predict's answer."""

    model: ModelRef
    top_k: int
    predictions: list[PredictionOut]
    time_ms: float


class UrlRequest(BaseModel):
    """A JSON body: one image URL or several (fetched concurrently, public http(s) addresses only)."""

    url: Optional[str] = Field(None, examples=["https://example.org/bird.jpg"])
    urls: Optional[list[str]] = None
    top_k: Optional[int] = Field(None, ge=1, le=50)


class ErrorResponse(BaseModel):
    """Every error, whatever its status."""

    error: str = Field(description="what went wrong, in words")
    status: int = Field(description="the HTTP status again")


class HealthResponse(BaseModel):
    """GET /api/health's answer (503 with status 'error' or 'misconfigured' when the model cannot serve)."""

    status: Literal["ok", "error", "misconfigured"]
    birdclf: str
    model: Optional[dict[str, Any]] = None
    error: Optional[str] = None


class LabelsResponse(BaseModel):
    """GET /api/labels's answer."""

    model: dict[str, Any]
    labels: list[str]


class ModelResponse(BaseModel):
    """GET /api/model's answer: model info and its card."""

    model: dict[str, Any]
    card: dict[str, Any]
