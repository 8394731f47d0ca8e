"""A tiny Celery app standing in for EDD on the sandbox hosts.

The Pulumi program deploys workers that run
``/opt/edd-sandbox/venv/bin/celery -A edd worker -Q edd -n edd-worker-1@%h``
from ``/opt/edd-sandbox/app``; this module is what they import. It is
configured only from the environment, as a real deployment would be:

- ``CELERY_CONFIG_MODULE``: edd-infra's Celery settings (publisher confirms, late acks and
  the other reliability settings, time limits, queue ``edd`` on the fanout exchange ``edd``,
  its queue type, Celery's exchange names). The app sets none of them itself, so what the
  program delivers is what runs.
- ``CELERY_BROKER_URL``: the broker (default: guest on the local RabbitMQ).
- ``CELERY_RESULT_BACKEND``: where results go (default ``rpc://``).
- ``CELERY_BROKER_CA_FILE``: when set (a worker on another host than the broker), the broker
  is reached over TLS and its certificate checked against this CA.
- ``CELERY_SECURITY_KEY``, ``CELERY_SECURITY_CERTIFICATE``, ``CELERY_SECURITY_CERT_STORE``:
  when set (edd-infra's ``celerySigning``), tasks are signed and only signed tasks run.
  Flower gets no key (unless ``flower.canSendTasks``): with only the certificate and store the
  app verifies signed messages and refuses, by name, to send a task.
"""

import os
import ssl

from celery import Celery

app = Celery("edd")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    result_backend=os.environ.get("CELERY_RESULT_BACKEND", "rpc://"),
    broker_connection_retry_on_startup=True,
)

if os.environ.get("CELERY_BROKER_CA_FILE"):
    app.conf.broker_use_ssl = {
        "ca_certs": os.environ["CELERY_BROKER_CA_FILE"],
        "cert_reqs": ssl.CERT_REQUIRED,
        # None: kombu checks the certificate against the host of the URL it dials (with
        # several URLs, a cluster, the first one it connected to).
        "server_hostname": None,
    }

if os.environ.get("CELERY_SECURITY_KEY"):
    app.conf.update(
        security_key=os.environ["CELERY_SECURITY_KEY"],
        security_certificate=os.environ["CELERY_SECURITY_CERTIFICATE"],
        security_cert_store=os.environ["CELERY_SECURITY_CERT_STORE"],
        # Tasks are signed and only signed tasks are accepted; results stay JSON.
        task_serializer="auth",
        accept_content=["auth"],
        result_accept_content=["json"],
    )
    app.setup_security()
elif os.environ.get("CELERY_SECURITY_CERT_STORE"):
    # Verify only: Celery's setup_security() insists on a key, so the `auth` serializer is
    # registered here with the store alone (all that checking a signature needs). Sending a
    # task would need the key: it fails at once, saying so, instead of publishing an unsigned
    # task the workers would refuse.
    from kombu.serialization import disable_insecure_serializers, registry
    from celery.exceptions import SecurityError
    from celery.security.serialization import SecureSerializer
    from celery.security.certificate import FSCertStore

    app.conf.update(
        security_certificate=os.environ.get("CELERY_SECURITY_CERTIFICATE"),
        security_cert_store=os.environ["CELERY_SECURITY_CERT_STORE"],
        task_serializer="auth",
        accept_content=["auth"],
        result_accept_content=["json"],
    )
    _verifier = SecureSerializer(cert_store=FSCertStore(app.conf.security_cert_store), digest=app.conf.security_digest)

    def _cannot_sign(_body):
        raise SecurityError(
            "no signing key (CELERY_SECURITY_KEY): this process verifies signed messages "
            "but cannot send tasks (edd-infra: flower.canSendTasks)"
        )

    disable_insecure_serializers(None)  # as setup_security() does; `auth` is enabled below
    registry.register(
        "auth", _cannot_sign, _verifier.deserialize, content_type="application/data", content_encoding="utf-8"
    )
    # Remote control (Flower's wake-up call when it starts capturing events, inspect, revoke,
    # shutdown) goes out unsigned: the workers refuse it (they accept only signed messages), and
    # events, which workers send by themselves, keep Flower's dashboard current. Left signed,
    # the wake-up would raise and Flower would never capture an event.
    app.control.mailbox.serializer = "json"


@app.task(name="edd.add")
def add(x, y):
    """Return x + y: the round trip every deployment check can make."""
    return x + y


@app.task(name="edd.work")
def work(seconds):
    """Sleep `seconds`, as EDD's real tasks take minutes: what a restart or an upgrade must
    not lose while it runs."""
    import time

    time.sleep(seconds)
    return seconds


@app.task(name="edd.retry_once", bind=True)
def retry_once(self, x, countdown):
    """Ask to be retried once after `countdown` seconds, then return x: the path a task takes
    when it meets a transient error (on a quorum queue, through native delayed delivery)."""
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return x
