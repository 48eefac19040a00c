"""Unattended answers sources, found on real files, real loop devices and real ISO images."""

import os
import shutil
from pathlib import Path

import pytest
from ca_appliance.answers import AnswersError
from ca_appliance.sources import SourceError, find_unattended, parse_ovf_env

from tests.helpers.volumes import ext4_volume, iso_volume

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"

needs_loop_devices = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup"),
    reason="seed volumes are attached as loop devices, which needs root and losetup",
)
needs_xorriso = pytest.mark.skipif(not shutil.which("xorriso"), reason="xorriso (host-packages.txt) builds the ISOs")

OVF_ENV = """<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-42">
  <PlatformSection><Kind>VMware ESXi</Kind><Version>8.0.2</Version></PlatformSection>
  <PropertySection>
    <Property oe:key="ca-appliance.hostname" oe:value="ovf.lab.example"/>
    <Property oe:key="ca-appliance.network.mode" oe:value="static"/>
    <Property oe:key="ca-appliance.network.address" oe:value="192.168.70.10/24"/>
    <Property oe:key="ca-appliance.network.gateway" oe:value="192.168.70.1"/>
    <Property oe:key="ca-appliance.network.dns" oe:value="192.168.70.1, 1.1.1.1"/>
    <Property oe:key="ca-appliance.ca.name" oe:value="Lab CA"/>
    <Property oe:key="ca-appliance.ca.dns_names" oe:value="ovf.lab.example,192.168.70.10"/>
    <Property oe:key="ca-appliance.ca.ssh" oe:value="false"/>
    <Property oe:key="ca-appliance.ca.password" oe:value=""/>
    <Property oe:key="ca-appliance.ca.claims.acme.default" oe:value="24h"/>
    <Property oe:key="guestinfo.other" oe:value="not ours"/>
  </PropertySection>
  <ve:EthernetAdapterSection><ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network"/>
  </ve:EthernetAdapterSection>
</Environment>
"""
OVF_ENV_ANSWERS = {
    "hostname": "ovf.lab.example",
    "network": {
        "mode": "static",
        "address": "192.168.70.10/24",
        "gateway": "192.168.70.1",
        "dns": ["192.168.70.1", "1.1.1.1"],
    },
    "ca": {
        "name": "Lab CA",
        "dns_names": ["ovf.lab.example", "192.168.70.10"],
        "ssh": False,
        "claims": {"acme": {"default": "24h"}},
    },
}
OVF_ENV_NOTHING_SET = """<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1">
  <PropertySection><Property oe:key="ca-appliance.hostname" oe:value=""/>
    <Property oe:key="ca-appliance.network.mode" oe:value="dhcp"/>
    <Property oe:key="ca-appliance.ca.address" oe:value=":443"/></PropertySection></Environment>"""


