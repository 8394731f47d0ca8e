"""`make bench`'s fresh-up breakdown: the critical path through the state's dependencies."""

from __future__ import annotations

from sandbox.deploy_timeline import Span, critical_path, slowest, spans

P = "urn:pulumi:bench::edd-infra::"
BROKER = P + "edd:infra:RabbitBroker::broker"
INSTALL = P + "edd:infra:RabbitBroker$command:remote:Command::broker-install"
ADMIN = P + "edd:infra:RabbitBroker$command:remote:Command::broker-admin"
VHOST = P + "edd:infra:EddVhost$rabbitmq:index/vHost:VHost::edd"
ACCOUNT = P + "command:remote:Command::account-celery"
WORKER = P + "edd:infra:CeleryWorkerService$command:remote:Command::worker-install"
WORKERS = P + "edd:infra:CeleryWorkerService::worker"


def test_path_follows_the_dependency_that_ended_last():
    timed = {
        INSTALL: Span(INSTALL, 1.0, 11.0),
        ADMIN: Span(ADMIN, 11.1, 13.0),
        VHOST: Span(VHOST, 13.2, 13.5),
        ACCOUNT: Span(ACCOUNT, 1.0, 2.0),  # in parallel with the broker: not on the path
        WORKER: Span(WORKER, 13.6, 20.0),
    }
    deps = {ADMIN: [INSTALL], VHOST: [ADMIN], WORKER: [ACCOUNT, VHOST]}
    path = critical_path(timed, deps, {})
    assert [s.urn for s in path] == [INSTALL, ADMIN, VHOST, WORKER]


def test_a_component_dependency_stands_for_its_resources_and_parents_pass_theirs_on():
    timed = {
        INSTALL: Span(INSTALL, 1.0, 11.0),
        ADMIN: Span(ADMIN, 11.1, 13.0),
        WORKER: Span(WORKER, 13.6, 20.0),
    }
    # The worker's component depends on the broker's component; the command itself on nothing.
    deps = {WORKERS: [BROKER]}
    parents = {INSTALL: BROKER, ADMIN: BROKER, WORKER: WORKERS}
    path = critical_path(timed, deps | {ADMIN: [INSTALL]}, parents)
    assert [s.name for s in path] == [
        "broker-install (command:remote:Command)",
        "broker-admin (command:remote:Command)",
        "worker-install (command:remote:Command)",
    ]


def test_a_dependency_still_running_when_a_step_started_is_not_what_it_waited_for():
    timed = {INSTALL: Span(INSTALL, 1.0, 11.0), WORKER: Span(WORKER, 2.0, 9.0)}
    assert [s.urn for s in critical_path(timed, {WORKER: [INSTALL]}, {})] == [INSTALL]


def test_spans_keep_only_finished_steps_and_slowest_orders_them():
    timed = spans({INSTALL: 1.0, ADMIN: 11.0, WORKER: 12.0}, {INSTALL: 11.0, ADMIN: 12.5})
    assert set(timed) == {INSTALL, ADMIN}
    assert [s.urn for s in slowest(timed.values(), 1)] == [INSTALL]
    assert critical_path({}, {}, {}) == []
