"""The visitors' page (app.ipynb under Voila): upload photos, one card per photo with the answer first, every
failure in words, on a phone as on a desktop."""

from __future__ import annotations

import html
import threading
from importlib import resources
from typing import Any
from urllib.parse import quote_plus

from ..constants import SPECIES_INFO_URL
from .client import ApiClient, AppError
from .photos import FORMATS_TEXT, SEND_PIXELS, Photo, PhotoError, boxed_thumbnail, prepare_photo

__all__ = ["TITLE", "UPLOAD_LIMIT_MB", "KERNEL_CHECK_S", "species_link", "coverage_text", "render_result",
           "render_error", "render_pending", "page_script", "build_app"]

TITLE = "Which bird is this?"
UPLOAD_LIMIT_MB = 60  # per upload (all photos chosen at once, after the browser shrank them); voila.json allows 64
SHOWN_ABOVE = 0.01  # guesses under 1% are folded away
KERNEL_CHECK_S = 60  # how often an open page checks that its kernel was not culled (and when it comes back to view)


def _asset(name: str) -> str:
    """A file shipped beside this module (page.css, page.js: package data)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_STYLE = f"<style>\n{_asset('page.css')}</style>"


def species_link(label: str) -> str:
    """A page about the species (Wikipedia search)."""
    name = label.title() if label.isupper() else label
    return SPECIES_INFO_URL.format(query=quote_plus(f"{name} bird"))


def _name(label: str) -> str:
    """Kaggle's upper-case folder names read as 'Bald Eagle'."""
    return label.title() if label.isupper() else label


def _n(count: int, word: str) -> str:
    """'1 photo', '2 photos'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


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


def _card(css: str, head: str, uri: str, filename: str, guesses: str = "") -> str:
    """One photo's card: the answer (head) first on a phone, beside the photo on a wider screen."""
    photo = f'<div class="bc-photo"><img src="{uri}" alt="{html.escape(filename)}"></div>' if uri else ""
    return (f'<div class="bc-card {css}{"" if uri else " bc-nophoto"}"><div class="bc-head">{head}</div>{photo}'
            + (f'<div class="bc-guesses">{guesses}</div>' if guesses else "") + "</div>")


def render_result(filename: str, prediction: dict, thumbnail_uri: str = "") -> str:
    """One photo's card, the answer first: the verdict in words, then the guesses (small ones folded away)."""
    top = list(prediction.get("top_k") or [])
    verdict = prediction.get("verdict") or ("not_a_bird" if prediction.get("is_bird") is False else "species")
    shown = [t for t in top if float(t["probability"]) >= SHOWN_ABOVE]
    small = [t for t in top if float(t["probability"]) < SHOWN_ABOVE]
    if verdict == "species" and top:
        best = top[0]
        headline = f'{_link(str(best["label"]))}, {100 * float(best["probability"]):.0f}%'
        words = ("A confident match: the model names one species only when it is this sure; otherwise it says "
                 "it is not sure and shows candidates.")
        guesses = _folded("Other possibilities", top[1:])
        css = "bc-species"
    elif verdict == "unsure":
        headline = "Not sure which bird this is"
        words = "It could be one of these:" + _rows(shown[:3])  # the suggestions are the answer: above the photo
        guesses = _folded("Less likely", shown[3:] + small)
        css = "bc-unsure"
    else:
        bird = prediction.get("bird_probability")
        headline = "No bird found"
        words = ("This photo does not look like a bird" + (f" (bird likelihood {100 * float(bird):.0f}%)"
                                                           if bird is not None else "")
                 + ". If there is one, try a photo where the bird is larger and sharper.")
        guesses = _folded("Best guesses anyway", top)
        css = "bc-not-bird"
    birds = prediction.get("birds")
    if verdict != "not_a_bird" and prediction.get("box") and isinstance(birds, int):
        words += (f" {birds} birds found: this answer is for the one marked on the photo." if birds > 1
                  else " The bird the model looked at is marked on the photo.")
    head = (f'<div class="bc-file">{html.escape(filename)}</div><div class="bc-headline">{headline}</div>'
            f'<div class="bc-verdict">{words}</div>')  # words: escaped text, or rows built from escaped labels
    return _card(f"bc-result {css}", head, thumbnail_uri, filename, guesses)


