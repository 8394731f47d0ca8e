"""argv for the Celery worker and Flower: no secret ever appears here."""

from __future__ import annotations


def worker_argv(
    *,
    virtualenv: str,
    app: str,
    name: str,
    queues: list[str],
    concurrency: int | None,
    autoscale: str | None,
    log_level: str,
    events: bool,
) -> list[str]:
    """`celery -A edd worker -Q edd -n edd-worker-1@%h ...` (`-A` before the subcommand)."""
    argv = [
        f"{virtualenv}/bin/celery",
        "-A",
        app,
        "worker",
        "-Q",
        ",".join(queues),
        "-n",
        f"{name}@%h",
        "--loglevel",
        log_level.upper(),
    ]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    if autoscale is not None:
        argv += ["--autoscale", autoscale]
    if events:
        argv.append("-E")
    return argv


def flower_argv(*, virtualenv: str, app: str, config_path: str) -> list[str]:
    """Flower reads address, auth and broker_api from its config file, not from argv."""
    return [f"{virtualenv}/bin/celery", "-A", app, "flower", f"--conf={config_path}"]
