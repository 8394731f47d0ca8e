"""`make sandbox`: deploy the program for real on a local sandbox host, then prove it works.

Phases (one line each): toolchain check, host boot, stack config (random secrets set with
`pulumi config set --secret`, value on stdin), `pulumi up` with the engine's own display,
a real task through the deployed worker, and where to look. `SANDBOX_PROMETHEUS=1` (or, on a
deployed sandbox, `make sandbox-prometheus`) adds a Prometheus scraping the sandbox with the
stack's alert rules loaded (sandbox.prometheus). `make sandbox-down` stops it, destroys the
stack and stops the host. The stack is `sandbox` in this project, state in `.pulumi-state/`.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

from edd_infra.render.alert_rules import RULES_PATH
from edd_infra.settings import Flower
from edd_infra.workspace import ROOT, ProjectStack, engine_problem
from sandbox import hosts as sandbox_hosts
from sandbox import prometheus
from sandbox.image import APP_TARGET, VENV, client_key
from sandbox.tls import make_broker_certificates, make_flower_certificate, make_signing_certificate

STACK = "sandbox"
HOST = "edd-sandbox"
DEFAULT_PASSPHRASE = "edd-infra-example"  # the Makefile's too
PASSPHRASE = os.environ.get("PULUMI_CONFIG_PASSPHRASE", DEFAULT_PASSPHRASE)
WORKER = "edd-worker-1"
# SANDBOX_WORKER_HOSTS=N adds N worker-only hosts, each running one more worker over TLS.
WORKER_HOSTS = int(os.environ.get("SANDBOX_WORKER_HOSTS", "0"))
WORKER_HOST_PREFIX = "edd-sbw"  # short: "ve-" + host name must fit an interface name
# SANDBOX_TOPOLOGY=cluster: three RabbitMQ nodes (this host and edd-sbn2, edd-sbn3) and two
# worker hosts (unless SANDBOX_WORKER_HOSTS says otherwise).
TOPOLOGY = os.environ.get("SANDBOX_TOPOLOGY", "single")
NODE_HOST_PREFIX = "edd-sbn"
if TOPOLOGY not in ("single", "cluster"):
    sys.exit(f"SANDBOX_TOPOLOGY: 'single' or 'cluster', got {TOPOLOGY!r}")
if TOPOLOGY == "cluster" and "SANDBOX_WORKER_HOSTS" not in os.environ:
    WORKER_HOSTS = 2
# SANDBOX_PROMETHEUS=1: a Prometheus in the broker host's network namespace, rules loaded.
PROMETHEUS = os.environ.get("SANDBOX_PROMETHEUS", "0") == "1"
# The seed told operators to avoid special characters; the sandbox uses all of them on purpose:
# every printable ASCII character (space included), some non-ASCII, and one long password.
PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))
HOSTILE_TAIL = PRINTABLE_ASCII + "ünïcødé-密码"


def phase(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def tls_dir(stack: ProjectStack) -> str:
    """Where the sandbox CA and certificates live, relative to the stack's project directory."""
    return f".pulumi-state/tls-{stack.name}"


