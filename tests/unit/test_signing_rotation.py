"""Signing-key rotation: the previous certificate in every store until previousTrustedUntil.

The keys' validation, the certificate checks made at preview (what would stop Celery's
store from loading), the files rendered, and the journaled removal once the time has passed.
"""

import os
import shutil
import subprocess
from datetime import datetime, timezone

import pytest

from edd_infra.config_errors import previous_certificate_problems, validate
from edd_infra.render import host_scripts
from edd_infra.render.signing_files import previous_certificate_warning, signing_files, untrusted_paths
from edd_infra.settings import CelerySigning
from tests.unit.certificates import certificate_pem
from tests.unit.samples import sample_raw, with_changes

UNTIL = "2099-01-01T00:00:00Z"
BEFORE = datetime(2098, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
AFTER = datetime(2099, 1, 1, tzinfo=timezone.utc)


def signing_problems(value):
    return validate(with_changes(sample_raw(), [(("celerySigning",), value)]))[1]


@pytest.mark.parametrize(
    "text, instant",
    [
        ("2099-01-01", AFTER),
        ("2099-01-01T00:00:00Z", AFTER),
        ("2099-01-01T00:00Z", AFTER),
        ("2099-01-01T00:00:00+00:00", AFTER),
        ("2098-12-31T23:59:59.5Z", datetime(2098, 12, 31, 23, 59, 59, 500000, tzinfo=timezone.utc)),
    ],
)
def test_previous_trusted_until_takes_an_iso_date_or_a_utc_date_time(text, instant):
    signing = CelerySigning.model_validate(
        {"certFile": "new.pem", "previousCertFile": "old.pem", "previousTrustedUntil": text}
    )
    assert signing.previous_trusted_until == instant


@pytest.mark.parametrize(
    "value, problem",
    [
        (
            {"certFile": "new.pem", "previousCertFile": "old.pem"},
            "edd-infra:celerySigning: previousTrustedUntil is required with previousCertFile: the UTC date or date-time",
        ),
        (
            {"certFile": "new.pem", "previousTrustedUntil": UNTIL},
            "edd-infra:celerySigning: previousTrustedUntil is used only with previousCertFile",
        ),
        (
            {"certFile": "new.pem", "previousCertFile": "old.pem", "previousTrustedUntil": "2099-01-01T00:00:00"},
            "edd-infra:celerySigning.previousTrustedUntil: must be in UTC (end it with Z or +00:00), e.g. 2027-01-31",
        ),
        (
            {"certFile": "new.pem", "previousCertFile": "old.pem", "previousTrustedUntil": "2099-01-01T01:00:00+01:00"},
            "edd-infra:celerySigning.previousTrustedUntil: must be in UTC",
        ),
        (
            {"certFile": "new.pem", "previousCertFile": "old.pem", "previousTrustedUntil": "next monday"},
            "edd-infra:celerySigning.previousTrustedUntil: must be an ISO-8601 UTC date or date-time, e.g. 2027-01-31",
        ),
        (
            {"certFile": "new.pem", "previousCertFile": "old.pem", "previousTrustedUntil": "2099-02-30"},
            "edd-infra:celerySigning.previousTrustedUntil: must be an ISO-8601 UTC date or date-time",
        ),
        (
            {"certFile": "new.pem", "previousCertFile": "old.pem", "previousTrustedUntil": 20990101},
            "edd-infra:celerySigning.previousTrustedUntil: must be an ISO-8601 UTC date or date-time as a string",
        ),
        (
            {"certFile": "new.pem", "previousCertFile": "old pem", "previousTrustedUntil": UNTIL},
            "edd-infra:celerySigning.previousCertFile: must match",
        ),
    ],
)
def test_bad_rotation_keys_are_named_with_what_is_allowed(value, problem):
    problems = signing_problems(value)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_the_previous_certificate_is_trusted_strictly_before_its_time():
    signing = CelerySigning.model_validate({"certFile": "n", "previousCertFile": "o", "previousTrustedUntil": UNTIL})
    assert signing.previous_trusted(BEFORE) and not signing.previous_expired(BEFORE)
    assert not signing.previous_trusted(AFTER) and signing.previous_expired(AFTER)
    plain = CelerySigning(cert_file="n")
    assert not plain.previous_trusted(BEFORE) and not plain.previous_expired(AFTER)


@pytest.fixture
def certs(tmp_path):
    """certFile and a good previousCertFile, plus the bad previous ones the checks refuse."""
    files = {
        "new.pem": certificate_pem(serial=2),
        "old.pem": certificate_pem(serial=1),
        "same-id.pem": certificate_pem(serial=2, not_after=datetime(2101, 1, 1, tzinfo=timezone.utc)),
        "short.pem": certificate_pem(serial=3, not_after=datetime(2098, 6, 1, tzinfo=timezone.utc)),
        "ec.pem": certificate_pem(serial=4, key="ec"),
        "garbage.pem": "-----BEGIN CERTIFICATE-----\nMIIBnotarealcertificate\n-----END CERTIFICATE-----\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def check(root, previous, cert="new.pem", now=BEFORE):
    signing = CelerySigning(cert_file=cert, previous_cert_file=previous, previous_trusted_until=UNTIL)
    return previous_certificate_problems(signing, root, now)


def test_a_previous_certificate_the_store_accepts_beside_the_new_one_passes(certs):
    assert check(certs, "old.pem") == []


@pytest.mark.parametrize(
    "previous, cert, problem",
    [
        (
            "missing.pem",
            "new.pem",
            "edd-infra:celerySigning.previousCertFile: cannot read '{dir}/missing.pem' "
            "(FileNotFoundError); a PEM certificate file",
        ),
        (
            "garbage.pem",
            "new.pem",
            "edd-infra:celerySigning.previousCertFile: '{dir}/garbage.pem' holds no PEM certificate that can be read",
        ),
        (
            "new.pem",
            "new.pem",
            "edd-infra:celerySigning.previousCertFile: is the same certificate as celerySigning.certFile",
        ),
        (
            "same-id.pem",
            "new.pem",
            "edd-infra:celerySigning.previousCertFile: has the same issuer and serial number as "
            "celerySigning.certFile ('edd-infra test signing 2'); Celery's store refuses duplicates",
        ),
        (
            "short.pem",
            "new.pem",
            "edd-infra:celerySigning.previousCertFile: the certificate expires at "
            "2098-06-01T00:00:00Z, before celerySigning.previousTrustedUntil (2099-01-01T00:00:00Z)",
        ),
        ("ec.pem", "new.pem", "edd-infra:celerySigning.previousCertFile: must be an RSA certificate"),
        (
            "old.pem",
            "garbage.pem",
            "edd-infra:celerySigning.certFile: holds no PEM certificate that can be read, "
            "so previousCertFile cannot be checked",
        ),
    ],
)
def test_a_previous_certificate_that_would_stop_the_worker_is_refused(certs, previous, cert, problem):
    problems = check(certs, previous, cert)
    assert len(problems) == 1 and problems[0].startswith(problem.replace("{dir}", str(certs))), problems


def test_a_previous_certificate_past_its_time_is_not_checked(certs):
    """Left out of the stores, it matters to no host; the operator may already have deleted it."""
    assert check(certs, "missing.pem", now=AFTER) == []


def test_the_store_holds_the_previous_certificate_beside_the_current_one():
    files, env = signing_files("celery-w", "celery", "KEY", "NEW", "OLD")
    by_path = {f.path: (f.mode, f.owner, f.group, f.text) for f in files}
    base = "/etc/edd-infra/signing/celery-w"
    assert by_path == {
        f"{base}/key.pem": ("0640", "root", "celery", "KEY"),
        f"{base}/cert.pem": ("0644", "root", "root", "NEW"),
        f"{base}/store/cert.pem": ("0644", "root", "root", "NEW"),
        f"{base}/store/previous.pem": ("0644", "root", "root", "OLD"),
    }
    # Celery loads every file the glob matches: the store is the directory, not one file.
    assert env["CELERY_SECURITY_CERT_STORE"] == f"{base}/store/*.pem"
    assert untrusted_paths("celery-w", "OLD") == []


def test_without_a_trusted_previous_certificate_the_store_file_is_removed():
    files, _ = signing_files("flower", "celery", "KEY", "NEW")
    assert [f.path for f in files if "/store/" in f.path] == ["/etc/edd-infra/signing/flower/store/cert.pem"]
    assert untrusted_paths("flower", None) == ["/etc/edd-infra/signing/flower/store/previous.pem"]


def test_a_service_that_only_verifies_gets_certificate_and_store_and_no_key():
    """Flower without flower.canSendTasks: what checking a signature needs, nothing to sign with;
    a key an earlier `up` put there is removed; its certificates are readable by its group only."""
    files, env = signing_files("flower", "flower", None, "NEW", "OLD", private=True)
    base = "/etc/edd-infra/signing/flower"
    assert {f.path: (f.mode, f.owner, f.group, f.text) for f in files} == {
        f"{base}/cert.pem": ("0640", "root", "flower", "NEW"),
        f"{base}/store/cert.pem": ("0640", "root", "flower", "NEW"),
        f"{base}/store/previous.pem": ("0640", "root", "flower", "OLD"),
    }
    assert env == {
        "CELERY_SECURITY_CERTIFICATE": f"{base}/cert.pem",
        "CELERY_SECURITY_CERT_STORE": f"{base}/store/*.pem",
    }
    assert untrusted_paths("flower", "OLD", key=False) == [f"{base}/key.pem"]
    assert untrusted_paths("flower", None, key=False) == [f"{base}/store/previous.pem", f"{base}/key.pem"]


def test_the_warning_names_both_keys_to_remove():
    text = previous_certificate_warning(AFTER)
    assert text.startswith("celerySigning.previousTrustedUntil (2099-01-01T00:00:00Z) has passed")
    assert "remove celerySigning.previousCertFile and celerySigning.previousTrustedUntil" in text


def run(script):
    return subprocess.run(["sh", "-c", script + '\necho "changed=$changed"'], capture_output=True, text=True)


def test_removing_the_previous_certificate_is_a_change_and_is_put_back_on_failure(tmp_path):
    stored = tmp_path / "store" / "previous.pem"
    stored.parent.mkdir()
    stored.write_text("OLD\n")
    os.chmod(stored, 0o644)
    failing = run(host_scripts.script(host_scripts.remove_file(str(stored)), "false"))
    assert failing.returncode != 0 and "rolled back to the previous files" in failing.stderr
    assert stored.read_text() == "OLD\n" and oct(stored.stat().st_mode & 0o777) == "0o644"
    removed = run(host_scripts.script(host_scripts.remove_file(str(stored))))
    assert removed.returncode == 0 and removed.stdout.endswith("changed=1\n"), removed.stderr
    assert sorted(p.name for p in stored.parent.iterdir()) == []  # no backup left behind
    again = run(host_scripts.script(host_scripts.remove_file(str(stored))))
    assert again.returncode == 0 and again.stdout.endswith("changed=0\n")


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_the_service_script_that_removes_the_previous_certificate_passes_shellcheck(tmp_path):
    text = host_scripts.service_install(
        manager="systemd", name="celery-w", definition="[Unit]\n", absent=untrusted_paths("celery-w", None)
    )
    (tmp_path / "s.sh").write_text(text)
    result = subprocess.run(["shellcheck", "-s", "sh", str(tmp_path / "s.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
