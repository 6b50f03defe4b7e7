"""Keep a connection alive after a request only when its whole body is read, and say so.

Keeping a connection alive after a request means reading that request's whole
body first. gunicorn's threaded worker does it after the answer is written, for
64 KiB at most by default (`gunicorn.http.parser._DRAIN_MAX_BYTES`); past that it
closes the connection, though the answer it has already written announced
keep-alive. A client that keeps connections, NGINX's upstream pool above all,
then sends its next request on a connection being closed under it: a POST sent
there is answered 502, since NGINX cannot know whether it was stored. The service
refuses a body past JSON_BODY_LIMIT (100kb) by its Content-Length without reading
it, and NGINX passes bodies up to its own cap (1 MiB), so such a refusal poisoned
one pooled connection for the next client's request.

So gunicorn drains up to `DRAINED_AT_MOST` (NGINX's cap: a test keeps them in that
order), and a request whose declared body is longer still (only a client that
bypasses NGINX can send one) is marked to close in gunicorn's `pre_request` hook,
so its answer says `Connection: close`. Answering before the body is read and
reading it after is what NGINX itself does with a body it refuses.
"""

from __future__ import annotations

from gunicorn.http import parser

# The longest unread body gunicorn reads to keep its connection: NGINX's client_max_body_size.
DRAINED_AT_MOST = 1024 * 1024


def install() -> None:
    """Make gunicorn drain up to DRAINED_AT_MOST of an unread body (its parser reads the bound on each drain)."""
    parser._DRAIN_MAX_BYTES = DRAINED_AT_MOST


def close_after_a_body_it_cannot_drain(req) -> None:
    """Mark `req` (gunicorn's Request) to be answered with `Connection: close` when its body is too long to drain."""
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            if value.isdigit() and int(value) > DRAINED_AT_MOST:
                req.force_close()
            return
