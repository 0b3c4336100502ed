"""The visitors' page (app.ipynb under Voila): upload photos, one card per photo with the answer first, every
failure in words, on a phone as on a desktop."""

from __future__ import annotations

import html
import threading
from typing import Any
from urllib.parse import quote_plus

from ..constants import SPECIES_INFO_URL
from .client import ApiClient, AppError
from .photos import FORMATS_TEXT, Photo, PhotoError, prepare_photo

__all__ = ["TITLE", "UPLOAD_LIMIT_MB", "species_link", "render_result", "render_error", "render_pending",
           "upload_guard_script", "build_app"]

TITLE = "Which bird is this?"
UPLOAD_LIMIT_MB = 60  # per upload (all photos chosen at once); voila.json's websocket limit is 64 MB
SHOWN_ABOVE = 0.01  # guesses under 1% are folded away
_STYLE = """<style>
.bc-app{max-width:760px;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:16px;color:#1f2328}
.bc-app *{box-sizing:border-box}.bc-app h2{margin:.2em 0 .3em;font-size:1.6em}
.bc-help{margin:0 0 .6em;line-height:1.4}.bc-coverage{color:#555;font-size:.9em;margin:0 0 .6em}
.bc-card{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start;border:1px solid #d0d7de;border-radius:10px;
 padding:12px;margin:10px 0;max-width:100%;overflow-wrap:anywhere}
.bc-photo{flex:0 1 240px;min-width:0;max-width:100%}.bc-photo img{display:block;width:100%;height:auto;
 max-height:300px;object-fit:contain;border-radius:6px;background:#f6f8fa}
.bc-body{flex:1 1 260px;min-width:0}.bc-file{color:#57606a;font-size:.85em;margin-bottom:.3em}
.bc-headline{font-size:1.35em;font-weight:650;line-height:1.25;margin:.1em 0 .35em}
.bc-verdict{margin:.2em 0 .6em;line-height:1.4}
.bc-species .bc-headline{color:#1a7f37}.bc-unsure .bc-headline{color:#9a6700}.bc-not-bird .bc-headline{color:#cf222e}
.bc-app a{color:#0969da;text-decoration:underline}.bc-app a:after{content:" \\2197";font-size:.8em}
.bc-row{display:grid;grid-template-columns:minmax(0,1fr) minmax(40px,32%) 3.6em;gap:8px;align-items:center;
 margin:4px 0}.bc-name{min-width:0;overflow-wrap:anywhere}
.bc-bar{background:#eaeef2;height:10px;border-radius:5px;overflow:hidden}.bc-fill{background:#2a7ab0;height:10px}
.bc-pct{text-align:right;font-variant-numeric:tabular-nums}
.bc-more summary{cursor:pointer;color:#57606a;margin:.3em 0}
.bc-error{background:#fff1f0;border-color:#f2b8b5}.bc-error-text{line-height:1.4}
.bc-status{min-height:1.4em;margin:.4em 0}.bc-busy{color:#9a6700}.bc-failed{color:#cf222e}.bc-done{color:#1a7f37}
@media (max-width:520px){.bc-photo{flex-basis:100%}.bc-app{font-size:15px}}
</style>"""


def species_link(label: str) -> str:
    """A page about the species (Wikipedia search)."""
    name = label.title() if label.isupper() else label
    return SPECIES_INFO_URL.format(query=quote_plus(f"{name} bird"))


def _name(label: str) -> str:
    """Kaggle's upper-case folder names read as 'Bald Eagle'."""
    return label.title() if label.isupper() else label


def _link(label: str) -> str:
    return (f'<a href="{html.escape(species_link(label))}" target="_blank" rel="noopener noreferrer" '
            f'title="Read about {html.escape(_name(label))} (opens a new tab)">{html.escape(_name(label))}</a>')


def _rows(items: list[dict]) -> str:
    out = []
    for item in items:
        pct = 100.0 * float(item["probability"])
        fill = f'<span class="bc-fill" style="display:block;width:{pct:.1f}%"></span>' if pct >= 0.5 else ""
        out.append(f'<div class="bc-row"><span class="bc-name">{_link(str(item["label"]))}</span>'
                   f'<span class="bc-bar">{fill}</span><span class="bc-pct">{pct:.0f}%</span></div>')
    return "".join(out)


def _folded(title: str, items: list[dict]) -> str:
    return f'<details class="bc-more"><summary>{title}</summary>{_rows(items)}</details>' if items else ""


