"""What the guardrails read, as plain functions over resource inputs.

Policies see secret values unwrapped (a secret stdin arrives as a plain string), so nothing
here decides by looking at a value whether it is secret, and no message quotes a value that
could be one: messages name resources, options, file paths, users and addresses taken from
command text, never stdin, passwords or keys.
"""

from __future__ import annotations

import ast
import base64
import binascii
import ipaddress
import re
import shlex
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

from pulumi_policy.proxy import UnknownValueError

COMMAND_TYPES = ("command:local:Command", "command:remote:Command")
REMOTE_COMMAND = "command:remote:Command"
USER_TYPE = "rabbitmq:index/user:User"
QUEUE_TYPE = "rabbitmq:index/queue:Queue"
EXCHANGE_TYPE = "rabbitmq:index/exchange:Exchange"
RABBITMQ_PROVIDER = "pulumi:providers:rabbitmq"
SCRIPTS = ("create", "update", "delete")
UNKNOWN = object()


def get(props: Mapping[str, Any], key: str) -> Any:
    """props[key]; None when absent, UNKNOWN when the engine cannot know it during preview."""
    try:
        return props[key]
    except KeyError:
        return None
    except UnknownValueError:
        return UNKNOWN


def stack_of(urn: str) -> str:
    """`urn:pulumi:STACK::PROJECT::TYPE::NAME` -> STACK."""
    return urn.split("::", 1)[0].rsplit(":", 1)[-1]


def scripts(props: Mapping[str, Any]) -> dict[str, str]:
    """A command's create/update/delete text (unknown text raises, so the engine reports the
    policy as not run rather than passed)."""
    return {key: props[key] for key in SCRIPTS if get(props, key)}


def has_stdin(props: Mapping[str, Any]) -> bool:
    value = get(props, "stdin")
    return value is UNKNOWN or bool(value)


# ---- addresses ------------------------------------------------------------------------


def address_kind(address: str) -> str:
    """loopback, private (a non-global network such as an admin network), public, or all
    (the unspecified address: every interface)."""
    text = address.strip().strip("[]")
    if text in ("", "*"):
        return "all"
    if text == "localhost":
        return "loopback"
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "public"  # a host name: where it resolves is unknown here, so assume the worst
    if ip.is_unspecified:
        return "all"
    if ip.is_loopback:
        return "loopback"
    return "public" if ip.is_global else "private"


def plain_http_host(url: str) -> Optional[str]:
    """The host of an http:// (not https://) URL, or None for any other URL."""
    split = urlsplit(url.strip())
    if split.scheme.lower() != "http":
        return None
    return split.hostname or ""


def split_listener(value: str) -> tuple[str, str]:
    """rabbitmq.conf listener value -> (address, port); a bare port listens everywhere."""
    value = value.strip()
    if value.isdigit():
        return "", value
    if value.startswith("["):
        address, _, port = value[1:].partition("]:")
        return address, port
    address, _, port = value.rpartition(":")
    return address, port


# ---- rabbitmq.conf in command text ------------------------------------------------------

CONF_LINE = re.compile(r"^[ \t]*((?:listeners|management)\.(?:tcp|ssl)(?:\.[\w-]+)?)[ \t]*=[ \t]*(\S+)[ \t]*$", re.M)


def broker_listeners(text: str) -> Optional[dict[str, list[str]]]:
    """The listeners a rabbitmq.conf written by this command text sets up, or None when the
    text writes no rabbitmq.conf. Keys: amqp, amqps, management, management-tls (addresses;
    "" for every interface)."""
    found = CONF_LINE.findall(text)
    if not found and "rabbitmq.conf" not in text:
        return None
    result: dict[str, list[str]] = {"amqp": [], "amqps": [], "management": [], "management-tls": []}
    amqp_none = False
    management_port = False
    for key, value in found:
        if key == "listeners.tcp" and value == "none":
            amqp_none = True
        elif key.startswith("listeners.tcp."):
            result["amqp"].append(split_listener(value)[0])
        elif key.startswith("listeners.ssl."):
            result["amqps"].append(split_listener(value)[0])
        elif key == "management.tcp.ip":
            result["management"].append(value)
        elif key == "management.tcp.port":
            management_port = True
        elif key == "management.ssl.ip":
            result["management-tls"].append(value)
    if not result["amqp"] and not amqp_none:
        result["amqp"].append("")  # RabbitMQ's default: 5672 on every interface
    if not result["management"] and (management_port or "rabbitmq_management" in text):
        result["management"].append("")  # the plugin's default: 15672 on every interface
    return result


# ---- argv in unit files and plists ------------------------------------------------------

EXEC_START = re.compile(r"^ExecStart=[-@:+!]*(.+)$", re.M)
PLIST_ARGS = re.compile(r"<key>ProgramArguments</key>\s*<array>(.*?)</array>", re.S)
PLIST_STRING = re.compile(r"<string>(.*?)</string>", re.S)


