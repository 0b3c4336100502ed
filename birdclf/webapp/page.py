"""The visitors' page (app.ipynb under Voila): upload photos, one card per photo with the answer first, every
failure in words, on a phone as on a desktop."""

from __future__ import annotations

import html
import threading
from typing import Any
from urllib.parse import quote_plus

from ..constants import SPECIES_INFO_URL
from .client import ApiClient, AppError
from .photos import FORMATS_TEXT, SEND_PIXELS, Photo, PhotoError, prepare_photo

__all__ = ["TITLE", "UPLOAD_LIMIT_MB", "KERNEL_CHECK_S", "species_link", "coverage_text", "render_result",
           "render_error", "render_pending", "page_script", "build_app"]

TITLE = "Which bird is this?"
UPLOAD_LIMIT_MB = 60  # per upload (all photos chosen at once, after the browser shrank them); voila.json allows 64
SHOWN_ABOVE = 0.01  # guesses under 1% are folded away
KERNEL_CHECK_S = 60  # how often an open page checks that its kernel was not culled (and when it comes back to view)
_STYLE = """<style>
.bc-app{max-width:760px;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:16px;color:#1f2328}
.bc-app *{box-sizing:border-box}.bc-app h2{margin:.2em 0 .3em;font-size:1.6em}
.bc-help{margin:0 0 .6em;line-height:1.4}.bc-coverage{color:#555;font-size:.95em;line-height:1.4;margin:0 0 .6em}
.bc-card{display:grid;grid-template-columns:minmax(0,240px) minmax(0,1fr);grid-template-rows:auto 1fr;
 grid-template-areas:"photo head" "photo guesses";column-gap:14px;align-items:start;border:1px solid #d0d7de;
 border-radius:10px;padding:12px;margin:10px 0;max-width:100%;overflow-wrap:anywhere}
.bc-card.bc-nophoto{grid-template-columns:minmax(0,1fr);grid-template-areas:"head" "guesses"}
.bc-head{grid-area:head;min-width:0}.bc-guesses{grid-area:guesses;min-width:0}
.bc-photo{grid-area:photo;min-width:0}.bc-photo img{display:block;width:100%;height:auto;max-height:300px;
 object-fit:contain;border-radius:6px;background:#f6f8fa}
.bc-file{color:#57606a;font-size:.85em;margin-bottom:.3em}
.bc-headline{font-size:1.35em;font-weight:650;line-height:1.25;margin:.1em 0 .35em}
.bc-verdict{margin:.2em 0 .6em;line-height:1.4}
.bc-species .bc-headline{color:#1a7f37}.bc-unsure .bc-headline{color:#9a6700}.bc-not-bird .bc-headline{color:#cf222e}
.bc-app a{color:#0969da;text-decoration:underline}.bc-app a:after{content:" \\2197";font-size:.8em}
.bc-row{display:grid;grid-template-columns:minmax(0,1fr) minmax(40px,32%) 3.6em;gap:8px;align-items:center;
 margin:2px 0}.bc-name{min-width:0;overflow-wrap:anywhere}.bc-name a{display:inline-block;padding:7px 0}
.bc-bar{background:#eaeef2;height:10px;border-radius:5px;overflow:hidden}.bc-fill{background:#2a7ab0;height:10px}
.bc-pct{text-align:right;font-variant-numeric:tabular-nums}
.bc-more summary{cursor:pointer;color:#57606a;padding:10px 0;min-height:40px}
.bc-error{background:#fff1f0;border-color:#f2b8b5}.bc-error-text{line-height:1.4}
.bc-status{min-height:1.4em;margin:.4em 0;font-size:16px;line-height:1.4}.bc-busy{color:#9a6700}
.bc-failed{color:#cf222e}.bc-done{color:#1a7f37}.bc-warn{color:#9a6700}
.bc-stale{opacity:.45}
.bc-button{height:44px !important;font-size:16px !important;padding:0 16px !important}
.bc-asleep{position:fixed;left:0;right:0;top:0;z-index:10000;background:#fff8c5;border-bottom:1px solid #d4a72c;
 padding:12px 16px;font:16px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328}
.bc-asleep p{margin:0 0 8px}.bc-asleep button{min-height:44px;font-size:16px;padding:0 18px;border-radius:6px;
 border:1px solid #1f6feb;background:#1f6feb;color:#fff}
@media (max-width:520px){.bc-card{grid-template-columns:minmax(0,1fr);grid-template-areas:"head" "photo" "guesses"}
 .bc-photo img{max-height:240px;margin-bottom:6px}.bc-app{font-size:15px}}
</style>"""


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
    return """
(function () {
  if (window.__birdclfPage) return; window.__birdclfPage = true;
  var LIMIT_MB = __LIMIT_MB__, SEND_PIXELS = __SEND_PIXELS__, CHECK_S = __CHECK_S__, KEEP_BYTES = 1500000;
  var asleep = false, lastRun = null, config = {};
  try { config = JSON.parse(document.getElementById('jupyter-config-data').textContent); } catch (e) {}
  function plural(n, word) { return n + ' ' + word + (n === 1 ? '' : 's'); }
  function mb(bytes) { return bytes < 1048576 ? Math.max(1, Math.round(bytes / 1024)) + ' KB'
                                               : (bytes / 1048576).toFixed(1) + ' MB'; }
  function say(text, css) {
    var box = document.querySelector('.bc-status');
    if (!box) { alert(text); return; }
    box.textContent = ''; var span = document.createElement('span'); span.className = css || 'bc-failed';
    span.textContent = text; box.appendChild(span);
  }
  function stale(on) {
    var nodes = document.querySelectorAll('.bc-results');
    for (var i = 0; i < nodes.length; i++) nodes[i].classList.toggle('bc-stale', on);
  }
  function sayAsleep() { say('This page went to sleep. Please reload it to identify more photos.'); }
  function showAsleep() {
    if (asleep) return; asleep = true;
    var bar = document.createElement('div'); bar.className = 'bc-asleep'; bar.setAttribute('role', 'alert');
    var p = document.createElement('p');
    p.textContent = 'This page went to sleep after a while without use, to make room for other visitors. ' +
                    'Reload it to identify more photos.';
    var button = document.createElement('button'); button.type = 'button'; button.textContent = 'Reload the page';
    button.onclick = function () { location.reload(); };
    bar.appendChild(p); bar.appendChild(button); document.body.appendChild(bar);
    sayAsleep();
  }
  function checkKernel() {
    if (asleep) return Promise.resolve(false);
    if (!config.kernelId || !window.fetch) return Promise.resolve(true);
    var url = (config.baseUrl || '/') + 'api/kernels/' + config.kernelId;
    return fetch(url, {credentials: 'same-origin', cache: 'no-store'}).then(function (r) {
      if (r.status === 404) { showAsleep(); return false; }
      return true;
    }).catch(function () { return true; });  // offline for a moment: not known to be asleep
  }
  setInterval(checkKernel, CHECK_S * 1000);
  document.addEventListener('visibilitychange', function () { if (!document.hidden) checkKernel(); });
  function shrink(file) {
    if (!window.createImageBitmap || !/^image\\/(jpeg|png|webp|bmp|heic|heif)$/i.test(file.type || '')) {
      return Promise.resolve(file);
    }
    return createImageBitmap(file, {imageOrientation: 'from-image'}).then(function (bitmap) {
      var w = bitmap.width, h = bitmap.height, scale = Math.min(1, Math.sqrt(SEND_PIXELS / (w * h)));
      if (scale === 1 && file.size <= KEEP_BYTES) { if (bitmap.close) bitmap.close(); return file; }
      var cw = Math.max(1, Math.floor(w * scale)), ch = Math.max(1, Math.floor(h * scale));
      var canvas = document.createElement('canvas'); canvas.width = cw; canvas.height = ch;
      var ctx = canvas.getContext('2d');
      ctx.fillStyle = '#ffffff'; ctx.fillRect(0, 0, cw, ch);  // transparency becomes white, as in the kernel
      ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = 'high';
      ctx.drawImage(bitmap, 0, 0, cw, ch);
      if (bitmap.close) bitmap.close();
      return new Promise(function (resolve) {
        canvas.toBlob(function (blob) {
          resolve(blob && blob.size < file.size
                  ? new File([blob], file.name, {type: 'image/jpeg', lastModified: file.lastModified}) : file);
        }, 'image/jpeg', 0.92);
      });
    }).catch(function () { return file; });  // the browser cannot read it: the kernel says what is wrong
  }
  function tooBig(files) {
    var total = 0;
    for (var i = 0; i < files.length; i++) total += files[i].size;
    if (total <= LIMIT_MB * 1048576) return null;
    var what = files.length > 1 ? 'These ' + files.length + ' photos come to ' : files[0].name + ' is ';
    var before = document.querySelector('.bc-pending') ? ' The photos chosen before are still ready below.' : '';
    return what + Math.round(total / 1048576) + ' MB; the limit is ' + LIMIT_MB + ' MB per upload. ' +
           'Please choose fewer or smaller photos.' + before;
  }
  var add = HTMLInputElement.prototype.addEventListener;
  HTMLInputElement.prototype.addEventListener = function (type, listener, options) {
    if (type === 'change' && this.type === 'file' && typeof listener === 'function') {
      var input = this, original = listener;
      listener = function (event) {
        var self = this, files = Array.prototype.slice.call(input.files || []);
        if (!files.length) return;
        if (asleep) { input.value = ''; sayAsleep(); return; }
        say('Preparing ' + plural(files.length, 'photo') + '…', 'bc-busy'); stale(true);
        Promise.all([checkKernel(), Promise.all(files.map(shrink))]).then(function (done) {
          if (!done[0]) { input.value = ''; stale(false); sayAsleep(); return; }
          var ready = done[1];
          if (ready.some(function (f, i) { return f !== files[i]; })) {
            try {
              var dt = new DataTransfer();
              ready.forEach(function (f) { dt.items.add(f); });
              input.files = dt.files;
            } catch (e) {}  // no DataTransfer here: the originals go, and the kernel shrinks them
          }
          var sent = Array.prototype.slice.call(input.files || []), problem = tooBig(sent);
          if (problem) { say(problem); input.value = ''; stale(false); return; }
          var bytes = sent.reduce(function (s, f) { return s + f.size; }, 0);
          say('Sending ' + plural(sent.length, 'photo') + ' (' + mb(bytes) + ')…', 'bc-busy');
          original.call(self, event);
        });
      };
    }
    return add.call(this, type, listener, options);
  };
  function tidy() {
    var buttons = document.querySelectorAll('button.widget-upload');  // "Choose photos (0)": the count misleads
    for (var i = 0; i < buttons.length; i++) {
      for (var node = buttons[i].firstChild; node; node = node.nextSibling) {
        var text = node.nodeType === 3 ? node.nodeValue : '';
        if (/ \\(\\d+\\)$/.test(text)) node.nodeValue = text.replace(/ \\(\\d+\\)$/, '');
      }
    }
    var results = document.querySelector('.bc-results[data-final]');
    if (results && results.getAttribute('data-run') !== lastRun) {
      lastRun = results.getAttribute('data-run');
      var first = results.querySelector('.bc-card');
      if (first) {
        var top = first.getBoundingClientRect().top;
        if (top < 0 || top > window.innerHeight * 0.5) first.scrollIntoView({behavior: 'smooth', block: 'start'});
      }
    }
  }
  new MutationObserver(tidy).observe(document.body, {childList: true, subtree: true, characterData: true});
  tidy();
})();
""".replace("__LIMIT_MB__", str(int(limit_mb))).replace("__SEND_PIXELS__", str(int(send_pixels))) \
        .replace("__CHECK_S__", str(int(check_s)))




