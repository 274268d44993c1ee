"""How the local service runs under uvicorn: the HTTP parser and its limits, and the timeouts.

* Parser: h11, because it bounds what it buffers of a request head
  (``h11_max_incomplete_event_size``: a request line plus headers larger than that gets
  ``400`` and the connection is closed). uvicorn's httptools parser has no such limit: a client
  streaming a 65 MB header held the event loop for every other client.
* ``timeout_keep_alive``: an idle keep-alive connection, or one still sending a body we already
  answered (a refused upload), is closed after this many seconds.
* Request-head timeout: uvicorn has none (its keep-alive timer restarts on every byte received),
  so :class:`H11Protocol` gives a client ``timeout_keep_alive`` seconds to send a complete request
  head, on a new connection and after each response. A client that trickles its headers
  (slowloris) is disconnected then, instead of holding its connection for ever. The same timer
  bounds the rest of a body we answered without reading (a refused upload): uvicorn discards
  it as it comes, and closes the connection when the timer fires.
* Logging (:func:`log_config`): the ``fruitpipe.*`` loggers write through uvicorn's own handler
  and formatter, so a line shows its level as uvicorn's do (``ERROR:    fruitpipe.rollback:
  ROLLBACK: ...``), at ``fruitpipe serve --log-level``.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11

from .middleware import MAX_REQUEST_HEAD_BYTES  # request line + headers
TIMEOUT_KEEP_ALIVE = 5  # seconds (uvicorn's default), also the time allowed for a request head


class H11Protocol(_UvicornH11):
    """uvicorn's h11 protocol, with the request-head timeout described in the module doc."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

    def _head_timeout(self) -> None:
        # h11 keeps the client IDLE until a complete request head has been parsed; SEND_BODY
        # after our answer is done is the unread rest of a refused body
        waiting_for_head = self.conn.their_state is h11.IDLE
        refused_body = self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY
        if (waiting_for_head or refused_body) and not self.transport.is_closing():
            self.transport.close()


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's logging config (:data:`uvicorn.config.LOGGING_CONFIG`, a :func:`logging.config.dictConfig`
    dict) with the ``fruitpipe`` logger added at ``level`` (``info``, ``warning``, ...): uvicorn's
    stderr handler, its level prefix, then the logger's name. It still propagates (to pytest's capture)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["fruitpipe"] = {**config["formatters"]["default"], "fmt": "%(levelprefix)s %(name)s: %(message)s"}
    config["handlers"]["fruitpipe"] = {**config["handlers"]["default"], "formatter": "fruitpipe"}
    config["loggers"]["fruitpipe"] = {"handlers": ["fruitpipe"], "level": level.upper()}
    return config


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> uvicorn.Config:
    """The :class:`uvicorn.Config` ``fruitpipe serve`` (and the tests' live server) use."""
    kw.setdefault("timeout_keep_alive", TIMEOUT_KEEP_ALIVE)
    return uvicorn.Config(app, host=host, port=port, http=H11Protocol,
                          h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES, **kw)


@contextmanager
def in_thread(app: Any, **kw: Any) -> Iterator[str]:
    """Serve ``app`` as ``fruitpipe serve`` does, on 127.0.0.1 and a free port, in a daemon thread;
    yields the base URL (tests, benchmarks). Raises RuntimeError if uvicorn does not start in 20 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    kw.setdefault("log_level", "warning")
    kw.setdefault("access_log", False)
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, **kw))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
