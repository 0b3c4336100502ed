"""What /api/predict accepts, as pydantic models: the one place each parameter is validated, and the source of the
OpenAPI schema for it (the query's top_k, the JSON body of URLs, the multipart form)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Optional

from fastapi import Query, Request, UploadFile
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..constants import DEFAULT_TOP_K, MAX_TOP_K
from ..errors import BirdclfError, ImageTooLargeError
from .urlfetch import MAX_URL_LENGTH, check_url

__all__ = ["TopKText", "TopKJson", "ImageUrl", "UrlBody", "PredictForm", "PredictModels", "predict_models",
           "query_top_k", "invalid_request", "TOP_K_HELP"]

TOP_K_HELP = f"how many species to list per image (1 to {MAX_TOP_K}; default {DEFAULT_TOP_K})"
_MAX_SHOWN = 40


def _top_k_problem(value: Any) -> ValueError:
    shown = repr(value) if len(repr(value)) <= _MAX_SHOWN else repr(value)[: _MAX_SHOWN - 3] + "..."
    return ValueError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {shown}")


def _top_k_from_text(value: Any) -> int:
    """A query or form value: 1-3 ASCII digits (not "５", "1_0", "3.0", " 3" or "")."""
    if isinstance(value, str) and 0 < len(value) <= 3 and value.isascii() and value.isdigit() \
            and 1 <= int(value) <= MAX_TOP_K:
        return int(value)
    raise _top_k_problem(value)


def _top_k_from_json(value: Any) -> int:
    """A JSON value: an integer (not a bool, float or string)."""
    if type(value) is int and 1 <= value <= MAX_TOP_K:
        return value
    raise _top_k_problem(value)


TopKText = Annotated[int, Field(ge=1, le=MAX_TOP_K, description=TOP_K_HELP), BeforeValidator(_top_k_from_text)]
TopKJson = Annotated[int, Field(ge=1, le=MAX_TOP_K, description=TOP_K_HELP), BeforeValidator(_top_k_from_json)]


def _url_text(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise ValueError("url must be a non-empty string (urls: a non-empty list of them)")
    return value


def _checked_url(value: str) -> str:
    check_url(value)  # scheme, host and port well formed (the address is checked when it is fetched)
    return value


ImageUrl = Annotated[str, BeforeValidator(_url_text), AfterValidator(_checked_url),
                     Field(description="a public http(s) address of an image", examples=["https://example.org/b.jpg"],
                           json_schema_extra={"minLength": 1, "maxLength": MAX_URL_LENGTH,  # check_url's rules
                                              "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$"})]


class UrlBody(BaseModel):
    """A JSON body: one image URL (`url`), several (`urls`), or both (url first); fetched concurrently."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["url"], "properties": {"url": {"type": "string"}}},
        {"required": ["urls"], "properties": {"urls": {"type": "array"}}}]})

    url: Optional[ImageUrl] = None
    urls: Optional[list[ImageUrl]] = Field(None, min_length=1)
    top_k: Optional[TopKJson] = Field(None, description=TOP_K_HELP + "; the query's top_k wins")

    @model_validator(mode="after")
    def _some_url(self) -> UrlBody:
        if self.url is None and self.urls is None:
            raise ValueError('JSON body must be {"url": "https://..."} or {"urls": [...]}')
        return self

    @property
    def all_urls(self) -> list[str]:
        """url, then urls."""
        return ([self.url] if self.url is not None else []) + list(self.urls or [])


class PredictForm(BaseModel):
    """A multipart/form-data body: image files in `file` parts (empty parts are skipped), and an optional top_k."""

    file: list[UploadFile] = Field(min_length=1, description="the photos, each a non-empty image file")
    top_k: Optional[TopKText] = Field(None, description=TOP_K_HELP + "; the query's top_k wins")


@dataclass(frozen=True)
class PredictModels:
    """The request models with this server's limit on images per request in them (and in their schema)."""

    max_images: int
    url_body: type[UrlBody]
    form: type[PredictForm]

    def parse_urls(self, data: Any) -> UrlBody:
        """The JSON body, validated (BirdclfError: 400 or 413, in our words)."""
        try:
            body = self.url_body.model_validate(data)
        except ValidationError as exc:
            raise invalid_request(exc.errors(), self.max_images) from None
        if len(body.all_urls) > self.max_images:
            raise too_many_images(len(body.all_urls), self.max_images)
        return body

    def parse_form(self, files: list[Any], top_k: Any) -> PredictForm:
        """The multipart form's non-empty files and top_k, validated."""
        try:
            return self.form.model_validate({"file": files, "top_k": top_k})
        except ValidationError as exc:
            raise invalid_request(exc.errors(), self.max_images) from None


def predict_models(max_images: int) -> PredictModels:
    """Request models whose file and URL lists hold at most `max_images` items."""
    limit = Field(max_length=max_images, description=f"at most {max_images} (BIRDCLF_MAX_IMAGES) in one request")

    class UrlBodyLimited(UrlBody):
        __doc__ = UrlBody.__doc__
        urls: Optional[Annotated[list[ImageUrl], limit]] = Field(None, min_length=1)

    class PredictFormLimited(PredictForm):
        __doc__ = PredictForm.__doc__
        file: Annotated[list[UploadFile], limit] = Field(min_length=1, description="the photos, each a non-empty "
                                                                                   "image file")

    UrlBodyLimited.__name__ = UrlBodyLimited.__qualname__ = "UrlRequest"
    PredictFormLimited.__name__ = PredictFormLimited.__qualname__ = "PredictForm"
    return PredictModels(max_images, UrlBodyLimited, PredictFormLimited)


def too_many_images(count: int | str, limit: int) -> ImageTooLargeError:
    """The 413 for more images than BIRDCLF_MAX_IMAGES."""
    return ImageTooLargeError(f"{count} images in one request, over the limit of {limit}")


def invalid_request(errors: list[Any], max_images: int = 0) -> BirdclfError:
    """The first validation error as our own 400 (413 for too many images), without pydantic's wording."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "body")]
    kind, message = first.get("type", ""), str(first.get("msg", "invalid")).removeprefix("Value error, ")
    where = loc[0] if loc else "request"
    if kind == "too_long" and where in ("file", "urls"):
        return too_many_images(f"more than {max_images}", max_images)
    if kind == "too_short" and where == "file":
        return BirdclfError("no image: the multipart form holds no non-empty file (send photos as file parts, "
                            "e.g. curl -F file=@bird.jpg)")
    if kind == "too_short":
        return BirdclfError(f"{where} must be a non-empty list")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return BirdclfError('JSON body must be {"url": "https://..."} or {"urls": [...]}')
    if kind == "missing":
        return BirdclfError(f"{where} is required")
    if kind == "value_error" and (message.startswith(where) or where in ("request", "url", "urls")):
        return BirdclfError(message)
    if message.startswith("Input should be"):
        return BirdclfError(f"{'.'.join(loc) or 'request'} must be{message.removeprefix('Input should be')}")
    return BirdclfError(f"{'.'.join(loc) or 'request'}: {message}")


def query_top_k(request: Request, top_k: Annotated[TopKText, Query(description=TOP_K_HELP)] = DEFAULT_TOP_K
                ) -> Optional[int]:
    """The query's top_k, given at most once; None when it is not given (the body's top_k then counts)."""
    given = request.query_params.getlist("top_k")
    if len(given) > 1:
        raise BirdclfError(f"top_k may be given once, not {len(given)} times")
    return top_k if given else None
