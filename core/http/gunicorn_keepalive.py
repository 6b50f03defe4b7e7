"""Say `Connection: close` when gunicorn is going to close the connection after the answer anyway.

Keeping a connection alive after a request means reading that request's whole
body first. gunicorn's threaded worker does it after the answer is written, for
64 KiB at most (`gunicorn.http.parser._DRAIN_MAX_BYTES`); past that it closes the
connection, but the answer it has already written announced keep-alive. A client
that keeps connections, NGINX's upstream pool above all, then sends its next
request on a connection being closed under it: a POST sent there is answered
502, since NGINX cannot know whether it was stored. The service refuses an
over-long body by its Content-Length without reading it (JSON_BODY_LIMIT is
100kb, NGINX passes up to 1 MiB), so any such refusal poisoned one pooled
connection for the next client's request.

gunicorn's `pre_request` hook sees each request before the application: a body
longer than gunicorn will drain marks the request to close, and the answer says
so. Connections of smaller bodies stay alive as before.
"""

from __future__ import annotations

from gunicorn.http import parser

# What gunicorn drains of an unread body before it gives up on the connection.
DRAINED_AT_MOST: int = parser._DRAIN_MAX_BYTES


def close_after_a_body_it_cannot_drain(req) -> None:
    """Mark `req` (gunicorn's Request) to be answered with `Connection: close` when its body is too long to drain."""
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            if value.isdigit() and int(value) > DRAINED_AT_MOST:
                req.force_close()
            return
