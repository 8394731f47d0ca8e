"""Probes that run on a sandbox host while something changes, and report what a user would see.

`ConsumerSampler` asks the broker every 100 ms how many consumers the `edd` queue has (a
passive queue.declare, answered by the queue itself, through the app's own account from a
worker's environment file), so a restart that leaves the queue without a consumer shows
even when it lasts less than the management API's 5 s statistics interval.
"""

from __future__ import annotations

import base64
import subprocess

from . import hosts as sandbox_hosts
from .image import VENV

SAMPLER = """
import os, sys, time
from kombu import Connection
lowest, gap, longest, last = None, 0.0, 0.0, time.monotonic()
with Connection(os.environ["CELERY_BROKER_URL"]) as conn:
    channel = conn.default_channel
    while not os.path.exists("/tmp/sampler.stop"):
        consumers = channel.queue_declare("edd", passive=True).consumer_count
        now = time.monotonic()
        gap = gap + (now - last) if consumers == 0 else 0.0
        longest, last = max(longest, gap), now
        lowest = consumers if lowest is None else min(lowest, consumers)
        time.sleep(0.1)
print(lowest, round(longest, 2))
"""


class ConsumerSampler:
    """Samples the `edd` queue's consumers on `host` (broker URL from `env`) until `stop()`."""

    def __init__(self, host: sandbox_hosts.SandboxHost, env: str):
        self.host = host
        code = base64.b64encode(SAMPLER.encode()).decode()
        sandbox_hosts.run(host, f"rm -f /tmp/sampler.stop; echo {code} | base64 -d > /tmp/sampler.py", check=True)
        self.process = subprocess.Popen(
            [*host.ssh_command(), f"set -a; . {env}; set +a; {VENV}/bin/python /tmp/sampler.py"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> tuple[int, float]:
        """(fewest consumers seen, longest time in seconds with none)."""
        sandbox_hosts.run(self.host, "touch /tmp/sampler.stop", check=True)
        out, err = self.process.communicate(timeout=60)
        if self.process.returncode != 0:
            raise RuntimeError(f"consumer sampler failed on {self.host.name}: {err[-2000:]}")
        lowest, longest = out.split()
        return int(lowest), float(longest)
