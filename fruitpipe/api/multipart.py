"""Multipart file parts named only with RFC 5987 ``filename*=`` are files too.

python-multipart drops every ``key*=`` parameter of a part's ``Content-Disposition`` on purpose
(RFC 7578 section 4.2 says senders must not use the RFC 5987 encoding in form data), so Starlette
sees a part with ``filename*=UTF-8''pomme%20%C3%A9t%C3%A9.jpg`` and no ``filename`` as a text field
and FastAPI answers "Expected UploadFile". Older clients (urllib3 1.x, so ``requests`` with a
non-ASCII file name) send exactly that. :class:`Rfc5987MultiPartParser` adds the decoded name as a
plain ``filename`` parameter when a part has only the extended one; everything else (limits,
spooling, errors) stays Starlette's. :func:`install` makes Starlette's ``Request.form()`` use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import starlette.requests
from starlette.formparsers import MultiPartParser

# filename*=charset'lang'percent-encoded (RFC 5987 section 3.2.1), optionally quoted by sloppy clients
_EXTENDED = re.compile(rb"""(?:^|;)\s*filename\*\s*=\s*"?([^";]*)"?""", re.IGNORECASE)
_PLAIN = re.compile(rb"(?:^|;)\s*filename\s*=", re.IGNORECASE)


def extended_filename(disposition: bytes) -> str | None:
    """The decoded ``filename*`` of a ``Content-Disposition`` value that has no plain ``filename``.

    ``b'form-data; name="file"; filename*=UTF-8\\'\\'a%20b.jpg'`` -> ``"a b.jpg"``; None when there
    is a plain ``filename`` (it stays authoritative) or no extended one. Undecodable bytes are
    replaced, never raised.
    """
    if _PLAIN.search(disposition):
        return None
    match = _EXTENDED.search(disposition)
    if match is None:
        return None
    value = match.group(1).decode("latin-1")
    charset, _lang, encoded = value.split("'", 2) if value.count("'") >= 2 else ("utf-8", "", value)
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return unquote(encoded, encoding="utf-8", errors="replace")


class Rfc5987MultiPartParser(MultiPartParser):
    """Starlette's parser, plus the decoded ``filename*`` as ``filename`` (see the module doc)."""

    def on_headers_finished(self) -> None:
        disposition = self._current_part.content_disposition or b""
        name = extended_filename(disposition)
        if name is not None:
            quoted = name.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")
            self._current_part.content_disposition = disposition + b'; filename="' + quoted + b'"'
        super().on_headers_finished()


def install() -> None:
    """Make ``Request.form()`` parse multipart bodies with :class:`Rfc5987MultiPartParser`."""
    starlette.requests.MultiPartParser = Rfc5987MultiPartParser  # type: ignore[misc]