def service_argvs(text: str) -> list[list[str]]:
    """argv of every systemd ExecStart= line and launchd ProgramArguments in the text."""
    argvs = []
    for line in EXEC_START.findall(text):
        try:
            argvs.append(shlex.split(line))
        except ValueError:
            argvs.append(line.split())
    for block in PLIST_ARGS.findall(text):
        argvs.append([_xml_text(s) for s in PLIST_STRING.findall(block)])
    # `sh -c "...; exec celery ... flower ..."`: the commands inside count too.
    for argv in list(argvs):
        if argv and argv[0].rsplit("/", 1)[-1] in ("sh", "bash", "dash", "zsh") and "-c" in argv[:-1]:
            script = argv[argv.index("-c") + 1]
            for part in re.split(r"\n|;|&&|\|\|", script):
                words = _shell_words(part)
                while words and (words[0] in ("exec", "env", "nohup") or "=" in words[0]):
                    words = words[1:]
                if words:
                    argvs.append(words)
    return argvs


def _shell_words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _xml_text(s: str) -> str:
    return (
        s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'").replace("&amp;", "&")
    )


def flower_argv(argv: list[str]) -> bool:
    return "flower" in argv or (bool(argv) and argv[0].rsplit("/", 1)[-1] == "flower")


def option(argv: list[str], *names: str) -> Optional[str]:
    """The value of --name=VALUE or --name VALUE (last one wins); "" for a bare flag."""
    found = None
    for i, word in enumerate(argv):
        for name in names:
            if word == name:
                found = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            elif word.startswith(name + "="):
                found = word[len(name) + 1 :]
    return found


def bundle_file(stdin: str, path: str) -> Optional[str]:
    """The text of `path` in a secret bundle on stdin (`MODE OWNER GROUP PATH keep|restore BASE64`
    lines, edd_infra.render.host_scripts.secret_bundle); None when it is not there."""
    for line in stdin.splitlines():
        parts = line.split(" ")
        if len(parts) == 6 and parts[3] == path:
            try:
                return base64.b64decode(parts[5], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
    return None


def flower_settings(config: str) -> Optional[dict[str, Any]]:
    """address/basic_auth/auth from a flowerconfig.py, by parsing (never running) it."""
    try:
        tree = ast.parse(config)
    except SyntaxError:
        return None
    settings: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("address", "basic_auth", "auth", "auth_provider"):
                try:
                    settings[name] = ast.literal_eval(node.value)
                except ValueError:
                    settings[name] = True  # an expression: set, value not literal
    return settings


# ---- what a delete undoes ---------------------------------------------------------------

REMOVERS = {
    "rm": "file",
    "rmdir": "directory",
    "userdel": "system user",
    "groupdel": "group",
    "delete_user": "broker user",
    "delete_vhost": "vhost",
    "disable": "service",
    "stop": "service",
    "purge": "package",
    "remove": "package",
    "unload": "service",
}


def shell_tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";|&(){}<>")
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return line.split()


def removed_objects(delete: str) -> list[tuple[str, str]]:
    """(kind, name) of what a delete script removes: files, users, groups, units, packages."""
    removed = []
    for line in delete.splitlines():
        words = shell_tokens(line)
        for i, word in enumerate(words):
            verb = word.rsplit("/", 1)[-1]
            if verb == "bootout":
                if i + 1 < len(words) and words[i + 1].startswith("system/"):
                    removed.append(("service", words[i + 1][len("system/") :]))
                continue
            if verb not in REMOVERS:
                continue
            for arg in words[i + 1 :]:
                if arg in ";|&(){}<>" or arg in ("||", "&&", ">", ">>", "2>"):
                    break
                if arg.startswith("-") or "$" in arg or len(arg) < 3 or arg.isdigit():
                    continue
                removed.append((REMOVERS[verb], arg))
    return removed


def undone_by_delete(create: str, delete: str) -> list[str]:
    """What the delete removes that the create also makes or names (so running the old
    delete after a new create, Pulumi's default replacement order, undoes the create)."""
    hits = []
    for kind, name in removed_objects(delete):
        if re.search(r"(?<![\w./-])['\"]?" + re.escape(name) + r"['\"]?(?![\w./-])", create):
            label = f"{kind} {name}"
            if label not in hits:
                hits.append(label)
    return hits


# ---- credentials in command text --------------------------------------------------------

URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/@:'\"]+:[^\s/@'\"]+@", re.I)
PASSWORD_ARGV = re.compile(r"\b(add_user|change_password|authenticate_user)\b")
AUTH_FLAGS = ("--basic-auth", "--basic_auth", "--password", "--broker-api", "--broker_api")


def credentials_in_text(text: str) -> list[str]:
    """Descriptions (no values) of credentials that this command text carries."""
    found = []
    if URL_PASSWORD.search(text):
        found.append("a URL with user:password@")
    for line in text.splitlines():
        words = shell_tokens(line)
        for i, word in enumerate(words):
            if PASSWORD_ARGV.fullmatch(word):
                args = []
                for arg in words[i + 1 :]:
                    if arg in ";|&(){}<>" or arg in ("||", "&&") or arg.startswith((">", "2>")):
                        break
                    if not arg.startswith("-"):
                        args.append(arg)
                if len(args) >= 2:
                    found.append(f"rabbitmqctl {word} with the password on its command line")
            for flag in AUTH_FLAGS:
                if word == flag or word.startswith(flag + "="):
                    found.append(f"{flag} on a command line")
    return sorted(set(found))
