"""gunicorn's own refusals, in the contract's `{"error": ...}` shape.

gunicorn answers some requests before Django sees them: a malformed request
line or header (400), a request line longer than `limit_request_line` (414),
too many or too large header fields (431), an unsupported Transfer-Encoding
(501). It writes every such answer with `gunicorn.util.write_error`, as an HTML
page, and has no setting or hook for that body. Every worker class calls that
function through the module (`util.write_error(...)`), so `install()` swaps in
one that writes JSON: the status, the reason phrase, `Connection: close` and
the decision to refuse all stay gunicorn's own.

The limits are declared here, once: gunicorn_conf.py passes them to gunicorn
and the OpenAPI description quotes them.
"""

from __future__ import annotations

import json

from gunicorn import util

# gunicorn's defaults, stated so that the description can quote them. NGINX in
# front allows longer lines and more header bytes (large_client_header_buffers
# 4 8k), so these are the limits a client meets first.
LIMIT_REQUEST_LINE = 4094  # bytes of method, path, query and version
LIMIT_REQUEST_FIELDS = 100  # header fields
LIMIT_REQUEST_FIELD_SIZE = 8190  # bytes of one header field

# gunicorn's message may quote the request; the client gets the start of it.
MAX_DETAIL = 200


def error_body(status: int, reason: str, detail: str) -> bytes:
    """The JSON body for one of gunicorn's refusals (ASCII, so any client decodes it)."""
    text = detail or (reason if status != 500 else "Internal server error")
    if len(text) > MAX_DETAIL:
        text = text[:MAX_DETAIL] + "..."
    return json.dumps({"error": text}, separators=(",", ":")).encode("ascii")


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """`gunicorn.util.write_error`'s signature and framing, with a JSON body."""
    body = error_body(status_int, reason, mesg)
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make every gunicorn worker of this process (and those it forks) refuse in JSON. Idempotent."""
    util.write_error = write_json_error