def render_pending(photo: Photo, note: str = "Ready: press Identify.") -> str:
    """A card for a photo that is uploaded and not yet identified."""
    head = f'<div class="bc-file">{html.escape(photo.name)}</div><div class="bc-verdict">{html.escape(note)}</div>'
    return _card("bc-pending", head, photo.thumbnail_uri, photo.name)


def render_error(message: str, thumbnail_uri: str = "", filename: str = "") -> str:
    """A card for a photo that failed, saying what to do."""
    return _card("bc-error bc-result-error", f'<div class="bc-error-text">{html.escape(message)}</div>',
                 thumbnail_uri, filename)


def coverage_text(info: dict) -> str:
    """What the model knows, in a visitor's words (from the model card served at /api/model)."""
    card = info.get("card") or {}
    count = (info.get("model") or {}).get("num_classes") or (card.get("data") or {}).get("classes")
    if not count:
        return ""
    coverage = card.get("coverage") if isinstance(card.get("coverage"), dict) else {}
    groups = [str(g) for g in coverage.get("groups") or ()]
    if groups:
        examples = " or ".join(f"'{g}'" for g in ([g for g in ("Hummingbird", "Kite") if g in groups] or groups[:2]))
        return (f"This identifier knows {count} kinds of bird, {len(groups)} of them only as a group (such as "
                f"{examples}); for other birds it says it is not sure.")
    return f"This identifier knows {_n(int(count), 'kind')} of bird; for other birds it says it is not sure."


def page_script(limit_mb: int = UPLOAD_LIMIT_MB, send_pixels: int = SEND_PIXELS,
                check_s: int = KERNEL_CHECK_S) -> str:
    """The page's browser side. Before an upload: photos the browser can read are shrunk to `send_pixels` (a
    12 Mpx phone photo goes out as ~0.5 MB instead of 5-15 MB, upright, and without its GPS tags), the total is
    checked against the limit (a websocket message over the server's limit would be dropped without a word), and
    the status says what is being sent. After a run, the first answer is scrolled into view. Every `check_s`
    seconds and when the page comes back into view, it checks that its kernel is still there: a kernel culled
    for idleness leaves a page that looks alive but does nothing, so the page says so and offers a reload.
    The upload widget's file input is not in the document, so its own 'change' listener is wrapped."""
    values = {"__LIMIT_MB__": limit_mb, "__SEND_PIXELS__": send_pixels, "__CHECK_S__": check_s}
    script = _asset("page.js")
    for marker, value in values.items():
        script = script.replace(marker, str(int(value)))
    return script




def _results(cards: list[str], run: int, final: bool) -> str:
    return (f'<div class="bc-app bc-results" data-run="{run}"{" data-final" if final else ""}>' + "".join(cards)
            + "</div>")


def _read_uploads(files: list[Any]) -> tuple[list[Photo], list[str]]:
    """The chosen files as small JPEGs to send, and a card for each file that is not a photo."""
    photos, unreadable = [], []
    for f in files:
        name = str(f.get("name") or "photo")
        try:
            photos.append(prepare_photo(name, bytes(f["content"])))
        except PhotoError as exc:
            unreadable.append(render_error(str(exc), filename=name))
    return photos, unreadable


def _summary(total: int, failed: list[AppError], unreadable: int) -> tuple[str, str]:
    """The status line after identifying, and its style."""
    bad = f"; {_n(unreadable, 'file')} could not be read" if unreadable else ""
    if failed:
        again = " Press Try again when you are ready." if any(a.retryable for a in failed) else ""
        return (f"{total - len(failed)} of {_n(total, 'photo')} identified; {len(failed)} failed{bad} "
                f"(see below).{again}", "bc-failed")
    if unreadable:
        return f"Done: {_n(total, 'photo')} identified{bad} (see below).", "bc-warn"
    return f"Done: {_n(total, 'photo')} identified.", "bc-done"


