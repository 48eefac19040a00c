"""Hostile and mistyped answers, from every source the appliance reads, through the real CLI.

Each case runs `ca-appliance setup --prefix DIR --no-system` under Debian's /usr/bin/python3 with
the answers arriving where they really arrive (an --answers file, a systemd credential, a baked
file in the image, a CASEED ext4 volume, an OVF environment CD) and expects: exit 2, one line on
stderr naming the key, no secret in any output, and nothing written under DIR.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.wizard import CLI, GUEST_PYTHON

from tests.helpers.volumes import SECRET, ext4_volume, iso_volume, needs_loop_devices

needs_xorriso = pytest.mark.skipif(not shutil.which("xorriso"), reason="xorriso (host-packages.txt) builds the ISOs")

# A 534-byte "billion laughs": with aliases allowed it expands to gigabytes.
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
) + "\n"

# (id, answers text, what the one line must contain)
HOSTILE_YAML = [
    ("syntax-error-on-a-password-line", f"hostname: ca.lab.example\nca:\n  password: {SECRET}: oops\n",
     "is not valid YAML at line 3, column"),
    ("alias-bomb", ALIAS_BOMB, "anchors and aliases"),
    ("duplicate-key", "hostname: a.lab.example\nhostname: b.lab.example\n", "appears twice"),
    ("oversized", "hostname: ca.lab.example\n" + "#" * 300_000 + "\n", "larger than"),
    ("empty", "# nothing but a comment\n", "holds no answers"),
    ("not-a-mapping", "- hostname\n- ca.lab.example\n", "must be a YAML mapping"),
    ("deep-nesting", "a: " + "[" * 40 + "]" * 40 + "\n", "nesting deeper"),
    ("unknown-key", "hostname: ca.lab.example\nca: {nmae: Lab CA}\n",
     "ca.nmae: <not shown> is an unknown key (did you mean ca.name?)"),
    # issue 21 item 4: a value is printed only when its key is declared non-secret
    ("restore-without-archive", f"restore: {{passphrase: {SECRET}}}\n", "must name a backup archive"),
    ("unknown-restore-key", f"restore: {{archive: old.tar, note: {SECRET}}}\n",
     "restore.note: <not shown> is an unknown key"),
    ("dsn-as-text", f"hostname: ca.lab.example\nca: {{database: 'stepca:{SECRET}@tcp(db:3306)/'}}\n",
     "ca.database: <hidden> must be one of"),
    ("dsn-under-unknown-key", f"hostname: ca.lab.example\nca: {{dsn: 'stepca:{SECRET}@tcp(db:3306)/'}}\n",
     "ca.dsn: <not shown> is an unknown key"),
    ("admin-password", f"hostname: ca.lab.example\nadmin: {{password: {SECRET}}}\n",
     "admin.password: <not shown> is an unknown key"),
    # item 9: numbers where lists belong crashed setup at every boot
    ("name-constraints-number", "hostname: ca.lab.example\nca: {name_constraints: {dns: 5, ip: 7}}\n",
     "ca.name_constraints.dns: 5 must be a list"),
    # item 11
    ("other-admin-user", "hostname: ca.lab.example\nadmin: {user: alice}\n",
     "admin.user: 'alice' must be this image's admin account ('admin')"),
    ("type-only-ssh-key",
     "hostname: ca.lab.example\nadmin: {ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5']}\n",
     "admin.ssh_authorized_keys"),
    ("repetitive-password", "hostname: ca.lab.example\nca: {password: Hunter2!Hunter2!}\n",
     "ca.password: <hidden> is not a usable password: it must not be a shorter text repeated"),
    ("hostname-over-64", f"hostname: {'a' * 61}.lab\n", "hostname: '" + "a" * 61 + ".lab' is not a fully"),
    ("mistyped-password-key", f"hostname: ca.lab.example\nca: {{pasword: {SECRET}}}\n", "did you mean ca.password?"),
    ("newline-in-hostname", 'hostname: "ca\\n.lab.example"\n', "hostname: 'ca\\n.lab.example'"),
    ("escape-in-ca-name", 'hostname: ca.lab.example\nca: {name: "Lab \\e[2J CA"}\n', "ca.name: 'Lab \\x1b[2J CA'"),
    ("duration-overflow", "hostname: ca.lab.example\nca: {claims: {jwk: {default: 744h, max: 2562048h}}}\n",
     "ca.claims.jwk.max"),
    ("ssh-port", 'hostname: ca.lab.example\nca: {address: ":22"}\n', "ca.address: ':22' must not use port 22"),
    ("zone-id", 'hostname: ca.lab.example\nca: {address: "[fe80::1%eth0]:443"}\n', "zone id"),
    ("short-password", "hostname: ca.lab.example\nca: {password: Hunter2}\n", "ca.password: <hidden>"),
    ("space-padded-password", f'hostname: ca.lab.example\nca: {{password: "{SECRET} "}}\n', "ca.password: <hidden>"),
    ("intermediate-outlives-root", "hostname: ca.lab.example\nca: {root_years: 2, intermediate_years: 5}\n",
     "ca.intermediate_years"),
]
SOURCE_SUBSET = ["syntax-error-on-a-password-line", "alias-bomb", "empty", "unknown-key", "short-password"]


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


def run_setup(prefix, *args, env=None):
    environment = {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}
    environment.update(env or {})
    return subprocess.run([GUEST_PYTHON, str(CLI), "setup", "--prefix", str(prefix), "--no-system", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=environment, timeout=120)


def assert_refused(result, prefix, expected, before):
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr and "Hunter2" not in result.stderr
    assert files_under(prefix) == before


def case(name):
    return next(item for item in HOSTILE_YAML if item[0] == name)


@pytest.mark.parametrize("name, text, expected", HOSTILE_YAML, ids=[item[0] for item in HOSTILE_YAML])
def test_answers_file(tmp_path, name, text, expected):
    prefix = tmp_path / "root"
    prefix.mkdir()
    answers = tmp_path / "answers.yaml"
    answers.write_text(text)
    assert_refused(run_setup(prefix, "--answers", str(answers)), prefix, expected, [])


@pytest.mark.parametrize("name", SOURCE_SUBSET)
def test_systemd_credential(tmp_path, name):
    _, text, expected = case(name)
    prefix = tmp_path / "root"
    prefix.mkdir()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ca-appliance.answers").write_text(text)
    result = run_setup(prefix, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert_refused(result, prefix, expected, [])
    assert "credential" in result.stderr


@pytest.mark.parametrize("name", SOURCE_SUBSET)
def test_baked_answers_in_the_image(tmp_path, name):
    _, text, expected = case(name)
    prefix = tmp_path / "root"
    baked = prefix / "etc/ca-appliance/answers.yaml"
    baked.parent.mkdir(parents=True)
    baked.write_text(text)
    before = files_under(prefix)
    result = run_setup(prefix)
    assert_refused(result, prefix, expected, before)
    assert "baked" in result.stderr


@needs_loop_devices
@pytest.mark.parametrize("name", ["alias-bomb", "escape-in-ca-name", "short-password"])
def test_caseed_volume(tmp_path, name):
    _, text, expected = case(name)
    prefix = tmp_path / "root"
    prefix.mkdir()
    with ext4_volume(tmp_path, "CASEED", {"ca-appliance.yaml": text}):
        result = run_setup(prefix)
    assert_refused(result, prefix, expected, [])
    assert "caseed" in result.stderr


@needs_loop_devices
@needs_xorriso
@pytest.mark.parametrize("name", ["oversized", "duplicate-key"])
def test_caseed_iso(tmp_path, name):
    # ISO seeds are read without mounting: the size cap applies before the file is read.
    _, text, expected = case(name)
    prefix = tmp_path / "root"
    prefix.mkdir()
    with iso_volume(tmp_path, "CASEED", {"ca-appliance.yaml": text}):
        result = run_setup(prefix)
    assert_refused(result, prefix, expected, [])
    assert "caseed" in result.stderr


OVF_ENVIRONMENT = """<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection>
    <Property oe:key="ca-appliance.hostname" oe:value="{hostname}"/>
    <Property oe:key="ca-appliance.{key}" oe:value="{value}"/>
  </PropertySection>
