"""gunicorn settings for confhook, each overridable from the environment.

Run: gunicorn -c config/gunicorn.conf.py wsgi:app
"""

import multiprocessing
import os


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"confhook: {name} must be an integer, got {raw!r}") from None


bind = os.environ.get("CONFHOOK_BIND", "127.0.0.1:8000")
# Threads let one worker answer a provider callback while another request of the same worker
# waits on the provider (the provider may call back before it answers our create).
worker_class = "gthread"
workers = _env_int("CONFHOOK_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 8))
threads = _env_int("CONFHOOK_THREADS", 4)
timeout = _env_int("CONFHOOK_WORKER_TIMEOUT", 30)
graceful_timeout = _env_int("CONFHOOK_GRACEFUL_TIMEOUT", 20)
keepalive = _env_int("CONFHOOK_KEEPALIVE", 5)
# Limits on the request line and headers: a callback's query string fits well within these.
limit_request_line = _env_int("CONFHOOK_LIMIT_REQUEST_LINE", 8190)
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = os.environ.get("CONFHOOK_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("CONFHOOK_LOG_LEVEL", "info")
# Honour X-Forwarded-* only from these proxy addresses.
forwarded_allow_ips = os.environ.get("CONFHOOK_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# gunicorn's control socket (gunicornc) is off unless a path is given: its default, one per
# user under $HOME, would be shared by every instance on the host.
_control_socket = os.environ.get("CONFHOOK_CONTROL_SOCKET", "").strip()
if _control_socket:
    control_socket = _control_socket
control_socket_disable = not _control_socket
# Callback URLs carry their key in the path: log the path without it.
access_log_format = '%(h)s "%(m)s %({confhook.log_path}e)s" %(s)s %(B)s %(M)sms'
