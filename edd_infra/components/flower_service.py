"""FlowerService: Flower as a daemon behind basic auth, reading the management API.

Creates `<name>-service`: flowerconfig.py (address, basic auth, broker_api, persistent db)
and an environment file with the Flower user's broker URL (Flower reads the management API
with the same account), both 0640 root:<group>, and the Celery config module (publisher
confirms for the tasks Flower's API sends), sent on stdin; the unit or plist; the service
enabled, restarted when a file changes, and `/healthcheck` answering before `up` calls it done.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import pulumi

from ..hosts import HostTarget
from ..render import host_scripts
from ..render.celery_commands import flower_argv
from ..render.celery_config import celery_config_cache, celery_config_files, celery_settings_for
from ..render.host_scripts import FileSpec
from ..render.launchd_plists import render_daemon_plist
from ..render.service_files import render_env_file, render_flower_config
from ..render.signing_files import signing_files, signing_paths, untrusted_paths
from ..render.systemd_units import render_service_unit
from ..settings import Flower
from .celery_worker_service import ETC_DIR

STATE_DIRECTORY = "flower"


def flower_service_name(manager: str) -> str:
    return "flower" if manager == "systemd" else "org.celeryq.flower"


def flower_url(flower: Flower) -> str:
    host = f"[{flower.address}]" if ":" in flower.address else flower.address
    prefix = f"{flower.url_prefix}/" if flower.url_prefix else ""
    return f"http://{host}:{flower.port}/{prefix}"


class FlowerService(pulumi.ComponentResource):
    """Flower, configured from a root-owned file, never from argv."""

    url: str

    def __init__(
        self,
        name: str,
        *,
        flower: Flower,
        host: HostTarget,
        broker_url: pulumi.Input[str],
        broker_api: str,
        ui_password: pulumi.Input[str],
        celery_config: Optional[Mapping[str, Any]] = None,
        signing: Optional[tuple[pulumi.Output[str], str, Optional[str]]] = None,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("edd:infra:FlowerService", name, None, opts)
        celery_config = celery_settings_for() if celery_config is None else celery_config
        manager = host.manager
        service = flower_service_name(manager)
        conf_path, env_path = f"{ETC_DIR}/flowerconfig.py", f"{ETC_DIR}/{service}.env"
        db_path = f"/var/lib/{STATE_DIRECTORY}/flower.db"

        signing_key, signing_cert, previous_cert = signing or (None, "", None)
        config_files, config_env = celery_config_files(service, celery_config)

        def files(args: list) -> str:
            amqp, ui_pw, key = args
            extra, env = signing_files(service, flower.group, key, signing_cert, previous_cert) if signing else ([], {})
            config = render_flower_config(
                address=flower.address, port=flower.port, url_prefix=flower.url_prefix,
                basic_auth_user=flower.ui_user, basic_auth_password=ui_pw,
                broker_api=broker_api,
                persistent=flower.persistent, db_path=db_path,
            )
            return host_scripts.secret_bundle([
                FileSpec(conf_path, config, "0640", "root", flower.group),
                FileSpec(env_path, render_env_file({"CELERY_BROKER_URL": amqp, **env, **config_env}), "0640", "root",
                         flower.group, keep_on_failure=True),
                *extra, *config_files,
            ])

        extra_paths = (list(signing_paths(service)) if signing else []) + [f.path for f in config_files]
        argv = flower_argv(virtualenv=flower.virtualenv, app=flower.app, config_path=conf_path)
        if manager == "systemd":
            definition = render_service_unit(
                description="Flower, the Celery dashboard (edd-infra)", argv=argv, user=flower.user,
                group=flower.group, working_directory=flower.working_directory, environment_file=env_path,
                state_directory=STATE_DIRECTORY,
            )
        else:
            definition = render_daemon_plist(
                label=service, argv=argv, user=flower.user, group=flower.group,
                working_directory=flower.working_directory, environment_file=env_path,
                log_path="/var/log/celery/flower.log",
            )
        self.url = flower_url(flower)
        check_url = f"{self.url}healthcheck"
        health = (host_scripts.http_ok(virtualenv=flower.virtualenv, url=check_url) + "\n"
                  + host_scripts.http_report(virtualenv=flower.virtualenv, url=check_url))
        self.service = host.run(
            f"{name}-service",
            create=host_scripts.service_install(
                manager=manager, name=service, definition=definition, health=health,
                absent=untrusted_paths(service, previous_cert) if signing else ()),
            delete=host_scripts.service_remove(manager=manager, name=service, files=[conf_path, env_path, *extra_paths],
                                               caches=[celery_config_cache(service)]),
            stdin=pulumi.Output.all(pulumi.Output.secret(broker_url), pulumi.Output.secret(ui_password),
                                    signing_key).apply(files),
            repairable=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on), delete_before_replace=True),
        )
        self.service_name = service
        self.register_outputs({"url": self.url, "serviceName": service})
