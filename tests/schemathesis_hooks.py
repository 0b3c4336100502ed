"""A schemathesis check of ours (loaded through SCHEMATHESIS_HOOKS by tests/test_schema_fuzz.py)."""

from __future__ import annotations

from typing import Any

import schemathesis

__all__ = ["schema_valid_requests_pass_validation"]

# Words of the request models' and parsers' refusals (birdclf/serving/request_models.py, service.py): a request the
# schema allows may be refused for its content (bytes that are no image, a URL that cannot be fetched), never these.
_FORM_REFUSALS = ("top_k", "url must", "urls must", "JSON body must", "is required", "not valid JSON",
                  "malformed multipart", "may be given once", "invalid request")


@schemathesis.check
def schema_valid_requests_pass_validation(ctx: Any, response: Any, case: Any) -> None:
    """A schema-valid request answered 400 was refused for its content, not for its form."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return
    error = str(response.json().get("error", ""))
    if any(words in error for words in _FORM_REFUSALS):
        raise AssertionError(f"a request the schema allows was refused as malformed: {error}")
