"""A RabbitMQ cluster: three broker nodes (the broker host's and two more) and two worker
hosts, deployed by one `up`; countdown, ETA and retry() through the quorum queue with least
privilege; a node stopped, a change that restarts every node, and a node cut off from the
others, each while tasks flow, lose none; a node removed from and added to the config
leaves and joins; a packageVersion change upgrades the nodes one at a time (last: the test
repository is served only while it runs).

Tests run in file order against one stack; the module's fixture destroys it.
"""

from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from sandbox import hosts as sandbox_hosts
from sandbox.deploy import send_task
from sandbox.image import ensure_image
from tests.hosts import apt_repo
from tests.hosts.deployment import Producer, deployment, print_figures

pytestmark = pytest.mark.hosts
SEED, NODES, WORKER_HOSTS = "edd-cn1", ("edd-cn2", "edd-cn3"), ("edd-cw1", "edd-cw2")
# worker name -> index of its host in (seed, *worker hosts), as sandbox.deploy names them
WORKERS = {"edd-worker-1": 0, "edd-worker-2": 1, "edd-worker-3": 2}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster(plugins_ready, sandbox_hosts, tmp_path_factory, request):
    seed, *others = sandbox_hosts(SEED, *NODES, *WORKER_HOSTS)
    nodes, workers = others[:2], others[2:]
    try:
        with deployment(
            seed,
            tmp_path_factory.mktemp("cluster"),
            prefix="cl",
            hardened=True,
            broker_nodes=tuple(nodes),
            worker_hosts=tuple(workers),
        ) as d:
            d.nodes, d.worker_hosts = nodes, workers
            FIGURES["fresh up, 3 nodes + 2 worker hosts"] = d.fresh_up_seconds
            yield d
    finally:
        print_figures(request, "cluster", FIGURES)


def sh(host, command: str, timeout: float = 180) -> str:
    result = sandbox_hosts.run(host, command, timeout=timeout)
    assert result.returncode == 0, f"{host.name}: {command}: {result.stderr[-800:]}"
    return result.stdout


def running_nodes(host) -> list[str]:
    status = json.loads(sh(host, "rabbitmqctl -q cluster_status --formatter json"))
    return sorted(status["running_nodes"])


def queue_members(host) -> tuple[str, list[str]]:
    """The edd queue's type and its quorum members, as any running node reports them."""
    out = sh(host, "rabbitmqctl -q list_queues -p /edd name type members --formatter json")
    queue = next(q for q in json.loads(out) if q["name"] == "edd")
    return queue["type"], sorted(queue.get("members") or [])


def node_names(*hosts) -> list[str]:
    return sorted(f"rabbit@{h.address}" for h in hosts)


def succeeded_counts(d, prefix: str) -> dict[str, int]:
    """How many times each id with `prefix` succeeded, over the three workers' journals."""
    counts: dict[str, int] = {}
    for worker, index in WORKERS.items():
        host = (d.host, *d.worker_hosts)[index]
        journal = sh(host, f"journalctl -u celery-{worker} -o cat --no-pager | grep -F '[{prefix}-' || true", 300)
        for task_id in re.findall(rf"edd\.add\[({re.escape(prefix)}-\d+)\] succeeded", journal):
            counts[task_id] = counts.get(task_id, 0) + 1
    return counts


def wait_succeeded(d, ids: set[str], prefix: str, timeout: float = 600) -> dict[str, int]:
    """Wait until every id succeeded on some worker; how many times each succeeded."""
    deadline = time.monotonic() + timeout
    while not ids <= set(counts := succeeded_counts(d, prefix)):
        assert time.monotonic() < deadline, f"{len(ids - set(counts))} of {len(ids)} tasks never completed"
        time.sleep(3)
    return counts


def completed(d, prefix: str) -> set[str]:
    """Ids with `prefix` that any of the three workers logged as succeeded."""
    return set(succeeded_counts(d, prefix))


def test_three_nodes_form_one_cluster_with_a_quorum_queue(cluster):
    d = cluster
    everyone = node_names(d.host, *d.nodes)
    for host in (d.host, *d.nodes):
        assert running_nodes(host) == everyone
    assert queue_members(d.host) == ("quorum", everyone)
    # Each node listens for AMQP over TLS on its own address; plain AMQP stays on loopback.
    for host in d.nodes:
        listening = sh(host, "ss -Hltn").split()
        assert f"{host.address}:5671" in listening and f"{host.address}:5672" not in listening


