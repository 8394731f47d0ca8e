"""broker.aptSource: the apt files rendered for it, and what bad input says (before any host changes)."""

from pathlib import Path

from edd_infra.config_errors import file_problems, validate
from edd_infra.render.apt_source import render_apt_preferences, render_apt_sources
from tests.unit.samples import sample_raw, with_changes

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGx\n-----END PGP PUBLIC KEY BLOCK-----\n"
SOURCE = {
    "url": "https://deb1.rabbitmq.com/rabbitmq-server/debian/trixie",
    "suite": "trixie",
    "keyFile": "rabbitmq.asc",
}


def deb822(text: str) -> list[dict[str, str]]:
    """Stanzas of a deb822 file (apt's sources and preferences format), comments dropped."""
    stanzas = []
    for block in "\n".join(kept for kept in text.splitlines() if not kept.startswith("#")).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        if fields:
            stanzas.append(fields)
    return stanzas


def test_the_source_trusts_only_its_own_key():
    (source,) = deb822(render_apt_sources(SOURCE["url"], "trixie", "main"))
    assert source == {
        "Types": "deb",
        "URIs": SOURCE["url"],
        "Suites": "trixie",
        "Components": "main",
        "Signed-By": "/etc/apt/keyrings/edd-infra-rabbitmq.asc",
    }


def test_rabbitmq_is_pinned_to_the_version_and_erlang_prefers_the_source():
    server, erlang = deb822(render_apt_preferences(SOURCE["url"], "4.0.5-1"))
    assert server == {"Package": "rabbitmq-server", "Pin": "version 4.0.5-1", "Pin-Priority": "1001"}
    assert erlang == {"Package": "erlang*", "Pin": 'origin "deb1.rabbitmq.com"', "Pin-Priority": "700"}


def problems(tmp_path: Path, broker_changes: dict, key_text: str | None = KEY) -> list[str]:
    if key_text is not None:
        (tmp_path / "rabbitmq.asc").write_text(key_text)
    raw = with_changes(sample_raw(), [(("broker", k), v) for k, v in broker_changes.items()])
    settings, model = validate(raw)
    return model if settings is None else model + file_problems(settings, {}, tmp_path)


def test_a_source_with_its_key_and_a_version_is_valid(tmp_path):
    assert problems(tmp_path, {"aptSource": SOURCE, "packageVersion": "4.0.5-1"}) == []


def test_a_source_needs_the_version_it_pins(tmp_path):
    assert problems(tmp_path, {"aptSource": SOURCE}) == [
        "edd-infra:broker.packageVersion: required with broker.aptSource (the version it pins, "
        "e.g. from `apt-cache policy rabbitmq-server` on a host with the source)"
    ]


def test_the_key_must_be_an_armored_public_key(tmp_path):
    (found,) = problems(tmp_path, {"aptSource": SOURCE, "packageVersion": "4.0.5-1"}, key_text="not a key\n")
    assert found.startswith("edd-infra:broker.aptSource.keyFile: ") and "holds no ASCII-armored public key" in found
    (missing,) = problems(tmp_path / "nowhere", {"aptSource": SOURCE, "packageVersion": "4.0.5-1"}, key_text=None)
    assert missing.startswith("edd-infra:broker.aptSource.keyFile: cannot read ")


def test_a_bad_url_or_suite_names_its_key(tmp_path):
    found = problems(tmp_path, {"aptSource": dict(SOURCE, url="ftp://x", suite="trixie main"), "packageVersion": "1"})
    assert any(p.startswith("edd-infra:broker.aptSource.url: ") for p in found), found
    assert any(p.startswith("edd-infra:broker.aptSource.suite: ") for p in found), found
