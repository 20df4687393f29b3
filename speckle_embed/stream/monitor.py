"""The live monitor page: FastAPI (Starlette) + uvicorn on 127.0.0.1, updated through a websocket.

``GET /`` serves the page (:mod:`speckle_embed.stream.monitor_page`), ``GET /api/state`` the
current state as JSON, and ``/ws`` pushes the state every ``interval_s``: counters, frames/s
and per-class rates over time, latency percentiles, the decision-margin histogram, the latest
frame of each predicted class and the support frames (PNG, log scale).
"""
from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse

from speckle_embed.stream.monitor_page import PAGE_HTML

__all__ = ["MonitorServer", "build_app", "frame_png"]

log = logging.getLogger("speckle_embed.stream")


def frame_png(frame: np.ndarray, mask=None, size: int = 160) -> str:
    """A frame as a ``data:image/png`` URI on a log scale (``log1p``, masked pixels black),
    downsampled by block maxima to at most ``size`` pixels across."""
    from PIL import Image  # Pillow comes with matplotlib, a core dependency

    x = np.asarray(frame, dtype=np.float32)
    x = np.where(np.isfinite(x), x, 0)
    if mask is not None and np.shape(mask) == x.shape:
        x = np.where(np.asarray(mask) != 0, 0, x)
    step = max(1, int(np.ceil(max(x.shape) / size)))
    if step > 1:
        h, w = (x.shape[0] // step) * step, (x.shape[1] // step) * step
        x = x[:h, :w].reshape(h // step, step, w // step, step).max(axis=(1, 3))
    v = np.log1p(np.clip(x, 0, None))
    hi = float(v.max()) if v.size else 0.0
    g = (255 * v / hi).astype(np.uint8) if hi > 0 else np.zeros(v.shape, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(g, mode="L").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_app(get_state, interval_s: float = 0.5):
    """The FastAPI application; ``get_state()`` returns the JSON-able state.

    (FastAPI resolves the handlers' annotations by name: its classes are imported at module level.)
    """
    app = FastAPI(title="speckle_embed stream monitor", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE_HTML

    @app.get("/api/state")
    def state():
        return JSONResponse(get_state())

    @app.websocket("/ws")
    async def ws(sock: WebSocket):
        await sock.accept()
        try:
            while True:
                await sock.send_json(await asyncio.to_thread(get_state))
                await asyncio.sleep(interval_s)
        except (WebSocketDisconnect, RuntimeError):
            return

    return app


class MonitorServer:
    """uvicorn serving :func:`build_app` in a background thread.

    Parameters
    ----------
    get_state : callable
    host : str
        ``127.0.0.1`` by default (the page is for the beamline's own machines).
    port : int
        0 picks a free port (see :attr:`url` after :meth:`start`).
    """

    def __init__(self, get_state, host: str = "127.0.0.1", port: int = 8050, interval_s: float = 0.5):
        import uvicorn  # optional dependency of the stream extra

        self.app = build_app(get_state, interval_s)
        self.config = uvicorn.Config(self.app, host=host, port=int(port), log_level="warning", lifespan="off",
                                     ws="websockets-sansio" if _has_sansio() else "auto")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="monitor", daemon=True)
        self.host = host
        self.port = int(port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> MonitorServer:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started and time.monotonic() < end and self.thread.is_alive():
            time.sleep(0.02)
        if not self.server.started:
            raise OSError(f"monitor page could not start on {self.host}:{self.port} (port in use?)")
        if self.port == 0:
            self.port = self.server.servers[0].sockets[0].getsockname()[1]
        log.warning("monitor page: %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def _has_sansio() -> bool:
    try:
        import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
        return True
    except ImportError:
        return False