def test_tasks_round_trip_through_the_workers_on_every_host(cluster):
    d = cluster
    assert [send_task(d.host, i, 1) for i in range(12)] == [str(i + 1) for i in range(12)]
    env = sh(d.worker_hosts[0], "cat /etc/edd-infra/celery-edd-worker-2.env")
    url = next(line for line in env.splitlines() if line.startswith("CELERY_BROKER_URL="))
    assert [part.split("@")[1].split("/")[0] for part in url.split(";")] == [
        f"{h.address}:5671" for h in (d.host, *d.nodes)
    ]


# countdown, ETA and retry() from the app's own producer (the worker's environment file: the
# least-privilege app user); prints {kind: [result, seconds from publish to result]}.
DELAYED = """import datetime, json, time
from edd import add, retry_once
started = time.monotonic()
later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=DELAY)
sent = {"countdown": add.apply_async((1, 2), countdown=DELAY), "eta": add.apply_async((2, 3), eta=later),
        "retry": retry_once.apply_async((7, DELAY))}
print(json.dumps({kind: [r.get(timeout=120), time.monotonic() - started] for kind, r in sent.items()}))
"""
DELAY = 5


def broker_logs_since(host, sizes: dict[str, int] | None = None) -> dict[str, str]:
    """Each RabbitMQ log file on the host: its size (sizes None) or what was written after `sizes`."""
    files = sh(host, "ls /var/log/rabbitmq/*.log").split()
    if sizes is None:
        return {f: sh(host, f"stat -c %s {f}").strip() for f in files}
    return {f: sh(host, f"tail -c +{int(sizes.get(f, 0)) + 1} {f}") for f in files}


def test_countdown_eta_and_retry_run_on_time_through_the_quorum_queue_with_least_privilege(cluster):
    """On a quorum queue Celery delays tasks through native delayed delivery: 28 levels of
    exchanges and quorum queues the worker declares with the app user's least-privilege account.
    Each delayed task runs once its delay is over, and no node logs a refusal."""
    d = cluster
    nodes = (d.host, *d.nodes)
    before = {h.name: broker_logs_since(h) for h in nodes}
    env = "/etc/edd-infra/celery-edd-worker-1.env"
    code = DELAYED.replace("DELAY", str(DELAY))
    out = sh(
        d.host,
        f"set -a; . {env}; set +a; cd /opt/edd-sandbox/app && /opt/edd-sandbox/venv/bin/python -c {shlex.quote(code)}",
        timeout=200,
    )
    results = json.loads(out.splitlines()[-1])
    assert {kind: value for kind, (value, _) in results.items()} == {"countdown": 3, "eta": 5, "retry": 7}
    for kind, (_, seconds) in results.items():
        FIGURES[f"{kind} of {DELAY} s: result after"] = seconds
        assert DELAY <= seconds < DELAY + 15, (kind, seconds)
    levels = json.loads(sh(d.host, "rabbitmqctl -q list_queues -p /edd name type --formatter json"))
    delayed = {q["name"]: q["type"] for q in levels if q["name"].startswith("celery_delayed_")}
    assert delayed == {f"celery_delayed_{i}": "quorum" for i in range(28)}
    for host in nodes:
        refusals = [
            line
            for log in broker_logs_since(host, before[host.name]).values()
            for line in log.splitlines()
            if "refused" in line.lower()
        ]
        assert refusals == [], (host.name, refusals[:5])
    for worker, index in WORKERS.items():
        journal = sh((d.host, *d.worker_hosts)[index], f"journalctl -u celery-{worker} -o cat --no-pager")
        trouble = [
            line
            for line in journal.lower().splitlines()
            if "delayed delivery" in line and ("fail" in line or "retrying" in line)
        ]
        assert trouble == [], (worker, trouble[:5])


def test_the_erlang_cookie_is_only_in_its_two_root_or_rabbitmq_files(cluster):
    """On every node: the installed cookie (0400 rabbitmq) and its staged copy (0400 root),
    nowhere else on disk; never in the engine's output or the exported state."""
    d = cluster
    cookie = d.secrets["erlangCookie"]
    nodes = (d.host, *d.nodes)
    for host in (*nodes, *d.worker_hosts):
        found = sandbox_hosts.run(
            host,
            "grep -rlF -f - /etc /var/lib /var/log /tmp /root /opt 2>/dev/null || true",
            input=cookie + "\n",
            timeout=300,
        ).stdout.split()
        expected = ["/var/lib/edd-infra/erlang.cookie", "/var/lib/rabbitmq/.erlang.cookie"] if host in nodes else []
        assert sorted(found) == expected, (host.name, found)
    for host in nodes:
        modes = sh(host, "stat -c '%a %U %G' /var/lib/rabbitmq/.erlang.cookie /var/lib/edd-infra/erlang.cookie")
        assert modes.split("\n")[:2] == ["400 rabbitmq rabbitmq", "400 root root"]
    assert cookie not in "\n".join(d.output) and cookie not in d.stack.export()


