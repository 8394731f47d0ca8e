"""Read a stack's Pulumi config into validated settings and secret Outputs.

The first step of the data flow. Plain keys are read with `get_object`, secrets only with
`get_secret`; secret values are awaited once, inside the program, to check them before any
resource exists, and stay secret Outputs everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, cast

import pulumi
import yaml
from pulumi.runtime.config import CONFIG, is_config_secret

from .config_errors import ConfigError, file_problems, secret_problems, validate
from .example_passphrase import example_passphrase_problem
from .settings import OPTIONAL_SECRETS, PROJECT, REQUIRED_SECRETS, StackSettings


@dataclass(frozen=True)
class StackSecrets:
    """The stack's secrets, each a secret Output (None where optional and unset)."""

    admin_password: pulumi.Output[str]
    app_password: pulumi.Output[str]
    flower_broker_password: pulumi.Output[str]
    flower_ui_password: pulumi.Output[str]
    ssh_private_key: Optional[pulumi.Output[str]]
    broker_tls_key: Optional[pulumi.Output[str]] = None
    celery_signing_key: Optional[pulumi.Output[str]] = None
    # Celery's result backend URL; None means rpc:// (results over the broker).
    result_backend: Optional[pulumi.Output[str]] = None
    # The Erlang cookie cluster nodes share (broker.clusterNodes).
    erlang_cookie: Optional[pulumi.Output[str]] = None
    # The key of Flower's HTTPS certificate (flower.tls).
    flower_tls_key: Optional[pulumi.Output[str]] = None


PLAIN_KEYS = tuple(f.alias or n for n, f in StackSettings.model_fields.items())
STRING_KEYS = {
    f.alias or n
    for n, f in StackSettings.model_fields.items()
    if f.annotation is str
    or getattr(f.annotation, "__origin__", None) is str
    or str(f.annotation).startswith("typing.Annotated[str")
}


def _unknown_keys() -> list[str]:
    """Project keys in the stack that nothing reads: typos that would be silently ignored."""
    known = set(PLAIN_KEYS) | set(REQUIRED_SECRETS) | set(OPTIONAL_SECRETS)
    prefix = f"{PROJECT}:"
    # Only the key names are looked at here, never values.
    names = [k[len(prefix) :] for k in CONFIG.get() if k.startswith(prefix)]
    return sorted(
        f"{prefix}{name}: unknown key; allowed: {', '.join(sorted(known))}" for name in names if name not in known
    )


def encryption_salt(project_dir: Path, stack: str) -> Optional[str]:
    """The passphrase provider's state in the stack's settings file, if any."""
    try:
        document = yaml.safe_load((project_dir / f"Pulumi.{stack}.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    salt = document.get("encryptionsalt") if isinstance(document, dict) else None
    return salt if isinstance(salt, str) else None


def _absolute_paths(settings: StackSettings, project_dir: Path) -> StackSettings:
    """File names in the config (broker.tls, flower.tls, celerySigning, broker.aptSource) resolved against the project directory."""

    def resolve(name: str) -> str:
        return str((project_dir / name).resolve())

    if settings.broker.tls is not None:
        tls = settings.broker.tls
        tls = tls.model_copy(update={"ca_file": resolve(tls.ca_file), "cert_file": resolve(tls.cert_file)})
        settings = settings.model_copy(update={"broker": settings.broker.model_copy(update={"tls": tls})})
    if settings.celery_signing is not None:
        signing = settings.celery_signing
        previous = signing.previous_cert_file and resolve(signing.previous_cert_file)
        signing = signing.model_copy(update={"cert_file": resolve(signing.cert_file), "previous_cert_file": previous})
        settings = settings.model_copy(update={"celery_signing": signing})
    if settings.flower.tls is not None:
        flower_tls = settings.flower.tls
        flower_tls = flower_tls.model_copy(
            update={
                "cert_file": resolve(flower_tls.cert_file),
                "ca_file": flower_tls.ca_file and resolve(flower_tls.ca_file),
            }
        )
        settings = settings.model_copy(update={"flower": settings.flower.model_copy(update={"tls": flower_tls})})
    if settings.broker.apt_source is not None:
        source = settings.broker.apt_source.model_copy(
            update={"key_file": resolve(settings.broker.apt_source.key_file)}
        )
        settings = settings.model_copy(update={"broker": settings.broker.model_copy(update={"apt_source": source})})
    return settings


async def load_settings(
    config: Optional[pulumi.Config] = None, project_dir: Optional[Path] = None
) -> tuple[StackSettings, StackSecrets]:
    """Validate the whole stack config; raise ConfigError listing every problem.

    `project_dir` (default: Pulumi's root directory) is where relative file names in the
    config are read from."""
    config = config or pulumi.Config(PROJECT)
    raw, problems = {}, []
    for key in PLAIN_KEYS:
        try:
            # Strings are read as strings; objects, lists and booleans as JSON.
            value = config.get(key) if key in STRING_KEYS else config.get_object(key)
        except pulumi.ConfigTypeError:
            problems.append(f"{config.full_key(key)}: not valid JSON for an object, list or boolean")
            continue
        if value is not None:
            raw[key] = value
    settings, model_problems = validate(raw)
    problems += model_problems

    secrets = {key: config.get_secret(key) for key in REQUIRED_SECRETS + OPTIONAL_SECRETS}
    values = {key: (await out.future()) if out is not None else None for key, out in secrets.items()}
    flags = {key: is_config_secret(config.full_key(key)) for key in secrets}
    problems += secret_problems(values, flags) + _unknown_keys()
    if settings is not None:
        project_dir = project_dir or Path(pulumi.get_root_directory() or ".")
        stack = pulumi.get_stack()
        # First: a stack keyed with the published passphrase stops here, before any resource.
        passphrase = example_passphrase_problem(stack, encryption_salt(project_dir, stack), values, settings.hosts)
        problems = ([passphrase] if passphrase else []) + problems
        problems += file_problems(settings, values, project_dir)
        settings = _absolute_paths(settings, project_dir)
    for key in OPTIONAL_SECRETS:
        if not values[key]:
            secrets[key] = None
    del values
    if problems or settings is None:
        raise ConfigError(problems)
    # The required secrets are set: a missing one is a problem raised above.
    required = {key: cast(pulumi.Output[str], secrets[key]) for key in REQUIRED_SECRETS}
    return settings, StackSecrets(
        admin_password=required["adminPassword"],
        app_password=required["appPassword"],
        flower_broker_password=required["flowerBrokerPassword"],
        flower_ui_password=required["flowerUiPassword"],
        ssh_private_key=secrets["sshPrivateKey"],
        broker_tls_key=secrets["brokerTlsKey"],
        celery_signing_key=secrets["celerySigningKey"],
        result_backend=secrets["resultBackend"],
        erlang_cookie=secrets["erlangCookie"],
        flower_tls_key=secrets["flowerTlsKey"],
    )
