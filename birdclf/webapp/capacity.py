"""Voila on a small dyno: at most N kernels, a friendly "busy" page (HTTP 503) beyond that, and kernels that go away.

Used from voila.json:

    {"VoilaConfiguration": {"multi_kernel_manager_class": "birdclf.webapp.capacity.CappedKernelManager"},
     "CappedKernelManager": {"max_kernels": 10, "cull_idle_timeout": 600, "cull_disconnected_timeout": 120,
                             "cull_interval": 30, "cull_connected": true}}

What it does (Voila 0.5, jupyter_server 2):
1. Capacity: `prelaunch_hook` (installed on Voila's configuration by the manager unless one is configured) answers a
   page request with a small self-contained HTML page, status 503 and `Retry-After`, when `max_kernels` kernels
   exist, before any kernel is started. The manager's `start_kernel` refuses too (HTTP 503), as a backstop.
2. Shutdown on tab close: Voila's page sends `POST /voila/api/shutdown/<id>` on `beforeunload` with the `_xsrf`
   cookie, but Voila never sets that cookie, so jupyter_server answers 403 and the kernel stays (voila#1458).
   The hook reads `handler.xsrf_token`, which sets the cookie on the page's response, so the beacon works.
3. Culling: kernels with no open websocket (page closed without the beacon: phone killed the tab, network gone)
   are culled after `cull_disconnected_timeout` idle seconds; kernels with a page still open after
   `cull_idle_timeout` (the standard jupyter_server setting).
4. Lean kernels: started without debugpy (ipykernel imports it for the debugger Voila never uses, ~8 MB per kernel)
   and without IPython's SQLite history (~2 MB).
"""

from __future__ import annotations

import html
from typing import Any

from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.utils import ensure_async
from tornado import web
from traitlets import Bool, Integer, List, Unicode

_LEAN_LAUNCHER = ("import sys; sys.modules['debugpy'] = None; "
                  "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()")