def _photo(uri: str, filename: str) -> str:
    return (f'<div class="bc-photo"><img src="{uri}" alt="{html.escape(filename)}"></div>' if uri else "")


def render_result(filename: str, prediction: dict, thumbnail_uri: str = "") -> str:
    """One photo's card, the answer first: the verdict in words, then the guesses (small ones folded away)."""
    top = list(prediction.get("top_k") or [])
    verdict = prediction.get("verdict") or ("not_a_bird" if prediction.get("is_bird") is False else "species")
    shown = [t for t in top if float(t["probability"]) >= SHOWN_ABOVE]
    small = [t for t in top if float(t["probability"]) < SHOWN_ABOVE]
    if verdict == "species" and top:
        best = top[0]
        headline = f'{_link(str(best["label"]))}, {100 * float(best["probability"]):.0f}%'
        words = "A confident match."
        guesses = _folded("Other possibilities", top[1:])
        css = "bc-species"
    elif verdict == "unsure":
        headline = "Not sure which bird this is"
        words = "It could be one of these:"
        guesses = _rows(shown[:3]) + _folded("Less likely", shown[3:] + small)
        css = "bc-unsure"
    else:
        bird = prediction.get("bird_probability")
        headline = "No bird found"
        words = ("This photo does not look like a bird" + (f" (bird likelihood {100 * float(bird):.0f}%)"
                                                           if bird is not None else "")
                 + ". If there is one, try a photo where the bird is larger and sharper.")
        guesses = _folded("Best guesses anyway", top)
        css = "bc-not-bird"
    return (f'<div class="bc-card bc-result {css}">{_photo(thumbnail_uri, filename)}<div class="bc-body">'
            f'<div class="bc-file">{html.escape(filename)}</div><div class="bc-headline">{headline}</div>'
            f'<div class="bc-verdict">{words}</div>{guesses}</div></div>')


def render_pending(photo: Photo, note: str = "Ready: press Identify.") -> str:
    """A card for a photo that is uploaded and not yet identified."""
    return (f'<div class="bc-card bc-pending">{_photo(photo.thumbnail_uri, photo.name)}<div class="bc-body">'
            f'<div class="bc-file">{html.escape(photo.name)}</div><div class="bc-verdict">{html.escape(note)}</div>'
            f'</div></div>')


def render_error(message: str, thumbnail_uri: str = "", filename: str = "") -> str:
    """A card for a photo that failed, saying what to do."""
    return (f'<div class="bc-card bc-error bc-result-error">{_photo(thumbnail_uri, filename)}<div class="bc-body">'
            f'<div class="bc-error-text">{html.escape(message)}</div></div></div>')


def upload_guard_script(limit_mb: int = UPLOAD_LIMIT_MB) -> str:
    """Browser-side check before an upload is sent: over the limit, say so and send nothing (a websocket message
    over the server's limit would otherwise be dropped without a word). The upload widget's file input is not in
    the document, so its own 'change' listener is wrapped as the widget adds it."""
    return """
(function () {
  if (window.__birdclfGuard) return; window.__birdclfGuard = true;
  var LIMIT_MB = __LIMIT_MB__;
  function tooBig(input) {
    var total = 0, names = [];
    for (var i = 0; i < (input.files || []).length; i++) {
      total += input.files[i].size; names.push(input.files[i].name);
    }
    if (total <= LIMIT_MB * 1048576) return null;
    var what = names.length > 1 ? 'These ' + names.length + ' photos come to ' : names[0] + ' is ';
    return what + Math.round(total / 1048576) + ' MB; the limit is ' + LIMIT_MB + ' MB per upload. ' +
           'Please choose fewer or smaller photos.';
  }
  function say(text) {
    var box = document.querySelector('.bc-status');
    if (!box) { alert(text); return; }
    box.textContent = ''; var span = document.createElement('span'); span.className = 'bc-failed';
    span.textContent = text; box.appendChild(span);
  }
  var add = HTMLInputElement.prototype.addEventListener;
  HTMLInputElement.prototype.addEventListener = function (type, listener, options) {
    if (type === 'change' && this.type === 'file' && typeof listener === 'function') {
      var input = this, original = listener;
      listener = function (event) {
        var problem = tooBig(input);
        if (problem) { say(problem); input.value = ''; return; }
        return original.call(this, event);
      };
    }
    return add.call(this, type, listener, options);
  };
})();
""".replace("__LIMIT_MB__", str(int(limit_mb)))


