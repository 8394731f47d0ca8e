"""A private RabbitMQ node on loopback for the plugins tier (no systemd needed).

Debian's rabbitmq-server run directly with its own ports, data directory, cookie and epmd
port, so it never meets another node on this machine; stopped by PID at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class LocalBroker:
    base: Path
    amqp_port: int = 56721
    management_port: int = 15691
    dist_port: int = 25691
    epmd_port: int = 4391
    node: str = "edd-plugins-test@localhost"

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            HOME=str(self.base / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.base / "rabbit.pid"),
            RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_ALLOW_INPUT="",
        )

    def ctl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "rabbitmqctl"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            check=check,
            timeout=60,
        )

    def start(self) -> "LocalBroker":
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            "distribution.listener.interface = 127.0.0.1\n"
        )
        (self.base / "enabled_plugins").write_text("[rabbitmq_management].\n")
        log = open(self.base / "server.out", "w")
        self.process = subprocess.Popen(
            [str(BIN / "rabbitmq-server")],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: see {self.base / 'server.out'}")
            if self.ctl("await_startup", "--timeout", "5", check=False).returncode == 0:
                return self
            time.sleep(1)
        raise RuntimeError("rabbitmq-server did not start in 90 s")

    def stop(self) -> None:
        process = getattr(self, "process", None)
        if process and process.poll() is None:
            self.ctl("stop", check=False)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # The epmd our node started listens on our own port: end it too.
        subprocess.run(["epmd", "-kill"], env=self.env(), capture_output=True, check=False)
