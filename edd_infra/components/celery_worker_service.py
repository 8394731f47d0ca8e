"""CeleryWorkerService: one Celery worker as a systemd unit (or a launchd daemon).

Creates `<name>-service`: the environment file with the broker URL (0640, root:<group>,
sent on stdin), the Celery config module it names (publisher confirms, queue settings), with
message signing the signing key, certificate and store too (with the previous certificate
during a key rotation), the unit or plist, the service
enabled at boot, restarted when any of its files changes, and an `inspect conf` round trip
through the broker (confirms on) before `up` calls it done.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import pulumi

from ..hosts import HostTarget
from ..render import host_scripts
from ..render.celery_commands import worker_argv
from ..render.celery_config import celery_config_cache, celery_config_files, celery_settings_for, required_settings
from ..render.host_scripts import FileSpec
from ..render.launchd_plists import render_daemon_plist
from ..render.service_files import render_env_file
from ..render.signing_files import signing_files, signing_paths, untrusted_paths
from ..render.systemd_units import render_service_unit
from ..settings import Worker

ETC_DIR = "/etc/edd-infra"


def worker_service_name(worker: Worker, manager: str) -> str:
    return f"celery-{worker.name}" if manager == "systemd" else f"org.celeryq.{worker.name}"


def worker_definition(worker: Worker, manager: str, env_path: str, stop_timeout: int = 60) -> str:
    """The unit file (systemd) or plist (launchd) text for a worker; a stop waits up to
    `stop_timeout` seconds for running tasks."""
    argv = worker_argv(
        virtualenv=worker.virtualenv,
        app=worker.app,
        name=worker.name,
        queues=worker.queues,
        concurrency=worker.concurrency,
        autoscale=worker.autoscale,
        log_level=worker.log_level,
        events=worker.events,
    )
    if manager == "systemd":
        return render_service_unit(
            description=f"Celery worker {worker.name} (edd-infra)",
            argv=argv,
            user=worker.user,
            group=worker.group,
            working_directory=worker.working_directory,
            environment_file=env_path,
            supplementary_groups=worker.extra_groups,
            stop_timeout=stop_timeout,
            graceful_children=True,
        )
    return render_daemon_plist(
        label=worker_service_name(worker, manager),
        argv=argv,
        user=worker.user,
        group=worker.group,
        working_directory=worker.working_directory,
        environment_file=env_path,
        log_path=f"/var/log/celery/{worker.name}.log",
        exit_timeout=stop_timeout,
    )


class CeleryWorkerService(pulumi.ComponentResource):
    """A Celery worker daemon that reads its broker URL from a root-owned file."""

    service_name: str

    def __init__(
        self,
        name: str,
        *,
        worker: Worker,
        host: HostTarget,
        broker_url: pulumi.Input[str],
        celery_config: Optional[Mapping[str, Any]] = None,
        result_backend: Optional[pulumi.Input[str]] = None,
        signing: Optional[tuple[pulumi.Output[str], str, Optional[str]]] = None,
        broker_ca: Optional[str] = None,
        stop_timeout: int = 60,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:CeleryWorkerService", name, None, opts)
        # Without a config: the settings the default AppQueue and Tasks give (what a stack's defaults give).
        celery_config = celery_settings_for() if celery_config is None else celery_config
        manager = host.manager
        self.service_name = worker_service_name(worker, manager)
        env_path = f"{ETC_DIR}/{self.service_name}.env"
        signing_key, signing_cert, previous_cert = signing or (None, "", None)
        ca_path = f"{ETC_DIR}/tls/{self.service_name}/ca.pem"
        config_files, config_env = celery_config_files(self.service_name, celery_config)

        def files(args: list) -> str:
            url, key, backend = args
            extra, env = (
                signing_files(self.service_name, worker.group, key, signing_cert, previous_cert)
                if signing
                else ([], {})
            )
            extra += config_files
            values = {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": backend or "rpc://", **env, **config_env}
            if broker_ca:
                # The app sets broker_use_ssl from it (Celery has no environment name for it).
                extra.append(FileSpec(ca_path, broker_ca))
                values["CELERY_BROKER_CA_FILE"] = ca_path
            env_file = FileSpec(env_path, render_env_file(values), "0640", "root", worker.group, keep_on_failure=True)
            return host_scripts.secret_bundle([env_file, *extra])

        bundle = pulumi.Output.all(pulumi.Output.secret(broker_url), signing_key, result_backend).apply(files)
        extra_paths = list(signing_paths(self.service_name)) if signing else []
        extra_paths += [ca_path] if broker_ca else []
        extra_paths += [f.path for f in config_files]
        health = (
            host_scripts.worker_ping(
                env_file=env_path,
                user=worker.user,
                working_directory=worker.working_directory,
                virtualenv=worker.virtualenv,
                app=worker.app,
                node=worker.name,
                required=required_settings(celery_config),
            )
            if manager == "systemd"
            else ""
        )
        self.service = host.run(
            f"{name}-service",
            create=host_scripts.service_install(
                manager=manager,
                name=self.service_name,
                definition=worker_definition(worker, manager, env_path, stop_timeout),
                health=health,
                absent=untrusted_paths(self.service_name, previous_cert) if signing else (),
                # Its restart waits for running tasks: other scripts on the host wait that long for the lock.
                lock_wait=stop_timeout + 900 if manager == "systemd" else None,
            ),
            delete=host_scripts.service_remove(
                manager=manager,
                name=self.service_name,
                files=[env_path, *extra_paths],
                caches=[celery_config_cache(self.service_name)],
            ),
            stdin=bundle,
            repairable=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on), delete_before_replace=True),
        )
        self.register_outputs({"serviceName": self.service_name})
