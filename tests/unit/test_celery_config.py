"""The Celery config module workers and Flower load: what Celery itself makes of it."""

from __future__ import annotations

import json
import sys

import pytest
from celery import Celery

from edd_infra.render.celery_config import (
    CONFIG_MODULE,
    celery_config_files,
    celery_config_path,
    celery_settings,
    render_celery_config_module,
)
from edd_infra.render.edd_settings import edd_rabbitmq_settings, render_edd_settings


def settings(queue_type: str = "classic", **names) -> dict:
    base = dict(
        queue="edd",
        exchange="edd",
        exchange_type="fanout",
        queue_type=queue_type,
        control_exchange="celery",
        event_exchange="celeryev",
        event_queue_prefix="celeryev",
        soft_time_limit=3300,
        time_limit=3600,
        prefetch_multiplier=1,
    )
    return celery_settings(**(base | names))


def app_loading(tmp_path, monkeypatch, values: dict, **preconf) -> Celery:
    """A Celery app that, like the sandbox app, leaves its config to the loader."""
    files, env = celery_config_files("celery-w1", values)
    (tmp_path / f"{CONFIG_MODULE}.py").write_text(files[0].text)
    monkeypatch.setenv("CELERY_CONFIG_MODULE", env["CELERY_CONFIG_MODULE"])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, CONFIG_MODULE, raising=False)  # each test's own module
    app = Celery("edd", set_as_current=False)
    app.conf.update(preconf)
    return app


def test_celery_loads_confirms_and_the_queue_from_the_module(tmp_path, monkeypatch):
    app = app_loading(
        tmp_path,
        monkeypatch,
        settings("quorum", queue="jobs", exchange="jobs-x"),
        broker_connection_retry_on_startup=True,
    )
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    queue = app.amqp.queues["jobs"]
    # What the worker declares must match what the program declared on the broker.
    assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == ("jobs-x", "fanout", "jobs")
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    assert app.conf.broker_connection_retry_on_startup is True  # the app's own settings stay


def test_celery_runs_tasks_at_least_once_with_the_programs_time_limits(tmp_path, monkeypatch):
    app = app_loading(tmp_path, monkeypatch, settings("quorum") | {"task_time_limit": 600, "task_soft_time_limit": 540})

    @app.task(name="t", shared=False)
    def noop():
        pass

    task = app.tasks["t"]
    assert (task.acks_late, task.reject_on_worker_lost, task.time_limit, task.soft_time_limit) == (True, True, 600, 540)
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert app.conf.worker_detect_quorum_queues is True  # no global QoS on a quorum queue
    assert "worker_detect_quorum_queues" not in settings("classic")


def test_classic_queue_is_declared_without_arguments(tmp_path, monkeypatch):
    app = app_loading(tmp_path, monkeypatch, settings("classic"))
    assert not app.amqp.queues["edd"].queue_arguments


def test_renamed_control_and_event_exchanges_reach_the_app(tmp_path, monkeypatch):
    app = app_loading(
        tmp_path,
        monkeypatch,
        settings(control_exchange="edd-ctl", event_exchange="edd-ev", event_queue_prefix="edd-evq"),
    )
    assert (app.conf.control_exchange, app.conf.event_exchange, app.conf.event_queue_prefix) == (
        "edd-ctl",
        "edd-ev",
        "edd-evq",
    )


def test_each_service_has_its_own_module_and_no_secret_in_it():
    files, env = celery_config_files("flower", settings())
    assert (
        [f.path for f in files]
        == [celery_config_path("flower")]
        == ["/etc/edd-infra/celery/flower/edd_infra_celeryconfig.py"]
    )
    assert files[0].mode == "0644" and env["PYTHONPATH"] == "/etc/edd-infra/celery/flower"
    assert "amqp" not in render_celery_config_module(settings())


EDD = edd_rabbitmq_settings(
    hostname="127.0.0.1",
    edd_user="edd_user",
    edd_pass="p%w",
    edd_vhost="/edd",
    port=5672,
    mgmt_user="bunny",
    mgmt_pass="m",
    mgmt_port=15672,
)


def test_edd_settings_carry_the_celery_settings_in_every_format(tmp_path):
    import configparser
    import subprocess

    values = settings()
    as_json = json.loads(render_edd_settings(EDD, "json", values))
    assert as_json["celery"]["broker_transport_options"] == {"confirm_publish": True}
    assert as_json["rabbitmq"]["edd_pass"] == "p%w"
    ini = configparser.ConfigParser()
    ini.read_string(render_edd_settings(EDD, "ini", values))
    assert json.loads(ini["celery"]["broker_transport_options"]) == {"confirm_publish": True}
    assert ini["celery"]["task_default_queue"] == "edd" and ini["rabbitmq"]["edd_pass"] == "p%w"
    env = tmp_path / "edd.env"
    env.write_text(render_edd_settings(EDD, "env", values))
    out = subprocess.run(
        ["sh", "-c", f'. {env}; printf %s "$CELERY_BROKER_TRANSPORT_OPTIONS"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == {"confirm_publish": True}


@pytest.mark.parametrize("file_format", ["json", "ini", "env"])
def test_edd_settings_without_celery_settings_are_unchanged(file_format):
    assert "confirm_publish" not in render_edd_settings(EDD, file_format)