def sandbox_config(
    host: sandbox_hosts.SandboxHost,
    worker_concurrency: int = 2,
    tls: str | None = None,
    signing: bool = False,
    worker_hosts: tuple = (),
    broker_nodes: tuple = (),
    flower_tls: bool = False,
) -> dict:
    """Plain stack config for a single sandbox host running broker, worker and Flower.

    The management API listens on the host's veth address: a private link that only this
    machine reaches, standing in for an admin network. With `tls` (a directory holding ca.pem
    and server.pem), the management API and AMQP on that address use TLS; plain AMQP and
    management stay on loopback for the services on the host. Flower listens there too, over
    HTTPS, with `flower_tls` (flower.pem from the same directory; the program refuses Flower
    off loopback without TLS); without it, on loopback. With
    `signing`, tasks are signed with a certificate from the same directory. Each of
    `worker_hosts` (needs `tls`) runs one more worker, `edd-worker-<n>`, reaching the broker
    over TLS. Each of `broker_nodes` (needs `tls`) runs one more RabbitMQ node, joined to the
    host's node in a cluster (Erlang distribution over TLS, its ports for the nodes only), and
    the `edd` queue is a quorum queue.
    """
    broker = {"host": host.name, "managementAddress": host.address, "purgeOnDestroy": True}
    if tls:
        broker["tls"] = {"caFile": f"{tls}/ca.pem", "certFile": f"{tls}/server.pem"}
        broker["amqpListeners"] = ["127.0.0.1", "::1", host.address]
    extra = {"celerySigning": {"certFile": f"{tls}/signing.pem"}} if signing and tls else {}
    if broker_nodes:
        broker |= {
            "nodeAddress": host.address,
            "nodeName": f"rabbit@{host.address}",
            "interNodeTls": True,
            "clusterNodes": [{"host": n.name, "address": n.address} for n in broker_nodes],
        }
        extra["appQueue"] = {"queueType": "quorum"}
    return extra | {
        "hosts": {
            h.name: {"address": h.address, "user": h.user, "port": h.port, "hostKey": h.host_key}
            for h in (host, *broker_nodes, *worker_hosts)
        },
        "broker": broker,
        # EDD's settings as EDD reads them (server.cfg's rabbitmq keys), beside the worker.
        "eddSettings": {"host": host.name},
        "workers": [
            {
                "name": name,
                "host": h.name,
                "workingDirectory": APP_TARGET,
                "virtualenv": VENV,
                "concurrency": worker_concurrency,
            }
            for name, h in [(WORKER, host)] + [(f"edd-worker-{i}", w) for i, w in enumerate(worker_hosts, 2)]
        ],
        "flower": {
            "host": host.name,
            "workingDirectory": APP_TARGET,
            "virtualenv": VENV,
            **({"address": host.address, "tls": {"certFile": f"{tls}/flower.pem"}} if flower_tls and tls else {}),
        },
    }


def random_secrets() -> dict[str, str]:
    """Fresh random passwords with every printable ASCII character, non-ASCII ones too (but in
    Flower's UI password), and the app's 689 bytes long."""
    values = {
        key: secrets.token_urlsafe(12) + HOSTILE_TAIL
        for key in ("adminPassword", "appPassword", "flowerBrokerPassword", "flowerUiPassword")
    }
    values["appPassword"] += secrets.token_urlsafe(600)[:560]
    # Flower 2.2's basic auth handles ASCII only (the program refuses anything else).
    values["flowerUiPassword"] = secrets.token_urlsafe(12) + PRINTABLE_ASCII
    return values


def configure(stack: ProjectStack, host: sandbox_hosts.SandboxHost, hardened: bool = False, **config) -> None:
    """Write the sandbox config; secrets are created once and kept across reruns. `hardened`:
    TLS (a sandbox CA signs the broker's certificate for the host's address) and message
    signing (a sandbox signing certificate), as recommended for production."""
    directory = tls_dir(stack) if hardened else None
    if directory:
        files = make_broker_certificates(
            stack.work_dir / directory, host.address, *(n.address for n in config.get("broker_nodes", ()))
        )
        files |= make_signing_certificate(stack.work_dir / directory)
        files |= make_flower_certificate(stack.work_dir / directory, host.address)
    stack.set_plain(sandbox_config(host, tls=directory, signing=hardened, flower_tls=hardened, **config))
    have = stack.stack.get_all_config()
    for key, value in random_secrets().items():
        if f"edd-infra:{key}" not in have:
            stack.set_secret(key, value)
    # `have` lists Pulumi.yaml's defaults too: the cookie's is "".
    if config.get("broker_nodes") and not getattr(have.get("edd-infra:erlangCookie"), "value", ""):
        stack.set_secret("erlangCookie", secrets.token_hex(32))
    stack.set_secret("sshPrivateKey", Path(client_key()).read_text())
    if directory:
        stack.set_secret("brokerTlsKey", files["server.key"].read_text())
        stack.set_secret("celerySigningKey", files["signing.key"].read_text())
        stack.set_secret("flowerTlsKey", files["flower.key"].read_text())