BUSY_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{retry}">
<title>{title} - busy</title>
<style>
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f6f8fa;color:#222;margin:0}}
main{{max-width:34em;margin:12vh auto;padding:2em;background:#fff;border:1px solid #ddd;border-radius:10px}}
h1{{font-size:1.4em;margin-top:0}} .site{{color:#57606a;margin:0 0 .4em}}
a.button{{display:inline-flex;align-items:center;margin-top:1em;padding:0 1.2em;min-height:44px;background:#2a7ab0;
color:#fff;border-radius:6px;text-decoration:none}}
@media (max-width:600px){{main{{margin:8vh 12px;padding:1.2em}}}}
</style></head>
<body><main class="voila-busy">
<p class="site">{title}</p>
<h1>Sorry, we are busy right now</h1>
<p>All {n} places are in use by other visitors. Please try again in a minute;
this page tries again by itself in {retry} seconds.</p>
<a class="button" href="">Try again</a>
</main></body></html>
"""


__all__ = ["BUSY_PAGE", "CappedKernelManager", "prelaunch_hook"]


def prelaunch_hook(req: Any, notebook: Any = None, cwd: Any = None) -> None:
    """Voila's prelaunch hook: set the _xsrf cookie; at capacity, answer 503 with the busy page (no kernel)."""
    req.xsrf_token  # noqa: B018  (reading it sets the _xsrf cookie that the beforeunload beacon sends back)
    km = req.kernel_manager
    if getattr(km, "at_capacity", None) and km.at_capacity():
        km.log.warning("At capacity (%d kernels): busy page for %s", km.n_kernels(), req.request.remote_ip)
        req.set_status(503)
        req.set_header("Content-Type", "text/html; charset=UTF-8")
        req.set_header("Retry-After", str(km.retry_after))
        req.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
        raise web.Finish(BUSY_PAGE.format(title=html.escape(km.busy_title), n=km.max_kernels,
                                          retry=km.retry_after))


class CappedKernelManager(AsyncMappingKernelManager):
    """AsyncMappingKernelManager with a kernel cap, short culling of abandoned kernels and lean kernels."""

    max_kernels = Integer(10, config=True, help="Most kernels at once (0: no limit); beyond it visitors get 503.")
    retry_after = Integer(60, config=True, help="Seconds in the busy page's Retry-After and auto-refresh.")
    busy_title = Unicode("This app", config=True, help="Name of the app on the busy page.")
    cull_disconnected_timeout = Integer(
        120, config=True,
        help="Idle seconds after which a kernel with no open websocket is culled (0: only cull_idle_timeout).")
    lean_kernels = Bool(True, config=True, help="Start ipykernel without debugpy (and with extra_kernel_args).")
    extra_kernel_args = List(Unicode(), ["--HistoryManager.enabled=False"], config=True,
                             help="Extra command-line arguments for every kernel.")
    install_prelaunch_hook = Bool(True, config=True,
                                  help="Install prelaunch_hook on Voila's configuration if none is configured.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gone_since: dict = {}
        vc = getattr(self.parent, "voila_configuration", None)
        if self.install_prelaunch_hook and vc is not None:
            if vc.preheat_kernel:
                self.log.warning("CappedKernelManager: preheat_kernel is on; no busy page (prelaunch hooks are "
                                 "incompatible with preheated kernels), the cap still applies")
            elif vc.prelaunch_hook is None:
                vc.prelaunch_hook = prelaunch_hook
        self.log.info("CappedKernelManager: at most %d kernels; idle culling after %ss (page open) / %ss "
                      "(page gone), checked every %ss", self.max_kernels, self.cull_idle_timeout,
                      self.cull_disconnected_timeout, self.cull_interval)

    # -- capacity ---------------------------------------------------------------------------------------------
    def n_kernels(self) -> int:
        """Kernels running, starting or shutting down (all of them use memory)."""
        return len(set(self._kernels) | set(getattr(self, "_pending_kernels", {})))

    def at_capacity(self) -> bool:
        """Whether another visitor would exceed max_kernels."""
        return self.max_kernels > 0 and self.n_kernels() >= self.max_kernels

    async def start_kernel(self, *, kernel_id: str | None = None, path: str | None = None, **kwargs: Any) -> str:
        if kernel_id is None or kernel_id not in self:
            if self.at_capacity():
                raise web.HTTPError(503, "at capacity: %d kernels", self.n_kernels(),
                                    reason="Busy - please try again in a minute")
            if self.extra_kernel_args:
                kwargs["extra_arguments"] = [*kwargs.get("extra_arguments", []), *self.extra_kernel_args]
        return await super().start_kernel(kernel_id=kernel_id, path=path, **kwargs)

    def pre_start_kernel(self, kernel_name: str | None, kwargs: dict) -> Any:
        km, kernel_name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        spec = km.kernel_spec
        if self.lean_kernels and spec is not None and spec.argv[1:3] == ["-m", "ipykernel_launcher"]:
            # same interpreter and arguments, but debugpy is made unimportable: ipykernel then runs without its
            # debugger (ipykernel/debugger.py catches the ImportError), which Voila pages never use
            spec.argv = [spec.argv[0], "-c", _LEAN_LAUNCHER, *spec.argv[3:]]
        return km, kernel_name, kernel_id

    # -- culling ----------------------------------------------------------------------------------------------
    def notify_connect(self, kernel_id: str) -> None:
        super().notify_connect(kernel_id)
        self._gone_since.pop(kernel_id, None)

    def notify_disconnect(self, kernel_id: str) -> None:
        super().notify_disconnect(kernel_id)
        if self._kernel_connections.get(kernel_id, 1) <= 0:
            self._gone_since[kernel_id] = utcnow()

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        kernel = self._kernels.get(kernel_id)
        if (kernel is not None and self.cull_disconnected_timeout > 0
                and not self._kernel_connections.get(kernel_id, 0)
                and getattr(kernel, "last_activity", None) is not None
                and (self.cull_busy or getattr(kernel, "execution_state", None) != "busy")):
            # idle since the later of its last message and its page's websocket closing
            since = max(kernel.last_activity, self._gone_since.get(kernel_id, kernel.last_activity))
            idle = (utcnow() - since).total_seconds()
            if idle > self.cull_disconnected_timeout:
                self.log.warning("Culling kernel %s: no page connected for %d s", kernel_id, idle)
                await ensure_async(self.shutdown_kernel(kernel_id))
                return
        return await super().cull_kernel_if_idle(kernel_id)

    def remove_kernel(self, kernel_id: str) -> Any:
        self._gone_since.pop(kernel_id, None)
        return super().remove_kernel(kernel_id)
