"""Flower's dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

One hardened deployment (TLS, signing, as `make sandbox`) per Debian release on its own sandbox
host (`edd-fb13`, `edd-fb12`). Chromium runs on this machine and loads the `flowerUrl` output
(Flower listens on the host's veth address, a private link only this machine reaches).

How the password reaches Chromium: Playwright talks to its driver over a pipe and the driver to
Chromium over `--remote-debugging-pipe`; the context's `http_credentials` (limited to Flower's
origin) answer Flower's 401 challenge through the DevTools protocol (`Fetch.continueWithAuth`).
So the password is in no URL and on no argv; the test checks both. Every request to another
origin is aborted and counted (there must be none), and Chromium runs with its background
network features off.

Flower serves HTTPS there (flower.tls, a certificate from the stack's CA). Chromium has no way
to trust that CA without a certificate database of its own, so its context ignores certificate
errors; the test verifies instead: the same URL with Python's TLS against the stack's CA (chain
and address), and the certificate Chromium was served (issuer and subject, from DevTools).

Playwright (PyPI, pinned in requirements.txt) is used with `executable_path`: it downloads no
browser of its own. Without Debian's Chromium (or Playwright) the tests skip with one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from sandbox.hosts import _alive, _descendants, _start_time
from tests.hosts.deployment import deployment, print_figures, print_line, secret_forms

pytestmark = pytest.mark.hosts
HOSTS = {13: "edd-fb13", 12: "edd-fb12"}
# Debian's packages put the real binaries here; /usr/bin/chromium* are shell wrappers that would
# stand between us and the PID to end.
CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/chromium")
INSTALL = "apt-get install --no-install-recommends chromium-headless-shell"
# On top of Playwright's own defaults (which hold most of them): nothing in the background.
QUIET_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-domain-reliability",
    "--no-pings",
    "--disable-default-apps",
]
TABLE_DEADLINE = 120.0  # s: Flower hears of the worker from its events (2 cores, other tests running)
FIGURES: dict[str, float] = {}
SHOTS: list[str] = []


def chromium_binary() -> str | None:
    return next((p for p in CHROMIUM_BINARIES if os.access(p, os.X_OK)), None)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as kids:
            return [int(k) for k in kids.read().split()]
    except FileNotFoundError:
        return []


def _skip(reason: str) -> None:
    """One line, like the other tiers: a failure instead with EDD_INFRA_HOSTS=1 (CI must run it)."""
    message = f"browser test skipped: {reason}"
    if os.environ.get("EDD_INFRA_HOSTS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class Browser:
    """The launched Chromium, and `pids()`: Playwright's driver (the child this process started
    for it) and everything under it (Chromium and its helpers), each noted with its start time so
    that teardown ends only those. Sandbox hosts are children of this process too: never counted."""

    def __init__(self, driver_pids: list[int]):
        self.driver_pids, self.started = driver_pids, {}
        self.chromium = None

    def pids(self) -> list[int]:
        pids = [p for d in self.driver_pids if _alive(d, None) for p in (d, *_descendants(d))]
        for pid in pids:
            self.started.setdefault(pid, _start_time(pid))
        return pids

    def end_leftovers(self) -> None:
        """SIGKILL, by PID, whichever of ours closing left running; wait until they are gone."""
        self.pids()
        left = [pid for pid, start in self.started.items() if _alive(pid, start)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(pid, self.started[pid]) for pid in left) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def browser(hosts_tier):
    """Debian's Chromium under Playwright, for the module; closed at teardown, and every process
    started for it ended by PID if closing left it running (also when a test failed)."""
    binary = chromium_binary()
    if not binary:
        _skip(f"no Chromium binary ({' or '.join(CHROMIUM_BINARIES)}): {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("the playwright package is missing (make toolchain installs requirements.txt)")
    before = set(children(os.getpid()))
    started = time.monotonic()
    driver = sync_playwright().start()
    b = Browser([pid for pid in children(os.getpid()) if pid not in before])
    try:
        b.chromium = driver.chromium.launch(executable_path=binary, args=QUIET_ARGS, chromium_sandbox=False)
        FIGURES["Chromium launch"] = time.monotonic() - started
        b.pids()
        yield b
    finally:
        b.pids()
        with contextlib.suppress(Exception):
            if b.chromium:
                b.chromium.close()
        with contextlib.suppress(Exception):
            driver.stop()
        b.end_leftovers()


@pytest.fixture(scope="module", params=sorted(HOSTS, reverse=True), ids=lambda debian: f"debian{debian}")
def deployed(request, plugins_ready, sandbox_hosts, browser, tmp_path_factory):
    (host,) = sandbox_hosts(HOSTS[request.param], debian=request.param)
    with deployment(host, tmp_path_factory.mktemp(f"flower{request.param}"), prefix="fb", hardened=True) as d:
        outputs = d.stack.stack.outputs()
        d.flower_url = outputs["flowerUrl"].value
        config = {k.split(":", 1)[1]: v.value for k, v in d.stack.stack.get_all_config().items()}
        workers = plain(config["workers"])
        # Celery's node name is `<name>@%h`, and a sandbox host's hostname is its name.
        d.worker_nodes = sorted(f"{w['name']}@{w['host']}" for w in workers)
        assert outputs["workerUnits"].value == {f"celery-{w['name']}": w["host"] for w in workers}
        d.ui_user = plain(config["flower"]).get("uiUser", "admin")
        FIGURES[f"fresh up, Debian {request.param}"] = d.fresh_up_seconds
        yield d
    print_figures(request, "flower browser", FIGURES)
    for line in SHOTS:
        print_line(request, line)
    FIGURES.clear()  # each release's figures once
    SHOTS.clear()


def plain(value):
    """A config value as the program reads it (objects and lists come back as JSON text)."""
    return json.loads(value) if isinstance(value, str) else value


@contextlib.contextmanager
def page_on(browser, origin: str, credentials: tuple[str, str] | None):
    """(page, elsewhere): a page in a fresh context (no cookies, no cache); requests outside
    `origin` are aborted and listed in `elsewhere`."""
    auth = (
        {"http_credentials": {"username": credentials[0], "password": credentials[1], "origin": origin}}
        if credentials
        else {}
    )
    # Chromium cannot be told the stack's CA: the tests verify Flower's certificate themselves.
    context = browser.chromium.new_context(
        viewport={"width": 1280, "height": 800}, ignore_https_errors=origin.startswith("https:"), **auth
    )
    elsewhere: list[str] = []

    def guard(route):
        url = route.request.url
        if url.startswith(origin + "/"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    context.route("**/*", guard)
    try:
        yield context.new_page(), elsewhere
    finally:
        context.close()


# The workers table as rendered: one entry per row, the worker's full name (the link's title:
# the cell's text shortens long names) and the status badge's text.
ROWS_JS = """() => Array.from(document.querySelectorAll('#workers-table tbody tr')).map(row => ({
    name: (row.querySelector('a.worker-name-link') || {}).title || null,
    status: row.cells.length > 1 ? row.cells[1].innerText.trim() : null}))"""


def check_served_certificate(d, response) -> None:
    """Flower's URL is HTTPS from the stack's CA: Python verifies chain and address against the
    CA file, and the certificate Chromium got is that one (issuer and subject)."""
    url = urlsplit(d.flower_url)
    assert url.scheme == "https", d.flower_url
    context = ssl.create_default_context(cafile=d.ca_file)
    with urllib.request.urlopen(f"{d.flower_url}healthcheck", timeout=15, context=context) as answer:
        assert answer.status == 200
    details = response.security_details()
    assert details and details.get("issuer") == "edd-infra sandbox CA", details
    assert details.get("subjectName") == url.hostname, details


def test_dashboard_shows_every_worker_online(deployed, browser, request, tmp_path):
    d = deployed
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(d.flower_url))
    assert urlsplit(d.flower_url).username is None and urlsplit(d.flower_url).password is None
    password = d.secrets["flowerUiPassword"]
    with page_on(browser, origin, (d.ui_user, password)) as (page, elsewhere):
        started = time.monotonic()
        response = page.goto(d.flower_url, wait_until="domcontentloaded", timeout=60_000)
        assert response.status == 200, response.status
        FIGURES[f"dashboard loaded, {d.host.name}"] = time.monotonic() - started
        check_served_certificate(d, response)
        # Rendered by Flower's own script from /workers?json=1, not the server's first HTML.
        page.wait_for_function(
            f"""nodes => {{ const rows = ({ROWS_JS})();
                return nodes.every(n => rows.some(r => r.name === n && r.status === 'Online')); }}""",
            arg=d.worker_nodes,
            timeout=TABLE_DEADLINE * 1000,
            polling=250,
        )
        FIGURES[f"time to workers table, all online, {d.host.name}"] = time.monotonic() - started
        rows = page.evaluate(ROWS_JS)
        assert {r["name"]: r["status"] for r in rows if r["name"] in d.worker_nodes} == dict.fromkeys(
            d.worker_nodes, "Online"
        ), rows
        shot = tmp_path / f"flower-dashboard-{d.host.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shown = ", ".join(f"{r['name']} {r['status']}" for r in rows)
        SHOTS.append(f"flower browser: screenshot {shot} ({shot.stat().st_size} bytes; workers table: {shown})")
        # The password was in no URL and on no command line of the driver or Chromium.
        forms = secret_forms({"ui": password})
        assert not any(form in url for form in forms for url in (page.url, response.url))
        pids = browser.pids()
        assert pids, "found none of the browser's processes"
        for pid in pids:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
                assert not any(form in argv for form in forms), f"the UI password is on the argv of PID {pid}"
        assert elsewhere == [], f"requests outside Flower's origin: {elsewhere}"


def test_without_the_login_the_dashboard_is_refused(deployed, browser):
    d = deployed
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(d.flower_url))
    with page_on(browser, origin, None) as (page, elsewhere):
        response = page.goto(d.flower_url, wait_until="load", timeout=60_000)
        assert response.status == 401, response.status
        assert page.locator("#workers-table").count() == 0
        assert not any(node in page.content() for node in d.worker_nodes)
        # Nor does the data behind the table come without the login.
        assert page.request.get(f"{d.flower_url}workers?json=1").status == 401
        assert elsewhere == [], f"requests outside Flower's origin: {elsewhere}"