def _results(cards: list[str], run: int, final: bool) -> str:
    return (f'<div class="bc-app bc-results" data-run="{run}"{" data-final" if final else ""}>' + "".join(cards)
            + "</div>")


def build_app(client: ApiClient | None = None) -> Any:
    """The whole page as one ipywidgets box (app.ipynb displays it)."""
    import ipywidgets as widgets

    client = client or ApiClient()
    coverage = coverage_text(client.model_info())
    header = widgets.HTML(
        f'{_STYLE}<div class="bc-app"><h2>{TITLE}</h2><p class="bc-help">Take or choose photos of birds '
        f'({FORMATS_TEXT}), then press Identify.</p>'
        + (f'<p class="bc-coverage">{html.escape(coverage)}</p>' if coverage else "") + "</div>")
    upload = widgets.FileUpload(accept="image/*", multiple=True, description="Choose photos",
                                layout=widgets.Layout(width="auto"))
    identify = widgets.Button(description="Identify", button_style="primary", icon="search", disabled=True,
                              layout=widgets.Layout(width="auto"))
    for button in (upload, identify):
        button.add_class("bc-button")
    status = widgets.HTML('<div class="bc-app bc-status"></div>')
    results = widgets.HTML("")
    # photos: ready to send; unreadable: cards for files that are not photos; answers: index -> (card, AppError)
    state: dict[str, Any] = {"photos": [], "unreadable": [], "answers": {}, "run": 0, "running": False}
    lock = threading.Lock()

    def say(text: str, css: str = "") -> None:
        status.value = f'<div class="bc-app bc-status"><span class="{css}">{html.escape(text)}</span></div>'

    def to_do() -> list[int]:
        """Photos not answered yet, or whose failure may pass if tried again."""
        return [i for i in range(len(state["photos"]))
                if i not in state["answers"] or getattr(state["answers"][i][1], "retryable", False)]

    def show(final: bool) -> None:
        state["run"] += 1
        cards = [state["answers"][i][0] if i in state["answers"] else render_pending(photo)
                 for i, photo in enumerate(state["photos"])]
        results.value = _results(state["unreadable"] + cards, state["run"], final)
        left = to_do()
        retry = bool(left) and bool(state["answers"])
        identify.description, identify.icon = ("Try again", "refresh") if retry else ("Identify", "search")
        identify.disabled = not left

    def on_upload(change: Any) -> None:
        files = list(change["new"] or ())
        if not files:
            return
        photos, unreadable = [], []
        for f in files:
            name = str(f.get("name") or "photo")
            try:
                photos.append(prepare_photo(name, bytes(f["content"])))
            except PhotoError as exc:
                unreadable.append(render_error(str(exc), filename=name))
        upload.value = ()  # the originals are not kept: only the small JPEGs are
        with lock:
            state.update(photos=photos, unreadable=unreadable, answers={})
        show(final=False)
        bad = f"; {_n(len(unreadable), 'file')} could not be read (see below)" if unreadable else ""
        if photos:
            say(f"{_n(len(photos), 'photo')} ready{bad}. Press Identify.", "bc-warn" if unreadable else "")
        else:
            say(("This file" if len(unreadable) == 1 else f"None of these {len(unreadable)} files")
                + " could not be read: see below.", "bc-failed")

    def on_identify(_: Any) -> None:
        with lock:  # a second click while running, or with nothing left to do, does nothing
            todo = to_do()
            if state["running"] or not todo:
                return
            state["running"] = True
            photos = [state["photos"][i] for i in todo]
        identify.disabled, identify.description, identify.icon = True, "Identifying…", "spinner"
        say(f"Identifying {_n(len(photos), 'photo')}…", "bc-busy")
        try:
            answers = client.predict_many([(p.name, p.jpeg) for p in photos])
            for index, photo, answer in zip(todo, photos, answers):
                if isinstance(answer, AppError):
                    state["answers"][index] = (render_error(str(answer), photo.thumbnail_uri, photo.name), answer)
                else:
                    state["answers"][index] = (render_result(photo.name, answer, photo.thumbnail_uri), None)
            total = len(state["photos"])
            failed = [a for _, a in state["answers"].values() if a is not None]
            unreadable = len(state["unreadable"])
            bad = f"; {_n(unreadable, 'file')} could not be read" if unreadable else ""
            if failed:
                again = " Press Try again when you are ready." if any(a.retryable for a in failed) else ""
                say(f"{total - len(failed)} of {_n(total, 'photo')} identified; {len(failed)} failed{bad} "
                    f"(see below).{again}", "bc-failed")
            elif unreadable:
                say(f"Done: {_n(total, 'photo')} identified{bad} (see below).", "bc-warn")
            else:
                say(f"Done: {_n(total, 'photo')} identified.", "bc-done")
        except Exception:  # never a traceback on the page
            say("Something went wrong while identifying. Please try again.", "bc-failed")
        finally:
            with lock:
                state["running"] = False
            show(final=True)

    upload.observe(on_upload, names="value")
    identify.on_click(on_identify)
    controls = widgets.HBox([upload, identify], layout=widgets.Layout(flex_flow="row wrap", gap="8px"))
    return widgets.VBox([header, controls, status, results], layout=widgets.Layout(max_width="100%"))