# Takes one message from `edd` and drops the channel without an ack until the queue gives none
# back; prints how often it was delivered. The app's own connection (TLS, failover, the app
# user's least-privilege account) from the worker's environment file.
POISON = """import amqp
from edd import app
with app.connection_for_write() as conn:
    conn.ensure_connection()
    conn.default_channel.basic_publish(amqp.Message("poison", delivery_mode=2), exchange="edd", routing_key="edd")
    deliveries = 0
    for _ in range(40):
        channel = conn.connection.channel()
        message = channel.basic_get("edd", no_ack=False)
        if message is None:
            channel.close()
            break
        deliveries += 1
        channel.close()  # unacked: the queue counts a failed delivery
    print(deliveries)
"""


def test_a_poison_task_is_dead_lettered_after_the_delivery_limit_not_dropped(cluster):
    """RabbitMQ 4 drops a quorum queue's message after 20 failed deliveries unless it has a
    dead-letter target: with the program's policy it lands, once, in `edd.dead-letter`."""
    d = cluster
    units = [(h, f"celery-{w}") for w, i in WORKERS.items() for h in [(d.host, *d.worker_hosts)[i]]]
    for host, unit in units:  # nobody else may take the message
        sh(host, f"systemctl stop {unit}")
    try:
        env = "/etc/edd-infra/celery-edd-worker-1.env"
        out = sh(
            d.host,
            f"set -a; . {env}; set +a; cd /opt/edd-sandbox/app && "
            f"/opt/edd-sandbox/venv/bin/python -c {shlex.quote(POISON)}",
        )
        deliveries = int(out.split()[-1])
        # At-least-once dead-lettering moves the message in the background: wait for it.
        deadline = time.monotonic() + 60
        while True:
            parked = sh(d.host, "rabbitmqctl -q list_queues -p /edd name messages --no-table-headers").split()
            depths = dict(zip(parked[::2], parked[1::2]))
            if (depths["edd"], depths["edd.dead-letter"]) == ("0", "1") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert (depths["edd"], depths["edd.dead-letter"]) == ("0", "1"), (deliveries, parked)
        assert 20 <= deliveries <= 21, deliveries
        FIGURES["poison task deliveries before dead-lettering"] = deliveries
        sh(d.host, "rabbitmqctl -q purge_queue -p /edd edd.dead-letter")
    finally:
        for host, unit in units:
            sh(host, f"systemctl start {unit}")


