"""edd-infra's guardrails: the seed's security rules, checked by `pulumi preview --policy-pack policy`.

Every policy reads resource inputs (command text, user names and tags) and resource options
(additional_secret_outputs, delete_before_replace, protect). Secret values reach policies
unwrapped, so no policy decides by a value whether it is secret and no message quotes one.
The Flower check is the one that opens stdin: Flower's auth lives only in its config file,
which travels there; it reads two settings by parsing and reports neither.
"""

from __future__ import annotations

import os
import sys

from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rules
from rules import COMMAND_TYPES, EXCHANGE_TYPE, QUEUE_TYPE, RABBITMQ_PROVIDER, REMOTE_COMMAND, USER_TYPE, get

# Prod stacks (SSH host keys pinned, the management API only over TLS off loopback): prod, and
# prod-<anything>. edd_infra.settings.is_prod_stack says the same for the program.
PROD_STACKS = ("prod",)


def _is_prod(urn: str) -> bool:
    stack = rules.stack_of(urn)
    return any(stack == s or stack.startswith(s + "-") for s in PROD_STACKS)


def no_guest_user(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == USER_TYPE:
        if get(args.props, "name") == "guest":
            report(
                f"{args.name}: creates the broker user 'guest'. RabbitMQ's default account must stay "
                "deleted (the seed: rabbitmqctl delete_user guest); give the user another name."
            )
    elif args.resource_type in COMMAND_TYPES:
        for key, text in rules.scripts(args.props).items():
            for line in text.splitlines():
                words = rules.shell_tokens(line)
                for i, word in enumerate(words[:-1]):
                    if word in ("add_user", "change_password") and words[i + 1] == "guest":
                        report(
                            f"{args.name}: its {key} script runs rabbitmqctl {word} guest. RabbitMQ's default "
                            "account must stay deleted; use another user name."
                        )
                        return


def administrator_only_broker_admin(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != USER_TYPE:
        return
    tags = get(args.props, "tags") or []
    if tags is rules.UNKNOWN or "administrator" not in list(tags):
        return
    name = get(args.props, "name")
    admin = get(args.provider.props, "username") if args.provider is not None else None
    if admin in (None, rules.UNKNOWN):
        report(
            f"{args.name}: broker user {name!r} gets the administrator tag, and its provider names no "
            "admin username to compare with. Only the broker admin Pulumi logs in as may be administrator."
        )
    elif name != admin:
        report(
            f"{args.name}: broker user {name!r} gets the administrator tag; only the broker admin Pulumi "
            f"logs in as ({admin!r}) may. Use the monitoring or management tag (Flower: "
            "flowerBrokerUser.profile: monitoring)."
        )


def _listeners(args: ResourceValidationArgs):
    if args.resource_type not in COMMAND_TYPES:
        return None
    text = rules.scripts(args.props).get("create", "")
    return rules.broker_listeners(text)


def broker_listeners_loopback_or_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    listeners = _listeners(args)
    if listeners is None:
        return
    for address in listeners["amqp"]:
        if rules.address_kind(address) != "loopback":
            where = address or "every interface (no listeners.tcp line)"
            report(
                f"{args.name}: rabbitmq.conf puts plain AMQP (listeners.tcp) on {where}. Plain AMQP may only "
                "listen on loopback (broker.amqpListeners: 127.0.0.1, ::1); use TLS (listeners.ssl) elsewhere."
            )
    for address in listeners["management"]:
        kind = rules.address_kind(address)
        if kind in ("public", "all"):
            where = address or "every interface (no management.tcp.ip line)"
            report(
                f"{args.name}: rabbitmq.conf puts the plain-HTTP management API (management.tcp.ip) on {where}, "
                "a public address. Bind it to loopback or a private admin network "
                "(broker.managementAddress), or serve it over TLS (management.ssl)."
            )


def _plain_management_off_loopback(args: ResourceValidationArgs) -> list[str]:
    """Where the management API (Pulumi's admin password on every call) is plain HTTP off
    loopback: a private address in rabbitmq.conf's management.tcp.ip (public ones and every
    interface are broker-listeners-loopback-or-tls's), or an http:// endpoint of the rabbitmq
    provider (what Pulumi dials, an external broker's too) that is not loopback."""
    if args.resource_type == RABBITMQ_PROVIDER:
        endpoint = get(args.props, "endpoint")
        host = rules.plain_http_host(endpoint) if isinstance(endpoint, str) else None
        if host is not None and rules.address_kind(host) != "loopback":
            return [
                f"the rabbitmq provider dials {endpoint} (plain HTTP to {host or 'no host'}), so every call "
                "sends Pulumi's admin password in cleartext across the network"
            ]
        return []
    listeners = _listeners(args)
    if listeners is None:
        return []
    return [
        f"rabbitmq.conf serves the management API (Pulumi's admin password on every call) as plain HTTP on "
        f"{address}, a private network address, not loopback and not TLS"
        for address in listeners["management"]
        if rules.address_kind(address) == "private"
    ]


TLS_FIX = (
    "Turn on broker.tls: the API is then HTTPS on broker.managementAddress (checked against the stack's "
    "CA) and plain HTTP only on loopback."
)


def management_listener_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not _is_prod(args.urn):
        return
    for problem in _plain_management_off_loopback(args):
        report(
            f"{args.name}: {problem}. Stack {rules.stack_of(args.urn)!r} is a prod stack, where the management "
            f"API leaves loopback only over TLS. {TLS_FIX}"
        )


def management_listener_tls_outside_prod(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if _is_prod(args.urn):
        return
    for problem in _plain_management_off_loopback(args):
        report(
            f"{args.name}: {problem}. Keep that network reachable only from Pulumi's machine, or serve the "
            f"API over TLS (mandatory in prod stacks). {TLS_FIX}"
        )


def flower_not_public_without_auth(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in COMMAND_TYPES:
        return
    text = rules.scripts(args.props).get("create", "")
    for argv in rules.service_argvs(text):
        if not rules.flower_argv(argv):
            continue
        address = rules.option(argv, "--address")
        auth = any(
            rules.option(argv, f) is not None for f in ("--basic-auth", "--basic_auth", "--auth", "--auth_provider")
        )
        source = "--address"
        conf_path = rules.option(argv, "--conf")
        if conf_path and (address is None or not auth):
            stdin = get(args.props, "stdin")
            if stdin is rules.UNKNOWN:
                stdin = args.props["stdin"]  # raises: reported as not run during preview
            config = rules.bundle_file(stdin or "", conf_path)
            settings = rules.flower_settings(config) if config is not None else None
            if settings is not None:
                if address is None and "address" in settings:
                    address, source = str(settings["address"]), f"address in {conf_path}"
                auth = auth or any(bool(settings.get(k)) for k in ("basic_auth", "auth", "auth_provider"))
        if address is None:
            address, source = "", "no address setting"
        kind = rules.address_kind(address)
        if kind != "loopback" and not auth:
            where = "every interface" if kind == "all" else f"a {kind} address"
            report(
                f"{args.name}: Flower listens on {where} ({source}) with no basic_auth or auth. Flower must "
                "not be reachable off loopback without a login: set flower.uiUser/flowerUiPassword "
                "(basic_auth in its config file) or bind it to 127.0.0.1."
            )


def stdin_commands_log_nothing(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in COMMAND_TYPES or not rules.has_stdin(args.props):
        return
    problems = []
    logging = get(args.props, "logging")
    if logging != "none":
        shown = {None: "not set (stdout and stderr are logged)", rules.UNKNOWN: "not known"}.get(logging, logging)
        problems.append(f'logging is {shown}, not "none"')
    missing = [o for o in ("stdout", "stderr") if o not in list(args.opts.additional_secret_outputs or [])]
    if missing:
        problems.append(f"additional_secret_outputs lacks {' and '.join(missing)}")
    if problems:
        report(
            f"{args.name}: this command receives stdin (where secrets travel) but {'; '.join(problems)}. "
            "A command that reads a secret must log nothing and keep stdout/stderr secret "
            '(logging="none", additional_secret_outputs=["stdout", "stderr"]), or a failure prints it.'
        )


def no_credentials_in_command_text(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in COMMAND_TYPES:
        return
    for key, text in rules.scripts(args.props).items():
        found = rules.credentials_in_text(text)
        if found:
            report(
                f"{args.name}: its {key} script carries credentials on the command text ({', '.join(found)}). "
                "Command text lands in argv, state and error messages: pass secrets on stdin."
            )


def _undone(args: ResourceValidationArgs) -> list[str]:
    if args.resource_type not in COMMAND_TYPES:
        return []
    texts = rules.scripts(args.props)
    if "delete" not in texts or "create" not in texts or args.opts.delete_before_replace:
        return []
    return rules.undone_by_delete(texts["create"], texts["delete"])


def _has_triggers(args: ResourceValidationArgs) -> bool:
    triggers = get(args.props, "triggers")
    return triggers is rules.UNKNOWN or bool(triggers)


def delete_before_replace(args: ResourceValidationArgs, report: ReportViolation) -> None:
    undone = _undone(args)
    if undone and _has_triggers(args):
        report(
            f"{args.name}: its delete removes what its create makes ({', '.join(undone[:4])}) and a change of "
            "its triggers replaces it, by default create-then-delete: the old delete would undo the new create. "
            "Set delete_before_replace=True."
        )


def delete_before_replace_manual(args: ResourceValidationArgs, report: ReportViolation) -> None:
    undone = _undone(args)
    if undone and not _has_triggers(args):
        report(
            f"{args.name}: its delete removes what its create makes ({', '.join(undone[:4])}) and "
            "delete_before_replace is not set. It has no triggers, so only `pulumi up --replace` (or a provider "
            "that asks for replacement) replaces it, but then the old delete would undo the new create. "
            "Set delete_before_replace=True."
        )


def prod_host_key_checking(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != REMOTE_COMMAND or not _is_prod(args.urn):
        return
    connection = get(args.props, "connection")
    if connection is rules.UNKNOWN:
        connection = args.props["connection"]  # raises: reported as not run during preview
    host_key = get(connection or {}, "hostKey")
    if host_key is rules.UNKNOWN:
        return  # set, from another resource's output
    if not host_key:
        host = get(connection or {}, "host")
        report(
            f"{args.name}: SSH to {host if isinstance(host, str) else 'its host'} without a pinned host key "
            f"in stack {rules.stack_of(args.urn)!r}: the host's identity is not checked at all. Set "
            "hosts.<name>.hostKey (ssh-keyscan the host over a trusted path)."
        )


def queues_and_exchanges_protected(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in (QUEUE_TYPE, EXCHANGE_TYPE):
        return
    if not args.opts.protect:
        kind = "queue" if args.resource_type == QUEUE_TYPE else "exchange"
        name = get(args.props, "name")
        loss = "its messages" if kind == "queue" else "its bindings, and publishes to it fail"
        report(
            f"{args.name}: {kind} {name if isinstance(name, str) else ''} is not protected. Every change to a "
            f"rabbitmq {kind} replaces it (delete, then create), and deleting it loses {loss}: set protect=True."
        )


MANDATORY, ADVISORY = EnforcementLevel.MANDATORY, EnforcementLevel.ADVISORY
POLICIES = [
    ("no-guest-user", "No broker user named guest is created.", no_guest_user, MANDATORY),
    (
        "administrator-only-broker-admin",
        "No broker user but the admin Pulumi logs in as has the administrator tag.",
        administrator_only_broker_admin,
        MANDATORY,
    ),
    (
        "broker-listeners-loopback-or-tls",
        "Plain AMQP only on loopback; the plain management API never on a public address or every interface.",
        broker_listeners_loopback_or_tls,
        MANDATORY,
    ),
    (
        "management-listener-tls",
        "In prod stacks the management API is never plain HTTP off loopback (rabbitmq.conf "
        "or the provider's endpoint): TLS.",
        management_listener_tls,
        MANDATORY,
    ),
    (
        "management-listener-tls-outside-prod",
        "Outside prod, a plain-HTTP management API off loopback (a private "
        "admin network) is flagged until it is served over TLS.",
        management_listener_tls_outside_prod,
        ADVISORY,
    ),
    (
        "flower-not-public-without-auth",
        "Flower is never reachable off loopback without basic_auth or auth.",
        flower_not_public_without_auth,
        MANDATORY,
    ),
    (
        "stdin-commands-log-nothing",
        "A command that receives stdin logs nothing and marks stdout/stderr secret.",
        stdin_commands_log_nothing,
        MANDATORY,
    ),
    (
        "no-credentials-in-command-text",
        "Command text carries no passwords (URL userinfo, rabbitmqctl password "
        "arguments, auth flags): secrets go on stdin.",
        no_credentials_in_command_text,
        MANDATORY,
    ),
    (
        "command-delete-before-replace",
        "A command whose delete undoes its create and that triggers can replace uses delete_before_replace.",
        delete_before_replace,
        MANDATORY,
    ),
    (
        "command-delete-before-replace-manual",
        "A command whose delete undoes its create, without triggers, is flagged until it uses delete_before_replace.",
        delete_before_replace_manual,
        ADVISORY,
    ),
    (
        "prod-host-key-checking",
        "Remote commands in prod stacks pin the SSH host key.",
        prod_host_key_checking,
        MANDATORY,
    ),
    (
        "queues-and-exchanges-protected",
        "Declared queues and exchanges are protected.",
        queues_and_exchanges_protected,
        MANDATORY,
    ),
]

PolicyPack(
    name="edd-infra-guardrails",
    policies=[
        ResourceValidationPolicy(name=n, description=d, validate=v, enforcement_level=level)
        for n, d, v, level in POLICIES
    ],
)