def send_task(host: sandbox_hosts.SandboxHost, x: int = 2, y: int = 3) -> str:
    """Run `edd.add(x, y)` through the deployed broker and worker; the URL comes from the
    worker's env file on the host, so it is never on a command line."""
    env = f"/etc/edd-infra/celery-{WORKER}.env"
    code = f"from edd import add; print(add.delay({x}, {y}).get(timeout=60))"
    command = f"set -a; . {env}; set +a; cd {APP_TARGET} && {VENV}/bin/python -c {shlex.quote(code)}"
    result = sandbox_hosts.run(host, command, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"task round trip failed: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def project_stack() -> ProjectStack:
    state = ROOT / ".pulumi-state"
    state.mkdir(exist_ok=True)
    return ProjectStack(STACK, ROOT, f"file://{state}", PASSPHRASE)


def up() -> None:
    started = time.monotonic()
    phase("checking the engine: pulumi CLI and provider plugins")
    problem = engine_problem()
    if problem:
        sys.exit(problem)
    if PROMETHEUS and prometheus.missing():  # before the deploy, not after it
        sys.exit(f"SANDBOX_PROMETHEUS=1: {prometheus.missing()}")
    phase(f"booting sandbox host {HOST} (first run builds the image: a few minutes)")
    nodes = [f"{NODE_HOST_PREFIX}{i}" for i in (2, 3)] if TOPOLOGY == "cluster" else []
    extra = [f"{WORKER_HOST_PREFIX}{i}" for i in range(1, WORKER_HOSTS + 1)]
    host, *others = sandbox_hosts.boot([HOST, *nodes, *extra])
    node_hosts, worker_hosts = others[: len(nodes)], others[len(nodes) :]
    phase(
        f"host {host.name} at {host.address}"
        + "".join(f", broker node {n.name} at {n.address}" for n in node_hosts)
        + "".join(f", worker host {w.name} at {w.address}" for w in worker_hosts)
        + f"; writing stack '{STACK}' config"
    )
    stack = project_stack()
    configure(stack, host, hardened=True, worker_hosts=tuple(worker_hosts), broker_nodes=tuple(node_hosts))
    phase("pulumi up")
    result = stack.stack.up(on_output=print, color="never")
    phase(f"up {result.summary.result} ({result.summary.resource_changes})")
    phase("sending a real task through the deployed worker")
    phase(f"edd.add(2, 3) returned {send_task(host)}")
    outputs = stack.stack.outputs()
    flower = outputs["flowerUrl"].value
    print(f"""
Sandbox deployed in {time.monotonic() - started:.0f} s.
  Flower:      {flower}  (from this machine: the host's private link; CA: {tls_dir(stack)}/ca.pem){flower_login()}
  Management:  {outputs["managementEndpoint"].value}  (TLS; CA: {tls_dir(stack)}/ca.pem)
  EDD settings: /etc/edd-infra/edd-rabbitmq.json on the host; stack output eddSettings (secret)
  Host shell:  {shlex.join(host.ssh_command())}
  Worker unit: systemctl status celery-{WORKER}   (on the host){cluster_line(host, node_hosts)}
  Tear down:   make sandbox-down""")
    if PROMETHEUS:
        start_prometheus(stack, host)


def start_prometheus(stack: ProjectStack, host: sandbox_hosts.SandboxHost) -> None:
    """(Re)start the sandbox's Prometheus on the deployed stack: the `scrapeTargets` output, the
    rules file read back from the broker host, the sandbox CA; print where it is and what it loaded."""
    problem = prometheus.missing()
    if problem:
        sys.exit(f"sandbox Prometheus: {problem}")
    prometheus.stop_recorded()
    phase(f"starting Prometheus in {host.name}'s network namespace (rules read back from {RULES_PATH})")
    rules = sandbox_hosts.run(host, f"cat {RULES_PATH}", check=True).stdout
    targets = stack.stack.outputs()["scrapeTargets"].value
    ca_file = stack.work_dir / tls_dir(stack) / "ca.pem"
    server = prometheus.start(
        host, targets, rules, ca_file=str(ca_file) if ca_file.exists() else None, die_with_caller=False
    )  # it outlives `make sandbox`
    prometheus.record(server)  # from now on `make sandbox-down` stops it, even if this process dies
    try:
        seconds = prometheus.wait_loaded(server, len(targets), rules)
    except BaseException:
        prometheus.stop_recorded()  # not left running half-configured
        raise
    loaded = prometheus.loaded_rules(server)
    print(f"""
Prometheus ({prometheus_version()}, Debian's package on this machine; PID {server.pid}) ready in {seconds:.0f} s: {len(targets)} targets up.
  UI and API:  {server.url}  (e.g. {server.url}/api/v1/alerts; listens on the host's sandbox address only)
  Scrape and rule evaluation every {prometheus.INTERVAL}; config, rules, data: {server.work_dir}
  Stop:        make sandbox-down (stops it, then the sandbox)
  Rules loaded from {RULES_PATH} (group edd-infra), with their `for:`:""")
    for name, rule in loaded.items():
        print(
            f"    {name:<34} {rule['labels'].get('severity', ''):<9} for {rule['duration']:.0f} s  ({rule['health']})"
        )


def prometheus_version() -> str:
    out = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout
    return " ".join(out.split()[:3]) or "prometheus"


def deployed_host() -> sandbox_hosts.SandboxHost:
    """The running sandbox broker host (for commands on an already deployed sandbox)."""
    for row in sandbox_hosts.status():
        if row["name"] == HOST and row["alive"]:
            return sandbox_hosts.SandboxHost(**{f: row[f] for f in sandbox_hosts.SandboxHost.__dataclass_fields__})
    sys.exit(f"no running sandbox host {HOST}: make sandbox first")


def flower_login() -> str:
    """How to log in to Flower's dashboard: its basic auth user and where the password is (the
    command prints the secret, so it is not printed here; it needs the stack's passphrase)."""
    passphrase = f"PULUMI_CONFIG_PASSPHRASE={shlex.quote(PASSPHRASE)} " if PASSPHRASE == DEFAULT_PASSPHRASE else ""
    return (
        f"\n               log in as {Flower.model_fields['ui_user'].default}, password from: "
        f"{passphrase}scripts/pulumi config get flowerUiPassword -s {STACK}"
    )


def cluster_line(host: sandbox_hosts.SandboxHost, nodes: list) -> str:
    if not nodes:
        return ""
    names = ", ".join(f"rabbit@{h.address} ({h.name})" for h in (host, *nodes))
    return f"\n  Cluster:     {names}; rabbitmqctl cluster_status on any of them"


def down() -> None:
    stack = project_stack()
    phase(f"pulumi destroy (stack '{STACK}')")
    try:
        prometheus.stop_recorded()
        # The queue and exchange are protected from accidental deletion: this one is deliberate.
        stack.cli_run("state", "unprotect", "--all", "--yes", check=False)
        stack.stack.destroy(on_output=print, color="never")
        stack.stack.workspace.remove_stack(STACK)
    finally:
        names = [
            h["name"]
            for h in sandbox_hosts.status()
            if h["name"] == HOST or h["name"].startswith((WORKER_HOST_PREFIX, NODE_HOST_PREFIX))
        ]
        phase(f"stopping host(s) {', '.join(names) or HOST}")
        sandbox_hosts.shutdown(names or [HOST])
    phase("sandbox removed")


if __name__ == "__main__":
    {"up": up, "down": down, "prometheus": lambda: start_prometheus(project_stack(), deployed_host())}[
        sys.argv[1] if len(sys.argv) > 1 else "up"
    ]()
