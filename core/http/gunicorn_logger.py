"""gunicorn's logger, with the access log off unless its logger would write.

The request line is the service's own (core/http/observability.py); gunicorn's
access log is not written (`accesslog` is None). But gunicorn decides whether
to build an access record from its settings alone, and any `logconfig_dict`
(which gunicorn_conf.py passes, for its own lines' format) counts as "on": so
for every request it gathered the access log's atoms and made a record for
`gunicorn.access` that no handler printed, about 5% of a small request's CPU
in a profile. `Logger` turns the access log off unless `gunicorn.access` is
enabled for INFO after gunicorn's logging setup (core.logging.gunicorn_logging
sets it to WARNING).
"""

from __future__ import annotations

import logging

from gunicorn import glogging


class Logger(glogging.Logger):
    def setup(self, cfg):
        super().setup(cfg)
        self._access_log_enabled = self._access_log_enabled and self.access_log.isEnabledFor(logging.INFO)
