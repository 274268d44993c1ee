"""How the local service runs under uvicorn: the HTTP parser and its limits, and the timeouts.

* Parser: h11, because it bounds what it buffers of a request head
  (``h11_max_incomplete_event_size``: a request line plus headers larger than that gets
  ``400`` and the connection is closed). uvicorn's httptools parser has no such limit: a client
  streaming a 65 MB header held the event loop for every other client.
* ``timeout_keep_alive``: an idle keep-alive connection, or one still sending a body we already
  answered (a refused upload), is closed after this many seconds.
* Request-head timeout: uvicorn has no option for it (its docs list none), so
  :class:`H11Protocol` arms uvicorn's own keep-alive timer when a connection opens; uvicorn cancels
  that timer as soon as a complete request head has arrived. A client that trickles its headers
  (slowloris) is disconnected after ``timeout_keep_alive`` seconds, the same as between requests.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11

MAX_REQUEST_HEAD_BYTES = 16 * 1024  # request line + headers (h11's own default; nginx uses 8-32 KiB)
TIMEOUT_KEEP_ALIVE = 5  # seconds (uvicorn's default), also the time allowed for a request head


class H11Protocol(_UvicornH11):
    """uvicorn's h11 protocol, with the request-head timeout described in the module doc."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's own timer and handler: cancelled when the request head is parsed
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> uvicorn.Config:
    """The :class:`uvicorn.Config` ``fruitpipe serve`` (and the tests' live server) use."""
    kw.setdefault("timeout_keep_alive", TIMEOUT_KEEP_ALIVE)
    return uvicorn.Config(app, host=host, port=port, http=H11Protocol,
                          h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES, **kw)
