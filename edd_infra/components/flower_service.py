"""FlowerService: Flower as a daemon behind basic auth, reading the management API.

Creates `<name>-service`: flowerconfig.py (address, basic auth, broker_api, persistent db,
with flower.tls the certificate and key it serves HTTPS with) and an environment file with
the Flower user's broker URL (Flower reads the management API with the same account), both
0640 root:<flower group> (Flower's own group, not the workers'), and the Celery config module
(publisher confirms for the tasks Flower's API sends), sent on stdin; with celerySigning the
certificate and store it verifies with (the key only with flower.canSendTasks); the unit or
plist (its database directory 0700, files it writes 0600); the service enabled, restarted
when a file changes, and `/healthcheck` answering (over HTTPS verified against the CA with
flower.tls) before `up` calls it done.
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
    return f"{flower.scheme}://{host}:{flower.port}/{prefix}"


TLS_DIR = f"{ETC_DIR}/tls/flower"


def flower_tls_paths() -> tuple[str, str, str]:
    """Where Flower's HTTPS certificate, key and CA (for its health check) go."""
    return f"{TLS_DIR}/cert.pem", f"{TLS_DIR}/key.pem", f"{TLS_DIR}/ca.pem"


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
        tls: Optional[tuple[str, str, pulumi.Output[str]]] = None,
        depends_on: Sequence[pulumi.Resource] = (),
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        """`tls`: (certificate, CA certificate, key) texts for HTTPS (flower.tls)."""
        super().__init__("edd:infra:FlowerService", name, None, opts)
        celery_config = celery_settings_for() if celery_config is None else celery_config
        manager = host.manager
        service = flower_service_name(manager)
        conf_path, env_path = f"{ETC_DIR}/flowerconfig.py", f"{ETC_DIR}/{service}.env"
        db_path = f"/var/lib/{STATE_DIRECTORY}/flower.db"

        signing_key, signing_cert, previous_cert = signing or (None, "", None)
        # Verify only unless it may send tasks: a key Flower does not use is a key to steal.
        signing_key = signing_key if flower.can_send_tasks else None
        tls_cert, tls_ca, tls_key = tls or ("", "", None)
        cert_path, key_path, ca_path = flower_tls_paths()
        config_files, config_env = celery_config_files(service, celery_config)
        private = ("0640", "root", flower.group)

        def files(args: list) -> str:
            amqp, ui_pw, key, key_pem = args
            extra, env = (
                signing_files(service, flower.group, key, signing_cert, previous_cert, private=True)
                if signing
                else ([], {})
            )
            if tls:
                extra += [
                    FileSpec(cert_path, tls_cert, *private),
                    FileSpec(key_path, key_pem, *private),
                    FileSpec(ca_path, tls_ca, *private),
                ]
            config = render_flower_config(
                address=flower.address,
                port=flower.port,
                url_prefix=flower.url_prefix,
                basic_auth_user=flower.ui_user,
                basic_auth_password=ui_pw,
                broker_api=broker_api,
                persistent=flower.persistent,
                db_path=db_path,
                certfile=cert_path if tls else None,
                keyfile=key_path if tls else None,
            )
            return host_scripts.secret_bundle(
                [
                    FileSpec(conf_path, config, *private),
                    FileSpec(
                        env_path,
                        render_env_file({"CELERY_BROKER_URL": amqp, **env, **config_env}),
                        *private,
                        keep_on_failure=True,
                    ),
                    *extra,
                    *config_files,
                ]
            )

        extra_paths = (list(signing_paths(service)) if signing else []) + [f.path for f in config_files]
        extra_paths += list(flower_tls_paths()) if tls else []
        # Files an earlier `up` may have left that must go: the signing key once Flower no longer
        # signs, an untrusted previous certificate, Flower's TLS files once TLS is off.
        absent = untrusted_paths(service, previous_cert, key=signing_key is not None) if signing else []
        absent += [] if tls else list(flower_tls_paths())
        argv = flower_argv(virtualenv=flower.virtualenv, app=flower.app, config_path=conf_path)
        if manager == "systemd":
            definition = render_service_unit(
                description="Flower, the Celery dashboard (edd-infra)",
                argv=argv,
                user=flower.user,
                group=flower.group,
                working_directory=flower.working_directory,
                environment_file=env_path,
                state_directory=STATE_DIRECTORY,
                private_state=True,
            )
        else:
            definition = render_daemon_plist(
                label=service,
                argv=argv,
                user=flower.user,
                group=flower.group,
                working_directory=flower.working_directory,
                environment_file=env_path,
                log_path="/var/log/celery/flower.log",
                umask=0o077,
            )
        self.url = flower_url(flower)
        check_url = f"{self.url}healthcheck"
        ca_file = ca_path if tls else None
        # A database written before the unit had UMask=0077 (0644) is made 0600 too.
        health = "\n".join(
            [
                host_scripts.private_files(f"{host_scripts.q(db_path)}*"),
                host_scripts.http_ok(virtualenv=flower.virtualenv, url=check_url, ca_file=ca_file),
                host_scripts.http_report(virtualenv=flower.virtualenv, url=check_url, ca_file=ca_file),
            ]
        )
        self.service = host.run(
            f"{name}-service",
            create=host_scripts.service_install(
                manager=manager, name=service, definition=definition, health=health, absent=absent
            ),
            delete=host_scripts.service_remove(
                manager=manager,
                name=service,
                files=[conf_path, env_path, *extra_paths],
                caches=[celery_config_cache(service)],
            ),
            stdin=pulumi.Output.all(
                pulumi.Output.secret(broker_url), pulumi.Output.secret(ui_password), signing_key, tls_key
            ).apply(files),
            repairable=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on), delete_before_replace=True),
        )
        self.service_name = service
        self.register_outputs({"url": self.url, "serviceName": service})
