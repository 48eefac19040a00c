"""The same answers make the same CA, whichever way they reach the appliance.

Each unattended source (systemd credential, CASEED volume as ext4 and as ISO, OVF environment
CD, baked file) and --answers feed the real `ca-appliance setup` under Debian's python3; the
resulting ca.json files must agree once keys and paths that legitimately differ are removed.
"""

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
import yaml

from tests.helpers.volumes import ext4_volume, iso_volume

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "overlay/usr/bin/ca-appliance"
GUEST_PYTHON = "/usr/bin/python3"

ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF2pOt2K2QRFWGUOR45v0pfO5z0KpWOzxkTWPjkXuPOl a@b"
ANSWERS = {
    "hostname": "ca.lab.example",
    "network": {"mode": "static", "address": "192.168.70.10/24", "gateway": "192.168.70.1", "dns": ["192.168.70.1"]},
    "ca": {
        "name": "Lab CA",
        "dns_names": ["ca.lab.example", "192.168.70.10"],
        "address": ":8443",
        "provisioner": "admin@lab.example",
        "password": "same password for every source",
        "ssh": False,
    },
    "admin": {"ssh_authorized_keys": [ADMIN_KEY]},
}
ANSWERS_YAML = yaml.safe_dump(ANSWERS)


def ovf_environment(answers):
    """The answers as vSphere would pass them: one `ca-appliance.<key path>` property each."""
    properties = []

    def add(path, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{path}.{key}", inner)
            return
        if isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        properties.append(f"    <Property oe:key={quoteattr('ca-appliance' + path)} oe:value={quoteattr(value)}/>")

    add("", answers)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"\n'
        '     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="">\n'
        "  <PropertySection>\n" + "\n".join(properties) + "\n  </PropertySection>\n</Environment>\n"
    )


def put(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# Each source: how to present the answers (a context manager given tmp_path and the prefix).
@contextlib.contextmanager
def via_credentials_directory(tmp_path, prefix, env):
    put(tmp_path / "credentials/ca-appliance.answers", ANSWERS_YAML)
    env["CREDENTIALS_DIRECTORY"] = str(tmp_path / "credentials")
    yield []


@contextlib.contextmanager
def via_system_credential(tmp_path, prefix, env):
    put(prefix / "run/credentials/@system/ca-appliance.answers", json.dumps(ANSWERS))
    yield []


@contextlib.contextmanager
def via_caseed_ext4(tmp_path, prefix, env):
    with ext4_volume(tmp_path, "CASEED", {"ca-appliance.yaml": ANSWERS_YAML}):
        yield []


@contextlib.contextmanager
def via_caseed_iso(tmp_path, prefix, env):
    with iso_volume(tmp_path, "CASEED", {"ca-appliance.yaml": ANSWERS_YAML}):
        yield []


@contextlib.contextmanager
def via_ovf_environment_cd(tmp_path, prefix, env):
    with iso_volume(tmp_path, "OVFENV", {"ovf-env.xml": ovf_environment(ANSWERS)}):
        yield []


@contextlib.contextmanager
def via_baked_file(tmp_path, prefix, env):
    put(prefix / "etc/ca-appliance/answers.yaml", ANSWERS_YAML)
    yield []


@contextlib.contextmanager
def via_answers_option(tmp_path, prefix, env):
    put(tmp_path / "answers.yaml", ANSWERS_YAML)
    yield ["--answers", str(tmp_path / "answers.yaml")]


NEEDS_DEVICES = "loop devices need root and losetup"
SOURCES = [
    ("credential", via_credentials_directory, None),
    ("credential", via_system_credential, None),
    ("caseed", via_caseed_ext4, NEEDS_DEVICES),
    ("caseed", via_caseed_iso, NEEDS_DEVICES),
    ("ovf-env", via_ovf_environment_cd, NEEDS_DEVICES),
    ("baked", via_baked_file, None),
    ("answers-file", via_answers_option, None),
]


def devices_usable():
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in ("losetup", "mkfs.ext4", "xorriso"))


def comparable(prefix):
    """ca.json without what differs between two CAs made from the same answers."""
    config = json.loads((prefix / "etc/step-ca/config/ca.json").read_text().replace(str(prefix), "<prefix>"))
    for provisioner in config["authority"]["provisioners"]:
        provisioner.pop("key", None)  # each CA has its own provisioner key pair,
        provisioner.pop("encryptedKey", None)
        provisioner.pop("roots", None)  # and its own root certificate
    return config


@pytest.fixture(scope="module")
def made_cas(tmp_path_factory):
    """{source variant: (state.json, comparable ca.json)} for every variant that can run here."""
    if not Path(GUEST_PYTHON).exists():
        pytest.skip(f"{GUEST_PYTHON} (Debian's python3 with python3-yaml) runs the guest CLI")
    made = {}
    for expected_source, present, needs in SOURCES:
        if needs and not devices_usable():
            continue
        tmp_path = tmp_path_factory.mktemp(present.__name__)
        prefix = tmp_path / "root"
        env = {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}
        with present(tmp_path, prefix, env) as extra_args:
            result = subprocess.run(
                [GUEST_PYTHON, str(CLI), "setup", "--prefix", str(prefix), "--no-system", *extra_args],
                env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
            )
        assert result.returncode == 0, f"{present.__name__}: {result.stderr}"
        state = json.loads((prefix / "etc/ca-appliance/state.json").read_text())
        made[present.__name__] = (expected_source, state, comparable(prefix))
    return made


@pytest.mark.parametrize("present", [present for _, present, _ in SOURCES], ids=lambda present: present.__name__)
def test_each_source_is_found_and_recorded(made_cas, present):
    if present.__name__ not in made_cas:
        pytest.skip(f"{present.__name__}: {NEEDS_DEVICES}")
    expected_source, state, _ = made_cas[present.__name__]
    assert state["answers_source"].split(" ")[0] == expected_source


def test_every_source_makes_the_same_ca_json(made_cas):
    reference = made_cas["via_answers_option"][2]
    assert reference["dnsNames"] == ["ca.lab.example", "192.168.70.10"]
    assert reference["address"] == ":8443"
    for name, (_, _, config) in made_cas.items():
        assert config == reference, f"{name} made a different ca.json"


def test_baked_answers_are_removed_once_setup_has_completed(tmp_path):
    prefix = tmp_path / "root"
    baked = prefix / "etc/ca-appliance/answers.yaml"
    put(baked, ANSWERS_YAML)
    env = {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}
    result = subprocess.run([GUEST_PYTHON, str(CLI), "setup", "--prefix", str(prefix), "--no-system"],
                            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((prefix / "etc/ca-appliance/state.json").read_text())["answers_source"].startswith("baked")
    assert (prefix / "etc/ca-appliance/setup-complete").exists()
    assert not baked.exists()   # its one first boot is over: it does not linger in the image or a backup
