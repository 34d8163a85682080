"""gunicorn's logger for confhook: no access line unless asked for, and no secret in a line."""

from __future__ import annotations

import re
from typing import Any

from gunicorn import glogging

_CALLBACK_KEY = re.compile(r"(/callbacks/[^/\s]*/[^/\s]*/)[^\s'\"]*")
_QUERY = re.compile(r"\?[^\s'\"]*")


def redact(text: str) -> str:
    """A log message with every callback URL's key and every query string replaced: gunicorn
    quotes the request line of a request it refuses ("Invalid request from …")."""
    return _QUERY.sub("?<query>", _CALLBACK_KEY.sub(r"\1<key>", text))


class AccessLogger(glogging.Logger):
    """gunicorn's logger, which builds its access line only when an access log is asked for,
    and never writes a callback key or a query string.

    The app writes its own line per request (app/logs.py). gunicorn's builds its line whenever
    a logging configuration is given (ours sets JSON formatting), even to drop it at once.
    """

    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().warning(redact(str(msg % args if args else msg)), **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().error(redact(str(msg % args if args else msg)), **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().exception(redact(str(msg % args if args else msg)), **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().info(redact(str(msg % args if args else msg)), **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        super().debug(redact(str(msg % args if args else msg)), **kwargs)