</Environment>
"""


@needs_loop_devices
@needs_xorriso
@pytest.mark.parametrize("hostname, key, value, expected", [
    ("ca&#10;.lab.example", "ca.name", "Lab CA", "hostname: 'ca\\n.lab.example'"),
    ("ca.lab.example", "ca.nmae", "Lab CA", "did you mean ca.name?"),
    ("ca.lab.example", "ca.address", ":22", "must not use port 22"),
    ("ca.lab.example", "ca.password", "Hunter2", "ca.password: <hidden>"),
], ids=["newline-in-hostname", "unknown-key", "ssh-port", "short-password"])
def test_ovf_environment(tmp_path, hostname, key, value, expected):
    prefix = tmp_path / "root"
    prefix.mkdir()
    document = OVF_ENVIRONMENT.format(hostname=hostname, key=key, value=value)
    with iso_volume(tmp_path, "OVFENV", {"ovf-env.xml": document}):
        result = run_setup(prefix)
    assert_refused(result, prefix, expected, [])
    assert "ovf-env" in result.stderr


@needs_loop_devices
@needs_xorriso
def test_ovf_environment_entity_bomb(tmp_path):
    # The XML twin of the YAML alias bomb: expat's amplification limit refuses it (expat >= 2.4).
    entities = '<!ENTITY a "xxxxxxxxxx">' + "".join(
        f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(9))
    document = (f'<?xml version="1.0"?><!DOCTYPE Environment [{entities}]>'
                '<Environment><Property key="ca-appliance.hostname" value="&j;"/></Environment>')
    prefix = tmp_path / "root"
    prefix.mkdir()
    with iso_volume(tmp_path, "OVFENV", {"ovf-env.xml": document}):
        result = run_setup(prefix)
    assert_refused(result, prefix, "is not a readable OVF environment", [])