@pytest.fixture(autouse=True)
def no_credentials_directory(monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def seed_mounts():
    return [line for line in Path("/proc/mounts").read_text().splitlines() if "ca-appliance-seed-" in line]


# ---- each source on its own ----


def test_nothing_present_means_no_unattended_answers(tmp_path):
    assert find_unattended(tmp_path) is None


def test_credential_from_the_units_credentials_directory(tmp_path, monkeypatch):
    write(tmp_path / "creds/ca-appliance.answers", "hostname: cred.lab.example\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert find_unattended(tmp_path / "root") == ({"hostname": "cred.lab.example"}, "credential")


def test_credential_from_the_system_credential_store(tmp_path):
    # Where PID 1 puts what QEMU passed by SMBIOS type 11 or fw_cfg.
    write(tmp_path / "run/credentials/@system/ca-appliance.answers", '{"ca": {"name": "JSON is YAML too"}}')
    assert find_unattended(tmp_path) == ({"ca": {"name": "JSON is YAML too"}}, "credential")


def test_baked_answers_file(tmp_path):
    write(tmp_path / "etc/ca-appliance/answers.yaml", "hostname: baked.lab.example\nca: {ssh: false}\n")
    assert find_unattended(tmp_path) == ({"hostname": "baked.lab.example", "ca": {"ssh": False}}, "baked")


@pytest.mark.parametrize("text", ["# all defaults\n", "", "{}\n"])
def test_empty_baked_answers_file_is_an_error_not_a_ca_from_the_defaults(tmp_path, text):
    write(tmp_path / "etc/ca-appliance/answers.yaml", text)
    with pytest.raises(SourceError, match="holds no answers"):
        find_unattended(tmp_path)


@needs_loop_devices
def test_seed_volume_labelled_caseed_is_read_and_unmounted(tmp_path):
    with ext4_volume(tmp_path, "CASEED", {"ca-appliance.yaml": "hostname: seed.lab.example\n"}):
        assert find_unattended(tmp_path) == ({"hostname": "seed.lab.example"}, "caseed")
        assert seed_mounts() == []


@needs_loop_devices
@needs_xorriso
@pytest.mark.parametrize("options", [("-J", "-r"), ("-r",), ("-J",)], ids=["joliet+rockridge", "rockridge", "joliet"])
def test_seed_iso_labelled_caseed_is_read_without_mounting(tmp_path, options):
    files = {"ca-appliance.yaml": "hostname: iso.lab.example\n"}
    with iso_volume(tmp_path, "CASEED", files, options):
        assert find_unattended(tmp_path) == ({"hostname": "iso.lab.example"}, "caseed")


@needs_loop_devices
@needs_xorriso
@pytest.mark.parametrize("options", [("-J", "-r"), ()], ids=["joliet+rockridge", "plain-iso9660"])
def test_ovf_environment_on_a_cdrom(tmp_path, options):
    with iso_volume(tmp_path, "OVFENV", {"ovf-env.xml": OVF_ENV}, options):
        assert find_unattended(tmp_path) == (OVF_ENV_ANSWERS, "ovf-env")


# ---- precedence ----


@needs_loop_devices
@needs_xorriso
def test_first_source_found_wins_in_the_documented_order(tmp_path, monkeypatch):
    write(tmp_path / "etc/ca-appliance/answers.yaml", "hostname: baked.lab.example\n")
    assert find_unattended(tmp_path)[1] == "baked"
    with iso_volume(tmp_path, "OVFENV", {"ovf-env.xml": OVF_ENV}):
        assert find_unattended(tmp_path)[1] == "ovf-env"
        with ext4_volume(tmp_path, "CASEED", {"ca-appliance.yaml": "hostname: seed.lab.example\n"}):
            assert find_unattended(tmp_path)[1] == "caseed"
            write(tmp_path / "creds/ca-appliance.answers", "hostname: cred.lab.example\n")
            monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
            assert find_unattended(tmp_path) == ({"hostname": "cred.lab.example"}, "credential")
    assert seed_mounts() == []


@needs_loop_devices
@needs_xorriso
def test_ovf_environment_without_values_is_not_a_source(tmp_path):
    # vSphere passes every declared property with the OVA's defaults filled in, and the hostname
    # (which has none) empty when the admin answered nothing: the next source or the wizard must run.
    write(tmp_path / "etc/ca-appliance/answers.yaml", "hostname: baked.lab.example\n")
    with iso_volume(tmp_path, "OVFENV", {"ovf-env.xml": OVF_ENV_NOTHING_SET}):
        assert find_unattended(tmp_path)[1] == "baked"


# ---- bad sources are reported, not skipped ----


@pytest.mark.parametrize(
    "text, problem",
    [("hostname: [unclosed\n", "is not valid YAML"), ("- a list\n- of things\n", "must be a YAML mapping")],
)
def test_bad_credential_is_reported_naming_the_source(tmp_path, monkeypatch, text, problem):
    write(tmp_path / "creds/ca-appliance.answers", text)
    write(tmp_path / "etc/ca-appliance/answers.yaml", "hostname: baked.lab.example\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    with pytest.raises(SourceError) as caught:
        find_unattended(tmp_path)
    assert isinstance(caught.value, AnswersError)  # callers catch one error type for all bad answers
    assert caught.value.key.startswith(f"credential {tmp_path / 'creds/ca-appliance.answers'}")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_baked_answers_are_reported(tmp_path):
    write(tmp_path / "etc/ca-appliance/answers.yaml", "ca: {name: 'unterminated\n")
    with pytest.raises(SourceError, match=r"^answers error: baked .*answers.yaml: <input> is not valid YAML at line"):
        find_unattended(tmp_path)


@needs_loop_devices
def test_seed_volume_without_the_answers_file_is_reported(tmp_path):
    with ext4_volume(tmp_path, "CASEED", {"README": "answers went missing\n"}) as device:
        with pytest.raises(SourceError) as caught:
            find_unattended(tmp_path)
    assert caught.value.key == f"caseed {device}:ca-appliance.yaml"
    assert "has no ca-appliance.yaml" in str(caught.value)
    assert seed_mounts() == []


@needs_loop_devices
@needs_xorriso
def test_unreadable_ovf_environment_is_reported(tmp_path):
    with iso_volume(tmp_path, "OVFENV", {"ovf-env.xml": "<Environment><PropertySection>"}):
        with pytest.raises(SourceError, match="is not a readable OVF environment"):
            find_unattended(tmp_path)


# ---- parse_ovf_env on its own (the OVA build round-trips it) ----


def test_parse_ovf_env_maps_properties_to_answers():
    assert parse_ovf_env(OVF_ENV) == OVF_ENV_ANSWERS


def test_parse_ovf_env_keeps_ssh_keys_and_words_as_given():
    document = """<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
         xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"><PropertySection>
      <Property oe:key="ca-appliance.admin.ssh_authorized_keys" oe:value="ssh-ed25519 AAAA a@b,ssh-rsa AAAB c@d"/>
      <Property oe:key="ca-appliance.ca.ssh" oe:value="TRUE"/>
      <Property oe:key="ca-appliance.ca.root_years" oe:value="20"/>
    </PropertySection></Environment>"""
    assert parse_ovf_env(document) == {
        "admin": {"ssh_authorized_keys": ["ssh-ed25519 AAAA a@b", "ssh-rsa AAAB c@d"]},
        "ca": {"ssh": True, "root_years": "20"},
    }


def test_parse_ovf_env_skips_empty_properties():
    assert parse_ovf_env(OVF_ENV_NOTHING_SET) == {"network": {"mode": "dhcp"}, "ca": {"address": ":443"}}
    assert parse_ovf_env('<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"/>') == {}