class _Page:
    """The page's widgets and what a visitor has done: the photos chosen, the files that were not photos, and the
    answer (card, error) per photo; one identification runs at a time."""

    def __init__(self, client: ApiClient) -> None:
        import ipywidgets as widgets

        self.client = client
        coverage = coverage_text(client.model_info())
        self.header = widgets.HTML(
            f'{_STYLE}<div class="bc-app"><h2>{TITLE}</h2><p class="bc-help">Take or choose photos of birds '
            f'({FORMATS_TEXT}), then press Identify.</p>'
            + (f'<p class="bc-coverage">{html.escape(coverage)}</p>' if coverage else "") + "</div>")
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="Choose photos",
                                         layout=widgets.Layout(width="auto"))
        self.identify = widgets.Button(description="Identify", button_style="primary", icon="search",
                                       disabled=True, layout=widgets.Layout(width="auto"))
        for button in (self.upload, self.identify):
            button.add_class("bc-button")
        self.status = widgets.HTML('<div class="bc-app bc-status"></div>')
        self.results = widgets.HTML("")
        self.photos: list[Photo] = []
        self.unreadable: list[str] = []
        self.answers: dict[int, tuple[str, AppError | None]] = {}
        self.run, self.running = 0, False
        self.lock = threading.Lock()
        self.upload.observe(self.on_upload, names="value")
        self.identify.on_click(self.on_identify)

    def box(self) -> Any:
        """The whole page as one ipywidgets box."""
        import ipywidgets as widgets

        controls = widgets.HBox([self.upload, self.identify], layout=widgets.Layout(flex_flow="row wrap", gap="8px"))
        return widgets.VBox([self.header, controls, self.status, self.results], layout=widgets.Layout(max_width="100%"))

    def say(self, text: str, css: str = "") -> None:
        self.status.value = f'<div class="bc-app bc-status"><span class="{css}">{html.escape(text)}</span></div>'

    def to_do(self) -> list[int]:
        """Photos not answered yet, or whose failure may pass if tried again."""
        return [i for i in range(len(self.photos))
                if i not in self.answers or getattr(self.answers[i][1], "retryable", False)]

    def show(self, final: bool) -> None:
        self.run += 1
        cards = [self.answers[i][0] if i in self.answers else render_pending(photo)
                 for i, photo in enumerate(self.photos)]
        self.results.value = _results(self.unreadable + cards, self.run, final)
        left = self.to_do()
        retry = bool(left) and bool(self.answers)
        self.identify.description, self.identify.icon = ("Try again", "refresh") if retry else ("Identify", "search")
        self.identify.disabled = not left

    def on_upload(self, change: Any) -> None:
        files = list(change["new"] or ())
        if not files:
            return
        photos, unreadable = _read_uploads(files)
        self.upload.value = ()  # the originals are not kept: only the small JPEGs are
        with self.lock:
            self.photos, self.unreadable, self.answers = photos, unreadable, {}
        self.show(final=False)
        bad = f"; {_n(len(unreadable), 'file')} could not be read (see below)" if unreadable else ""
        if photos:
            self.say(f"{_n(len(photos), 'photo')} ready{bad}. Press Identify.", "bc-warn" if unreadable else "")
        else:
            self.say(("This file" if len(unreadable) == 1 else f"None of these {len(unreadable)} files")
                     + " could not be read: see below.", "bc-failed")

    def on_identify(self, _: Any) -> None:
        with self.lock:  # a second click while running, or with nothing left to do, does nothing
            todo = self.to_do()
            if self.running or not todo:
                return
            self.running = True
            photos = [self.photos[i] for i in todo]
        self.identify.disabled, self.identify.description, self.identify.icon = True, "Identifying…", "spinner"
        self.say(f"Identifying {_n(len(photos), 'photo')}…", "bc-busy")
        try:
            answers = self.client.predict_many([(p.name, p.jpeg) for p in photos])
            for index, photo, answer in zip(todo, photos, answers):
                if isinstance(answer, AppError):
                    self.answers[index] = (render_error(str(answer), photo.thumbnail_uri, photo.name), answer)
                else:
                    self.answers[index] = (render_result(photo.name, answer, boxed_thumbnail(photo, answer.get("box"))),
                                           None)
            failed = [a for _, a in self.answers.values() if a is not None]
            self.say(*_summary(len(self.photos), failed, len(self.unreadable)))
        except Exception:  # never a traceback on the page
            self.say("Something went wrong while identifying. Please try again.", "bc-failed")
        finally:
            with self.lock:
                self.running = False
            self.show(final=True)


def build_app(client: ApiClient | None = None) -> Any:
    """The whole page as one ipywidgets box (app.ipynb displays it)."""
    return _Page(client or ApiClient()).box()
