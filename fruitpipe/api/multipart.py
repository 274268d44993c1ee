"""Multipart parts named only with RFC 2231/5987 ``filename*=`` (or ``name*=``) are files too.

python-multipart drops every ``key*=`` parameter of a part's ``Content-Disposition`` on purpose
(RFC 7578 section 4.2 says senders must not use the RFC 5987 encoding in form data), so Starlette
sees a part with ``filename*=UTF-8''pomme%20%C3%A9t%C3%A9.jpg`` and no ``filename`` as a text field
and FastAPI answers "Expected UploadFile". Older clients (urllib3 1.x, so ``requests`` with a
non-ASCII file name) send exactly that. :class:`Rfc5987MultiPartParser` adds the decoded value as
a plain parameter when a part has only the extended form; the decoding (charsets, quoting,
RFC 2231 continuations) is the standard library's ``email`` package, and everything else (limits,
spooling, errors) stays Starlette's. :func:`install` makes Starlette's ``Request.form()`` use it.
"""

from __future__ import annotations

from email.message import Message
from email.utils import collapse_rfc2231_value

import starlette.requests
from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartParser

_KEYS = ("name", "filename")


def extended_params(disposition: bytes) -> dict[str, str]:
    """``name``/``filename`` that a ``Content-Disposition`` value gives only in extended form, decoded.

    ``b'form-data; name="file"; filename*=UTF-8\\'\\'a%20b.jpg'`` -> ``{"filename": "a b.jpg"}``.
    A plain parameter stays authoritative (it is not returned). Undecodable bytes are replaced,
    an unknown charset falls back to the raw text; nothing is raised.
    """
    _, plain = parse_options_header(disposition)  # what Starlette will see
    header = Message()
    header["content-disposition"] = disposition.decode("latin-1")
    out: dict[str, str] = {}
    for key in _KEYS:
        value = None if key.encode() in plain else header.get_param(key, header="content-disposition")
        if isinstance(value, tuple):  # (charset, language, text): only the extended form gives this
            out[key] = collapse_rfc2231_value(value, errors="replace", fallback_charset="utf-8")
    return out


class Rfc5987MultiPartParser(MultiPartParser):
    """Starlette's parser, plus decoded ``name*``/``filename*`` as plain parameters (see the module doc)."""

    def on_headers_finished(self) -> None:
        disposition = self._current_part.content_disposition or b""
        for key, value in extended_params(disposition).items():
            quoted = value.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")
            disposition += b"; " + key.encode() + b'="' + quoted + b'"'
        self._current_part.content_disposition = disposition
        super().on_headers_finished()


def install() -> None:
    """Make ``Request.form()`` parse multipart bodies with :class:`Rfc5987MultiPartParser`."""
    starlette.requests.MultiPartParser = Rfc5987MultiPartParser  # type: ignore[misc]
