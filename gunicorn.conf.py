"""gunicorn's settings for `make serve` and bench/api.py, from the environment or `.env`.

WEB_BIND (default 127.0.0.1:8000; `make serve` puts nginx there and gunicorn on a loopback
port of its own: txstream/serve.py), WEB_WORKERS (processes, default 2) and WEB_THREADS (per
process, default 1: sync workers; more make them gthread workers). On the 2-core benchmark
machine 2 sync workers served the most requests/s; 3-4 of them, or gthread workers, fewer
(bench/api.py). `GUNICORN_CMD_ARGS` and flags still override these, as gunicorn documents.

With PROMETHEUS_MULTIPROC_DIR set (`make serve` sets it to var/prometheus, emptied at each
start), `/metrics` adds up the counters of every worker (txstream.metrics); without it, each
scrape would see one worker's alone.
"""

import os

from dotenv import load_dotenv

load_dotenv(override=False)

bind = os.environ.get("WEB_BIND") or "127.0.0.1:8000"
workers = int(os.environ.get("WEB_WORKERS") or 2)
threads = int(os.environ.get("WEB_THREADS") or 1)
# gunicorn >= 25 opens a control socket at one fixed path per user; a second server (the
# benchmark beside `make serve`) would take it over. Nothing here uses gunicornc.
control_socket_disable = True


def child_exit(_server, worker) -> None:
    """A worker is gone: prometheus-client's multiprocess mode forgets its live gauges."""
    from txstream.metrics import worker_exited

    worker_exited(worker.pid)
