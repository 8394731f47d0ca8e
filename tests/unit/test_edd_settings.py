"""EDD's rabbitmq settings, rendered as json, ini and env, read back by the real readers."""

import configparser
import json
import subprocess

import pytest

from edd_infra.render.edd_settings import FORMATS, KEYS, edd_rabbitmq_settings, render_edd_settings
from tests.unit.samples import HOSTILE_PASSWORDS

ALL_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))
PASSWORDS = HOSTILE_PASSWORDS + [ALL_PRINTABLE_ASCII, "%(hostname)s and %%", "[rabbitmq]\\", "#; x = y"]
# configparser strips values: these are refused in INI (tested below), round-trip in json and env.
EDGE_SPACES = [p for p in PASSWORDS if p != p.strip()]
# The same characters with the space inside, for INI.
ALL_PRINTABLE_ASCII_INSIDE = ALL_PRINTABLE_ASCII[1:50] + " " + ALL_PRINTABLE_ASCII[50:]
INI_PASSWORDS = [p for p in PASSWORDS if p == p.strip()] + [ALL_PRINTABLE_ASCII_INSIDE]


def settings(password, user="edd_user"):
    return edd_rabbitmq_settings(
        hostname="localhost",
        edd_user=user,
        edd_pass=password,
        edd_vhost="/edd",
        port=5672,
        mgmt_user="bunny",
        mgmt_pass=password[::-1],
        mgmt_port=15672,
    )


def test_keys_are_edds_server_cfg_keys_in_order():
    s = settings("pw")
    assert list(s) == ["hostname", "edd_user", "edd_pass", "edd_vhost", "port", "mgmt_user", "mgmt_pass", "mgmt_port"]
    # Strings throughout, ports too, as in EDD's example server.cfg.
    assert (s["port"], s["mgmt_port"]) == ("5672", "15672")


@pytest.mark.parametrize("password", PASSWORDS)
def test_json_reads_back_as_edd_read_server_cfg(tmp_path, password):
    text = render_edd_settings(settings(password), "json")
    assert text.isascii()  # EDD opened server.cfg with the locale's encoding
    path = tmp_path / "server.cfg"
    path.write_text(text, encoding="ascii")
    with open(path) as server_cfg:  # as EDD did: json.load, then config['rabbitmq'].get(...)
        config = json.load(server_cfg)
    assert config["rabbitmq"] == settings(password)
    assert config["rabbitmq"].get("edd_pass") == password


@pytest.mark.parametrize("password", INI_PASSWORDS)
def test_ini_reads_back_with_configparsers_default_interpolation(tmp_path, password):
    path = tmp_path / "edd-rabbitmq.ini"
    path.write_text(render_edd_settings(settings(password, user=password), "ini"), encoding="utf-8")
    parser = configparser.ConfigParser()
    assert parser.read(path, encoding="utf-8") == [str(path)]
    assert dict(parser["rabbitmq"]) == settings(password, user=password)


def test_ini_doubles_percent_for_basic_interpolation():
    text = render_edd_settings(settings("a%b"), "ini")
    assert "edd_pass = a%%b\n" in text
    raw = configparser.ConfigParser(interpolation=None)
    raw.read_string(text)
    assert raw["rabbitmq"]["edd_pass"] == "a%%b"  # a raw reader is not the target


@pytest.mark.parametrize("password", EDGE_SPACES)
def test_ini_refuses_edge_spaces_that_configparser_would_strip(password):
    with pytest.raises(ValueError, match="^edd_pass: begins or ends with a space") as info:
        render_edd_settings(settings(password), "ini")
    assert password not in str(info.value)


def test_edge_space_cases_exist():
    assert " leading" in EDGE_SPACES and ALL_PRINTABLE_ASCII in EDGE_SPACES


@pytest.mark.parametrize("password", PASSWORDS)
def test_env_reads_back_in_sh(tmp_path, password):
    path = tmp_path / "edd-rabbitmq.env"
    path.write_text(render_edd_settings(settings(password, user=password), "env"), encoding="utf-8")
    names = " ".join(f'"$RABBITMQ_{key.upper()}"' for key in KEYS)
    out = subprocess.run(
        ["sh", "-c", f". \"$1\"; printf '%s\\0' {names}", "sh", str(path)], capture_output=True, check=True
    )
    assert out.stdout.decode().split("\0")[:-1] == list(settings(password, user=password).values())


@pytest.mark.parametrize("key", ["hostname", "edd_user", "edd_pass", "edd_vhost", "mgmt_user", "mgmt_pass"])
@pytest.mark.parametrize("bad", ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u200b"])
def test_non_printable_characters_are_refused_naming_the_setting(key, bad):
    kwargs = dict(
        hostname="localhost",
        edd_user="edd_user",
        edd_pass="pw",
        edd_vhost="/edd",
        port=5672,
        mgmt_user="bunny",
        mgmt_pass="pw",
        mgmt_port=15672,
    )
    kwargs[key] = f"secret{bad}value"
    with pytest.raises(ValueError, match=f"^{key}: holds a non-printable character") as info:
        edd_rabbitmq_settings(**kwargs)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("file_format", FORMATS)
def test_render_checks_a_dict_from_elsewhere_too(file_format):
    s = dict(settings("pw"), mgmt_pass="a\nb")
    with pytest.raises(ValueError, match="^mgmt_pass: "):
        render_edd_settings(s, file_format)
    with pytest.raises(ValueError, match="exactly"):
        render_edd_settings({k: v for k, v in settings("pw").items() if k != "port"}, file_format)


@pytest.mark.parametrize("port", [0, 65536, -1, True, "5672"])
def test_bad_ports_are_refused_naming_the_setting(port):
    with pytest.raises(ValueError, match="^mgmt_port: must be a port number"):
        edd_rabbitmq_settings(
            hostname="h",
            edd_user="u",
            edd_pass="p",
            edd_vhost="/edd",
            port=5672,
            mgmt_user="m",
            mgmt_pass="p",
            mgmt_port=port,
        )


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="'yaml'.*ini, json, env"):
        render_edd_settings(settings("pw"), "yaml")