def _coverage(info: dict) -> str:
    card = info.get("card") or {}
    model = info.get("model") or {}
    if isinstance(card.get("coverage"), dict):
        return str(card["coverage"].get("summary", ""))
    if model.get("num_classes"):
        return (f"This identifier knows {model['num_classes']} species; a bird of another species gets the closest "
                "one or 'not sure'.")
    return ""


def build_app(client: ApiClient | None = None) -> Any:
    """The whole page as one ipywidgets box (app.ipynb displays it)."""
    import ipywidgets as widgets

    client = client or ApiClient()
    coverage = _coverage(client.model_info())
    header = widgets.HTML(
        f'{_STYLE}<div class="bc-app"><h2>{TITLE}</h2><p class="bc-help">Take or choose photos of birds '
        f'({FORMATS_TEXT}, up to {UPLOAD_LIMIT_MB} MB per upload), then press Identify.</p>'
        + (f'<p class="bc-coverage">{html.escape(coverage)}</p>' if coverage else "") + "</div>")
    upload = widgets.FileUpload(accept="image/*", multiple=True, description="Choose photos",
                                layout=widgets.Layout(width="auto"))
    identify = widgets.Button(description="Identify", button_style="primary", icon="search", disabled=True,
                              layout=widgets.Layout(width="auto"))
    status = widgets.HTML('<div class="bc-app bc-status"></div>')
    results = widgets.HTML("")
    state: dict[str, Any] = {"photos": [], "errors": [], "generation": 0, "done": -1, "running": False}
    lock = threading.Lock()

    def say(text: str, css: str = "") -> None:
        status.value = f'<div class="bc-app bc-status"><span class="{css}">{html.escape(text)}</span></div>'

    def on_upload(change: Any) -> None:
        files = list(change["new"] or ())
        if not files:
            return
        photos, errors = [], []
        for f in files:
            name = str(f.get("name") or "photo")
            try:
                photos.append(prepare_photo(name, bytes(f["content"])))
            except PhotoError as exc:
                errors.append(render_error(str(exc), filename=name))
        upload.value = ()  # the originals (often many MB) are not kept: only the small JPEGs are
        with lock:
            state.update(photos=photos, errors=errors, generation=state["generation"] + 1)
        results.value = '<div class="bc-app">' + "".join(errors + [render_pending(p) for p in photos]) + "</div>"
        identify.disabled = not photos
        if photos:
            say(f"{len(photos)} photo{'s' if len(photos) > 1 else ''} ready"
                + (f"; {len(errors)} could not be read" if errors else "") + ".", "bc-failed" if errors else "")
        else:
            say("None of these files could be read: see below.", "bc-failed")

    def on_identify(_: Any) -> None:
        with lock:  # a second click while running, or on photos already identified, does nothing
            if state["running"] or state["done"] == state["generation"] or not state["photos"]:
                return
            state["running"] = True
            photos, errors, generation = list(state["photos"]), list(state["errors"]), state["generation"]
        identify.disabled, identify.description, identify.icon = True, "Identifying…", "spinner"
        say(f"Identifying {len(photos)} photo{'s' if len(photos) > 1 else ''}…", "bc-busy")
        try:
            answers = client.predict_many([(p.name, p.jpeg) for p in photos])
            cards, failed = [], 0
            for photo, answer in zip(photos, answers):
                if isinstance(answer, AppError):
                    failed += 1
                    cards.append(render_error(str(answer), photo.thumbnail_uri, photo.name))
                else:
                    cards.append(render_result(photo.name, answer, photo.thumbnail_uri))
            results.value = '<div class="bc-app">' + "".join(errors + cards) + "</div>"
            if failed:
                say(f"{len(photos) - failed} of {len(photos)} photos identified; {failed} failed (see below).",
                    "bc-failed")
            else:
                say(f"Done: {len(photos)} photo{'s' if len(photos) > 1 else ''} identified.", "bc-done")
        except Exception:  # never a traceback on the page
            say("Something went wrong while identifying. Please try again.", "bc-failed")
        finally:
            with lock:
                state["running"] = False
                state["done"] = generation
            identify.description, identify.icon = "Identify", "search"
            identify.disabled = state["done"] == state["generation"]

    upload.observe(on_upload, names="value")
    identify.on_click(on_identify)
    controls = widgets.HBox([upload, identify], layout=widgets.Layout(flex_flow="row wrap", gap="8px"))
    return widgets.VBox([header, controls, status, results], layout=widgets.Layout(max_width="100%"))
