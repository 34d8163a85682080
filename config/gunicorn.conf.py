"""gunicorn settings for confhook, each overridable from the environment.

Run: gunicorn -c config/gunicorn.conf.py wsgi:app
"""

import multiprocessing
import os
import shutil
import tempfile

from config.env import number
from server.handover import handover
from server.worker import read_timeout_from_env, send_timeout_from_env


def _env_int(name: str, default: int, lo: int = 1) -> int:
    return int(number(os.environ, name, default, lo, 1_000_000))


bind = os.environ.get("CONFHOOK_BIND", "127.0.0.1:8000")
# Threads let one worker answer a provider callback while another request of the same worker
# waits on the provider (the provider may call back before it answers our create).
# ReadAheadWorker is gunicorn's gthread, except that a request reaches a thread only once all
# of it has arrived: slow clients cost a buffer, not a thread (server/worker.py). Each has
# CONFHOOK_REQUEST_READ_TIMEOUT seconds (10) to send a whole request, and
# CONFHOOK_RESPONSE_SEND_TIMEOUT seconds (30) to take in its response.
worker_class = "server.worker.ReadAheadWorker"
# Read by each worker; checked here too, so a bad value stops the start.
read_timeout_from_env()
send_timeout_from_env()
workers = _env_int("CONFHOOK_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 8))
threads = _env_int("CONFHOOK_THREADS", 4)
# Connections one worker holds open (kept alive, or sending a request): slow clients count here.
worker_connections = _env_int("CONFHOOK_WORKER_CONNECTIONS", 1000)
timeout = _env_int("CONFHOOK_WORKER_TIMEOUT", 30)
graceful_timeout = _env_int("CONFHOOK_GRACEFUL_TIMEOUT", 20)
keepalive = _env_int("CONFHOOK_KEEPALIVE", 5, lo=0)
# Limits on the request line and headers: a callback's query string fits well within these.
limit_request_line = _env_int("CONFHOOK_LIMIT_REQUEST_LINE", 8190)
limit_request_fields = 100
limit_request_field_size = 8190
errorlog = "-"
loglevel = os.environ.get("CONFHOOK_LOG_LEVEL", "info")
# The app writes one line per request to stdout (JSON by default), with its request id,
# route, status and duration: that is the access log. gunicorn's own access log only when
# CONFHOOK_ACCESS_LOG names a file (or - for stdout). With JSON logs gunicorn's lines are JSON.
_json_logs = os.environ.get("CONFHOOK_LOG_FORMAT", "json").strip().lower() != "text"
accesslog = os.environ.get("CONFHOOK_ACCESS_LOG", "").strip() or None
logger_class = "server.logger.AccessLogger"
if _json_logs:
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
        }},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stdout"}},
        "root": {"level": "WARNING", "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": loglevel.upper(), "handlers": ["stdout"],
                               "propagate": False},
            # The app's own request line replaces gunicorn's, unless an access log is asked for.
            "gunicorn.access": {"level": "INFO" if accesslog else "CRITICAL",
                                "handlers": ["stdout"], "propagate": False},
        },
    }
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

# Prometheus metrics with several workers: each worker writes its samples to files in one
# directory, which /metrics adds up. A fresh directory per start, unless one is given.
# (A reload re-reads this file in the same master: the directory is kept then.)
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
_own_metrics_dir = not _metrics_dir or os.environ.get("CONFHOOK_OWN_METRICS_DIR") == _metrics_dir
if not _metrics_dir:
    _metrics_dir = tempfile.mkdtemp(prefix="confhook-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["CONFHOOK_OWN_METRICS_DIR"] = _metrics_dir
elif not _own_metrics_dir:
    os.makedirs(_metrics_dir, exist_ok=True)
    for _name in os.listdir(_metrics_dir):  # samples of an earlier run
        if _name.endswith(".db"):
            os.unlink(os.path.join(_metrics_dir, _name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def on_reload(server):
    # SIGHUP: the old workers serve until the new ones have loaded the app (server/worker.py).
    handover.begin(server.worker_age, server.cfg.workers)
