"""One set of answer rules: `invoke render` (and build) refuses what the appliance's first boot would refuse.

The builder runs the guest's own validator (overlay ca_appliance.buildcheck) in a subprocess on the
ca/admin defaults it bakes and on the baked answers file; these tests drive the real `invoke render`.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).parent / "invoke"
SECRET = "Hunter2-never-shown-anywhere"
GUEST_LIB = ROOT / "overlay/usr/lib/ca-appliance"


def render(tmp_path, config: dict, answers_text: str | None = None):
    if answers_text is not None:
        answers = tmp_path / "baked-answers.yaml"
        answers.write_text(answers_text)
        config = {**config, "firstboot": {"mode": "unattended", "answers": str(answers)}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "render"
    result = subprocess.run([str(INVOKE), "render", "--config", str(path), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    return result, out


def assert_config_error(result, out, expected):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert SECRET not in result.stdout + result.stderr and "Hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("ca, expected", [
    ({"name": "x" * 60}, "config error: ca.name: '" + "x" * 60 + "' is not a PKI name: 1-48"),
    ({"root_years": 5, "intermediate_years": 10}, "config error: ca.intermediate_years: 10 must be"),
    ({"address": "host:443"}, "config error: ca.address: 'host:443' is not a listen address"),
    ({"address": ":22"}, "config error: ca.address: ':22' must not use port 22"),
    ({"name": "Lab \x1b[2J CA"}, "config error: ca.name: 'Lab \\x1b[2J CA' must not contain control characters"),
    ({"claims": {"jwk": {"default": "744h", "max": "2562048h"}}}, "config error: ca.claims.jwk.max: '2562048h'"),
], ids=["60-char-name", "intermediate-outlives-root", "host-address", "ssh-port", "escape-in-name",
        "duration-overflow"])
def test_render_refuses_ca_defaults_first_boot_would_refuse(tmp_path, ca, expected):
    result, out = render(tmp_path, {"ca": ca})
    assert_config_error(result, out, expected)


@pytest.mark.parametrize("answers_text, expected", [
    (f"hostname: ca.lab.example\nca: {{password: {SECRET}}}\n",
     "config error: firstboot.answers: ca.password: <hidden> must not be in a baked answers file"),
    (f"ca:\n  password: {SECRET}: oops\n", "is not valid YAML at line 2, column"),
    ("# all defaults\n", "holds no answers"),
    ("hostname: ca.lab.example\nca: {nmae: Lab CA}\n",
     "config error: firstboot.answers: ca.nmae: <not shown> is an unknown key (did you mean ca.name?)"),
    ('a: &a ["x","x"]\nb: [*a,*a]\n', "anchors and aliases"),
    ("hostname: ca.lab.example\nca: {intermediate_years: 20}\n", "firstboot.answers: ca.intermediate_years: 20"),
], ids=["password", "syntax-error-with-password", "empty", "unknown-key", "alias", "intermediate-outlives-root"])
def test_render_refuses_a_baked_answers_file_first_boot_would_refuse(tmp_path, answers_text, expected):
    result, out = render(tmp_path, {}, answers_text)
    assert_config_error(result, out, expected)


@pytest.mark.parametrize("answers_text, key", [
    (f"join: {{backup: node.tar, passphrase: {SECRET}}}\n", "join.passphrase"),
    (f"restore: {{archive: old.tar, passphrase: {SECRET}}}\n", "restore.passphrase"),
    (f"ca: {{database: {{type: mysql, dsn: 'stepca:{SECRET}@tcp(db:3306)/'}}}}\n", "ca.database.dsn"),
    (f"ca: {{database: 'stepca:{SECRET}@tcp(db:3306)/'}}\n", "ca.database"),
], ids=["join-passphrase", "restore-passphrase", "database-dsn", "dsn-as-text"])
def test_render_refuses_every_secret_key_in_a_baked_answers_file(tmp_path, answers_text, key):
    # Before: only ca.password was refused; every copy of the image carried the others.
    result, out = render(tmp_path, {}, "hostname: ca.lab.example\n" + answers_text)
    assert_config_error(result, out, f"config error: firstboot.answers: {key}: <hidden> must not be in a baked "
                                     "answers file")


@pytest.mark.parametrize("config, key", [
    ({"ca": {"password": SECRET}}, "ca.password"),
    ({"admin": {"password": SECRET}}, "admin.password"),
    ({"admin": {"password_hash": SECRET}}, "admin.password_hash"),
], ids=["ca-password", "admin-password", "plaintext-as-hash"])
def test_render_names_a_secret_build_key_without_echoing_it(tmp_path, config, key):
    # Before: "config error: ca.password: 'Hunter2-...' is an unknown key".
    result, out = render(tmp_path, config)
    assert_config_error(result, out, f"config error: {key}: ")


def test_render_accepts_good_baked_answers_and_bakes_them(tmp_path):
    result, out = render(tmp_path, {"ca": {"name": "x" * 48}}, "hostname: ca.lab.example\nca: {ssh: false}\n")
    assert result.returncode == 0, result.stderr
    assert (out / "ks.cfg").is_file()


def test_the_ova_max_len_of_ca_name_is_the_guests_limit():
    from ca_appliance import answers

    from image.config import guest_limits
    assert guest_limits()["ca_name_max"] == answers.MAX_CA_NAME


@pytest.mark.parametrize("text", [
    f'admin:\n  password_hash: "$6${SECRET}\n',
    f"ca:\n  name: {SECRET}: x\n",
    f"ca:\n  name: \"{SECRET}\\q\"\n",
], ids=["unterminated", "colon", "bad-escape"])
def test_a_yaml_error_in_the_build_config_gives_line_and_column_never_the_line(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = subprocess.run([str(INVOKE), "render", "--config", str(path), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_config_error(result, tmp_path / "out", "is not valid YAML at line ")
    assert ", column " in result.stderr


def test_the_host_runs_the_guest_rules_without_importing_guest_code():
    code = ("import sys; from image.config import load_config, guest_limits; load_config(); guest_limits(); "
            "assert not [m for m in sys.modules if m.startswith('ca_appliance')], 'guest code imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
