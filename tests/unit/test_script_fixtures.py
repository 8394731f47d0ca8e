"""The host scripts' cases from data: fixtures/<script>/*.json run through the shared runner
(tests/unit/script_fixtures.py); adding a case is adding a file."""

from __future__ import annotations

import pytest

from edd_infra.render import host_scripts
from edd_infra.render.host_scripts import FileSpec
from tests.unit.script_fixtures import cases, run_case


def _files(args: dict) -> dict:
    return {**args, "files": [FileSpec(**f) for f in args["files"]]} if "files" in args else args


RENDERERS = {
    "service_install": lambda a: host_scripts.service_install(manager="systemd", **a),
    "service_remove": lambda a: host_scripts.service_remove(manager="systemd", **a),
    "secret_files_install": lambda a: host_scripts.secret_files_install(**a),
    "account_create": lambda a: host_scripts.account_create(**a),
    "account_remove": lambda a: host_scripts.account_remove(**a),
    "broker_install": lambda a: host_scripts.broker_install(**_files(a)),
}
CASES = [(script, case) for script in RENDERERS for case in cases(script)]


@pytest.mark.parametrize("script, case_file", CASES, ids=[f"{s}/{c.stem}" for s, c in CASES])
def test_case(script, case_file, tmp_path):
    run_case(case_file, tmp_path, RENDERERS[script])


@pytest.mark.parametrize(
    "script, names",
    [
        ("service_install", {"fresh_host", "no_op", "changed_file", "failed_health_check_rolls_back"}),
        ("service_remove", {"installed", "already_gone"}),
        ("secret_files_install", {"fresh_host", "no_op", "changed_file", "failed_restart_rolls_back"}),
        ("account_create", {"fresh_host", "no_op", "missing_group_fails"}),
        ("account_remove", {"created_here", "existed_before"}),
        (
            "broker_install",
            {
                "fresh_host",
                "no_op",
                "changed_config_restarts",
                "refused_downgrade",
                "refused_skipped_series",
                "failed_install_rolls_back",
            },
        ),
    ],
)
def test_the_cases_cover_fresh_host_no_op_change_and_failure(script, names):
    assert names <= {c.stem for c in cases(script)}
