"""Django's PostgreSQL backend, with a health check that needs no round trip while a connection is quiet.

With CONN_HEALTH_CHECKS, Django asks a kept connection `SELECT 1` before the
first query of every request: a round trip, and a statement for PostgreSQL,
per request. Between requests an idle connection has nothing to read; if
PostgreSQL closed it (a restart, an administrator's terminate, an idle
timeout) or the peer reset it, the socket turns readable. So the check here
polls the socket without waiting, and only when there is something to read
(or the connection is not idle) asks PostgreSQL as Django does. A peer that
vanished silently is caught neither way: core.db.deadline bounds that.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self):
        raw = self.connection
        if raw is None or raw.closed:
            return False
        if raw.info.transaction_status == TransactionStatus.IDLE:
            poller = select.poll()
            poller.register(raw.fileno(), select.POLLIN | select.POLLPRI)
            if not poller.poll(0):
                return True
        return super().is_usable()
