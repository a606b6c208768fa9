"""gunicorn's logger in CHUNKQ_LOG_FORMAT (``schema.logs``), named by web/gunicorn_conf.py as
``logger_class``: its error log and the app's loggers write the workers' format."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn import glogging

from schema import logs

# One filter for every handler, so a configuration reload (SIGHUP) adds none twice.
_CONTEXT = logs.ContextFilter()


class Logger(glogging.Logger):
    """gunicorn's own logger, its error log formatted as ``schema.logs`` formats, and the
    app's loggers (the root's) writing where the error log goes, at its level. gunicorn's
    options keep their meaning: ``--error-logfile`` says where, ``--log-level`` how much.
    With json, the access log (when on) is one JSON object per request too."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        fmt = logs.log_format()  # web.gunicorn_conf refused a bad value already
        error = [h for h in self.error_log.handlers if getattr(h, "_gunicorn", False)]
        access = [h for h in self.access_log.handlers if getattr(h, "_gunicorn", False)]
        for handler in error + (access if fmt == "json" else []):
            handler.setFormatter(logs.formatter(fmt))
            handler.addFilter(_CONTEXT)
        root = logging.getLogger()
        for old in [h for h in root.handlers if getattr(h, "_gunicorn", False)]:
            root.removeHandler(old)  # the error log's handler of a previous setup
        for handler in error:
            root.addHandler(handler)
        root.setLevel(self.loglevel)
        logs.quiet_chatty(self.loglevel)
