"""ASGI entry point of an instance's live listener (messenger/live_listener.py forks it from the WSGI master).

    gunicorn -c messenger/gunicorn_live_conf.py --bind fd://N messenger.asgi_live:application

The project wires the pieces here, so the chat app (conversations.live) never
imports the project: the live routes wrap the ordinary WSGI application.
"""

from messenger.wsgi import application as wsgi_application  # first: it sets Django up

# isort: split
from conversations.live.app import LiveApp  # its reads import the chat's models

application = LiveApp(wsgi_application)