def test_a_node_stopped_while_tasks_flow_loses_no_task_and_rejoins(cluster):
    """The node every service dials first (the broker host's) stops mid-flow: workers and
    the producer fail over to the others, the quorum queue keeps every confirmed task, and
    the node rejoins when it starts again."""
    d = cluster
    total = 1000
    producer = Producer(d, total, pace=0.01)
    try:
        producer.wait_published(total // 5)
        sh(d.host, "systemctl stop rabbitmq-server", timeout=300)
        stopped = time.monotonic()
        survivors = node_names(*d.nodes)
        assert running_nodes(d.nodes[0]) == survivors
        # While the node is down, the remote workers go on consuming through the other nodes.
        before = len(completed(d, producer.prefix))
        deadline = time.monotonic() + 120
        while len(completed(d, producer.prefix)) <= before + 50:
            assert time.monotonic() < deadline, "no worker consumed while one node was down"
            time.sleep(1)
        FIGURES["node stopped: 50 more tasks done after"] = time.monotonic() - stopped
        assert queue_members(d.nodes[0])[0] == "quorum"
        sh(d.host, "systemctl start rabbitmq-server", timeout=300)
        started = time.monotonic()
        everyone = node_names(d.host, *d.nodes)
        deadline = time.monotonic() + 120
        while running_nodes(d.nodes[0]) != everyone:
            assert time.monotonic() < deadline, "the node did not rejoin"
            time.sleep(1)
        FIGURES["node started: rejoined after"] = time.monotonic() - started
        ids = producer.all_ids()
        wait_succeeded(d, ids, producer.prefix)
        FIGURES["node stop: all 1000 tasks done after"] = time.monotonic() - stopped
        FIGURES["node stop: producer retries"] = producer.retries()
        assert (
            sh(
                d.nodes[0],
                "rabbitmqctl -q list_queues -p /edd name messages --no-table-headers | awk '$1 == \"edd\" {print $2}'",
            ).strip()
            == "0"
        )
    finally:
        producer.stop()
        sandbox_hosts.run(d.host, "systemctl start rabbitmq-server", timeout=300)


def restarts_since(host, since: int) -> list[tuple[float, float]]:
    """(stopping, started) times of rabbitmq-server on the host since `since` (journal)."""
    journal = sh(host, f"journalctl -u rabbitmq-server -o short-unix --no-pager --since=@{since}")
    windows, stopping = [], None
    for line in journal.splitlines():
        at = float(line.split()[0])
        if "Stopping rabbitmq-server" in line:
            stopping = at
        elif "Started rabbitmq-server" in line and stopping is not None:
            windows.append((stopping, at))
            stopping = None
    return windows


def roll_while_tasks_flow(d, broker: dict, what: str) -> None:
    """Set `broker` (a change every node takes) and `up` while 1,000 tasks flow: the nodes
    restart one after another, each drained first and only once the one before it is back in
    every quorum queue, so two of three are always up; every confirmed task runs."""
    nodes = (d.host, *d.nodes)
    since = int(float(sh(d.host, "date +%s.%N")))
    logs = {h.name: broker_logs_since(h) for h in nodes}
    total = 1000
    producer = Producer(d, total, pace=0.01)
    try:
        producer.wait_published(total // 10)
        d.stack.set_plain({"broker": broker})
        # The reviewer's preview lists the nodes in the order they will restart.
        diff = d.stack.stack.preview(diff=True, color="never").stdout
        servers = [f"broker-{suffix}" for suffix in ("server", *(f"node-{h.name}" for h in d.nodes))]
        listed = [diff.find(f"::{name}]") for name in servers]
        assert -1 not in listed and listed == sorted(listed), (listed, diff[-3000:])
        started = time.monotonic()
        result, _ = d.up()
        FIGURES[f"{what}: up took"] = time.monotonic() - started
        assert result.summary.resource_changes.get("update", 0) >= 3, result.summary.resource_changes
        # Seed, then node 2, then node 3: every stop of a node ends before the next node's
        # first stop, so never two down at once. (An upgrade stops a node twice: for the
        # package, then to start it on its config.)
        windows = [restarts_since(h, since) for h in nodes]
        assert all(windows), windows
        for before, after in zip(windows, windows[1:]):
            assert before[-1][1] < after[0][0], windows
        FIGURES[f"{what}: longest node down-time"] = max(start - stop for w in windows for stop, start in w)
        FIGURES[f"{what}: stops per node"] = max(len(w) for w in windows)
        for host in nodes:
            written = "".join(broker_logs_since(host, logs[host.name]).values()).lower()
            assert "maintenance mode" in written, (host.name, written[-1500:])
        ids = producer.all_ids()
        wait_succeeded(d, ids, producer.prefix)
        FIGURES[f"{what}: all 1000 tasks done after"] = time.monotonic() - started
        FIGURES[f"{what}: producer retries"] = producer.retries()
        assert queue_members(d.host) == ("quorum", node_names(*nodes))
    finally:
        producer.stop()


def test_a_change_to_every_node_restarts_them_one_at_a_time_drained_while_tasks_flow(cluster):
    d = cluster
    broker = json.loads(d.stack.stack.get_config("edd-infra:broker").value)
    watermark = round(broker.get("memoryHighWatermark", 0.4) + 0.01, 2)
    roll_while_tasks_flow(d, dict(broker, memoryHighWatermark=watermark), "rolling restart (config)")


def test_a_node_cut_off_from_the_others_pauses_and_rejoins_with_no_task_lost(cluster):
    """Node 3's link goes down while 1,000 tasks flow: the majority carries on, the cut node
    pauses itself (pause_minority: it serves nobody while it cannot see a majority), and
    when the link is back it rejoins on its own. Every task runs, and none twice."""
    d = cluster
    cut, everyone = d.nodes[1], node_names(d.host, *d.nodes)
    total = 1000
    producer = Producer(d, total, pace=0.1)  # publishes for longer than the partition is detected
    try:
        producer.wait_published(total // 10)
        with sandbox_hosts.cut_off(cut):
            cut_at = time.monotonic()
            majority = node_names(d.host, d.nodes[0])
            while running_nodes(d.host) != majority:
                assert time.monotonic() - cut_at < 180, "the majority never saw node 3 go"
                time.sleep(1)
            FIGURES["partition: the majority saw node 3 go after"] = time.monotonic() - cut_at
            # Paused: the node's Erlang VM runs, its broker application does not.
            while sandbox_hosts.inside(cut, "rabbitmq-diagnostics -q check_running").returncode == 0:
                assert time.monotonic() - cut_at < 180, "node 3 did not pause while cut off"
                time.sleep(2)
            FIGURES["partition: node 3 paused after"] = time.monotonic() - cut_at
            before = len(completed(d, producer.prefix))
            while len(completed(d, producer.prefix)) <= before + 50:
                assert time.monotonic() - cut_at < 300, "no worker consumed while node 3 was cut off"
                time.sleep(1)
        healed = time.monotonic()
        while running_nodes(d.host) != everyone:
            assert time.monotonic() - healed < 300, "node 3 did not rejoin after the link came back"
            time.sleep(1)
        FIGURES["partition: node 3 rejoined after the link came back in"] = time.monotonic() - healed
        ids = producer.all_ids()
        counts = wait_succeeded(d, ids, producer.prefix)
        assert {i: n for i, n in counts.items() if n > 1} == {}
        assert queue_members(d.host) == ("quorum", everyone)
    finally:
        producer.stop()


def test_up_after_the_node_came_back_changes_nothing(cluster):
    result, _ = cluster.up()
    assert set(result.summary.resource_changes) == {"same"}, result.summary.resource_changes


def test_removing_and_adding_a_node_is_a_config_change(cluster):
    d = cluster
    broker = json.loads(d.stack.stack.get_config("edd-infra:broker").value)
    members = broker["clusterNodes"]
    d.stack.set_plain({"broker": dict(broker, clusterNodes=members[:1])})
    result, _ = d.up()
    changes = result.summary.resource_changes
    # The node's server, its repair twin, its join, its firewall and that one's repair twin go;
    # services re-read their node list, the other nodes' firewalls drop its address.
    assert changes.get("delete") == 5 and "create" not in changes, changes
    for host in (d.host, d.nodes[0]):
        assert d.nodes[1].address not in sh(host, "nft list set inet edd_infra peers_v4"), host.name
    assert running_nodes(d.host) == node_names(d.host, d.nodes[0])
    assert queue_members(d.host) == ("quorum", node_names(d.host, d.nodes[0]))
    assert send_task(d.host, 5, 5) == "10"
    d.stack.set_plain({"broker": broker})
    result, _ = d.up()
    assert result.summary.resource_changes.get("create") == 5, result.summary.resource_changes
    for host in (d.host, d.nodes[0]):
        assert d.nodes[1].address in sh(host, "nft list set inet edd_infra peers_v4"), host.name
    everyone = node_names(d.host, *d.nodes)
    assert running_nodes(d.host) == everyone
    assert queue_members(d.host) == ("quorum", everyone)
    assert send_task(d.host, 6, 6) == "12"


def test_an_upgrade_of_every_node_goes_one_node_at_a_time_while_tasks_flow(cluster, tmp_path):
    """RabbitMQ's "own repository" (tests/hosts/apt_repo.py: Debian's build repackaged as a
    newer one, signed, served on this machine's end of the seed's link) and a pinned
    `packageVersion` change: the nodes upgrade one after another, drained, no task lost."""
    missing = apt_repo.missing_tools()
    if missing:
        pytest.skip(f"hosts tier skipped: building a test apt repository needs {', '.join(missing)}")
    d = cluster
    base = apt_repo.debian_deb(ensure_image())
    newer = f"{apt_repo.deb_version(base)}+edd1"
    repo, key = apt_repo.build_repo(base, {newer: False}, tmp_path)
    (tmp_path / "repo.asc").write_text(key)
    gateway = d.host.address.rsplit(".", 1)[0] + ".1"  # this machine's end of the seed's link
    broker = json.loads(d.stack.stack.get_config("edd-infra:broker").value)
    with apt_repo.serve(repo, gateway) as url:
        source = {"url": url, "suite": apt_repo.SUITE, "keyFile": str(tmp_path / "repo.asc")}
        roll_while_tasks_flow(d, dict(broker, aptSource=source, packageVersion=newer), "rolling upgrade")
        for host in (d.host, *d.nodes):
            assert sh(host, "dpkg-query -W -f='${Version}' rabbitmq-server").strip() == newer
