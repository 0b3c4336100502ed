"""The end users' page (app.ipynb under Voila): upload photos, call the prediction function, show the species."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from ..constants import DEFAULT_TOP_K, SPECIES_INFO_URL
from ..settings import get_settings

__all__ = ["AppError", "ApiClient", "species_link", "render_result", "render_error", "build_app"]

TITLE = "Which bird is this?"
HELP = "Upload one or more photos of a bird (JPEG, PNG, WebP or GIF), then press Classify."

_STYLE = """<style>
.bc-card{display:flex;gap:16px;align-items:flex-start;border:1px solid #ddd;border-radius:8px;padding:12px;margin:8px 0}
.bc-card img{width:140px;height:140px;object-fit:cover;border-radius:6px}
.bc-row{display:flex;align-items:center;gap:8px;margin:3px 0;font-family:sans-serif;font-size:14px}
.bc-name{width:240px}.bc-bar{background:#eee;width:220px;height:12px;border-radius:6px;overflow:hidden}
.bc-fill{background:#2a7ab0;height:12px}.bc-pct{width:60px;text-align:right}
.bc-warn{background:#fff4e5;border:1px solid #f0b35b;padding:6px 10px;border-radius:6px;margin-bottom:6px}
.bc-error{background:#fdecea;border:1px solid #e57373;padding:8px 12px;border-radius:6px;margin:8px 0}
</style>"""


class AppError(Exception):
    """A problem to show to the person using the page, in plain words."""


@dataclass
class ApiClient:
    """Calls the prediction function; URL and key from $BIRDCLF_API_URL and $BIRDCLF_API_KEY."""

    url: str = ""
    key: str = ""
    timeout: float = 0.0

    def __post_init__(self) -> None:
        settings = get_settings()
        self.url = (self.url or settings.api_url).rstrip("/")
        self.key = self.key or settings.api_key
        self.timeout = float(self.timeout or settings.api_timeout)

    def predict(self, content: bytes, filename: str, content_type: str = "", top_k: int = DEFAULT_TOP_K) -> dict:
        """One image's prediction dict, or AppError with a friendly message."""
        import requests

        headers = {"Content-Type": content_type if content_type.startswith("image/") else "application/octet-stream"}
        if self.key:
            headers["x-functions-key"] = self.key
        try:
            resp = requests.post(f"{self.url}/predict", params={"top_k": top_k}, data=content, headers=headers,
                                 timeout=self.timeout)
        except requests.Timeout as exc:
            raise AppError(f"The bird identifier took longer than {self.timeout:g} s to answer. "
                           "Please try again in a moment.") from exc
        except requests.RequestException as exc:
            raise AppError("The bird identifier service is unreachable right now. Please try again later.") from exc
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code == 200 and body.get("predictions"):
            return body["predictions"][0]
        message = str(body.get("error", ""))
        if resp.status_code == 413:
            raise AppError(f"{filename} is too large for the bird identifier. Please upload a smaller photo.")
        if resp.status_code in (400, 415):
            raise AppError(f"{filename} could not be read as a photo"
                           f"{': ' + message if message else ''}. Please upload a JPEG, PNG, WebP or GIF image.")
        if resp.status_code in (401, 403):
            raise AppError("The bird identifier refused the request (its access key is missing or wrong).")
        raise AppError(f"The bird identifier had a problem (HTTP {resp.status_code}). Please try again later.")


def species_link(label: str) -> str:
    """A link to read about the species."""
    name = label.title() if label.isupper() else label
    return SPECIES_INFO_URL.format(query=quote_plus(f"{name} bird"))


def render_result(filename: str, prediction: dict, thumbnail_uri: str = "") -> str:
    """HTML card: thumbnail, top-k species with probability bars, a not-a-bird warning, a species link."""
    rows = []
    for item in prediction["top_k"]:
        pct = 100.0 * float(item["probability"])
        label = str(item["label"])
        rows.append(f'<div class="bc-row"><span class="bc-name"><a href="{html.escape(species_link(label))}" '
                    f'target="_blank" rel="noopener">{html.escape(label)}</a></span>'
                    f'<span class="bc-bar"><span class="bc-fill" style="display:block;width:{pct:.1f}%"></span>'
                    f'</span><span class="bc-pct">{pct:.1f}%</span></div>')
    warning = ""
    if prediction.get("is_bird") is False:
        warning = ('<div class="bc-warn">This may not be a bird: the model is not confident there is a bird in '
                   f'this photo (bird probability {100 * float(prediction["bird_probability"]):.0f}%). '
                   'Best guesses anyway:</div>')
    image = f'<img src="{thumbnail_uri}" alt="">' if thumbnail_uri else ""
    return (f'<div class="bc-card bc-result">{image}<div><b>{html.escape(filename)}</b>{warning}'
            f'{"".join(rows)}</div></div>')


def render_error(message: str) -> str:
    """HTML for a friendly error."""
    return f'<div class="bc-error bc-result-error">{html.escape(message)}</div>'


def _thumbnail_uri(content: bytes, size: int = 280) -> str:
    """A small JPEG data URI of an upload, or '' if it cannot be decoded."""
    import base64
    import io

    from ..serving.imaging import load_image

    try:
        img = load_image(content)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
    except Exception:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _uploads(upload: Any) -> list[dict]:
    """ipywidgets 8 FileUpload value as a list of {name, type, size, content: bytes}."""
    return [{"name": f["name"], "type": f.get("type", ""), "size": int(f.get("size", len(f["content"]))),
             "content": bytes(f["content"])} for f in upload.value]


def build_app(client: ApiClient | None = None) -> Any:
    """The whole page as one ipywidgets box (displayed by the last line of app.ipynb)."""
    import ipywidgets as widgets

    client = client or ApiClient()
    max_bytes = get_settings().max_bytes
    header = widgets.HTML(f"{_STYLE}<h2>{TITLE}</h2><p>{HELP}</p>")
    upload = widgets.FileUpload(accept="image/*", multiple=True, description="Upload photos")
    classify = widgets.Button(description="Classify", button_style="primary", icon="search", disabled=True)
    status = widgets.HTML("")
    thumbs = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
    results = widgets.HTML("")

    def on_upload(_: Any) -> None:
        try:
            files = _uploads(upload)
            thumbs.children = [widgets.HTML(f'<img src="{_thumbnail_uri(f["content"], 120)}" title="'
                                            f'{html.escape(f["name"])}" style="height:90px;margin:4px;'
                                            'border-radius:4px">') for f in files]
            classify.disabled = not files
            results.value = ""
            status.value = f"{len(files)} photo(s) ready." if files else ""
        except Exception:
            status.value = render_error("Those files could not be read. Please try other photos.")

    def on_classify(_: Any) -> None:
        classify.disabled, classify.description, classify.icon = True, "Classifying…", "spinner"
        status.value = '<span class="bc-busy">Classifying… please wait.</span>'
        cards = []
        try:
            for f in _uploads(upload):
                if f["size"] > max_bytes:
                    cards.append(render_error(f"{f['name']} is too large ({f['size'] / 1e6:.1f} MB); "
                                              f"the limit is {max_bytes / 1e6:.0f} MB."))
                    continue
                try:
                    prediction = client.predict(f["content"], f["name"], f["type"])
                    cards.append(render_result(f["name"], prediction, _thumbnail_uri(f["content"])))
                except AppError as exc:
                    cards.append(render_error(str(exc)))
                results.value = "".join(cards)
            status.value = "Done."
        except Exception:  # never a traceback on the page
            cards.append(render_error("Something went wrong while classifying. Please try again."))
            results.value = "".join(cards)
            status.value = ""
        finally:
            classify.disabled, classify.description, classify.icon = False, "Classify", "search"

    upload.observe(on_upload, names="value")
    classify.on_click(on_classify)
    return widgets.VBox([header, widgets.HBox([upload, classify]), thumbs, status, results])
