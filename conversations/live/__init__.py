"""Live delivery: the long-poll `wait` of the message page and the SSE stream.

Served by each instance's live listener, a gunicorn ASGI worker beside the
instance's WSGI workers (messenger/live_listener.py starts it, serving messenger/asgi_live.py), which NGINX
sends `GET /conversations/{id}/messages?wait=` and `GET /conversations/{id}/stream`
to. What a waiter answers is the ordinary page route's own answer (the same
view, selector, statement and refusals, called through core.http.wsgi_bridge);
this package only decides when to ask again: a PostgreSQL notification for the
conversation (core.db.notifications), the wait's end, or the instance draining.
docs/live.md tells the design and its figures.
"""
