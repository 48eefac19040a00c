"""Unattended answers: the places a hypervisor, a seed volume or the build can leave them.

First found wins, in this order (UNATTENDED_SOURCES):
  credential  systemd credential `ca-appliance.answers` (QEMU/libvirt: SMBIOS type 11
              `io.systemd.credential:ca-appliance.answers=...` or fw_cfg
              `opt/io.systemd.credentials/ca-appliance.answers`; PID 1 imports both)
  caseed      `ca-appliance.yaml` on a volume labelled CASEED (ext4, vfat, ISO 9660...)
  cidata      a cloud-init NoCloud volume labelled cidata/CIDATA (Proxmox VE, Hyper-V's DVD, any
              `cloud-localds` ISO): `ca-appliance.yaml` on it, else the `ca_appliance:` mapping of a
              `#cloud-config` user-data; meta-data's local-hostname and a network-config fill in the
              hostname and network when those answers have none
  config-2    an OpenStack config drive labelled config-2/CONFIG-2, read the same way from
              openstack/latest/user_data and meta_data.json (OpenStack's network comes by DHCP)
  ovf-env     the OVF environment (vSphere vApp properties `ca-appliance.<key path>`)
  baked       /etc/ca-appliance/answers.yaml, written into the image at build time
Why this order: a systemd credential and a CASEED volume exist only for this appliance, so they are
the most deliberate; a cloud-init seed is attached per VM but is the generic format a platform may
write for any guest; the OVF environment is present on every vApp (with defaults filled in); the
baked file is the image's own fallback. A cidata/config-2 volume with neither ca-appliance.yaml nor
a `ca_appliance:` mapping is a seed for other software, not answers, and is passed over.
Every YAML source is parsed by answers.load_answers (safeyaml): an empty one is an error too.
A source that is present but unreadable raises SourceError rather than falling through,
so a typo in a seed never silently configures a CA from another source.
The appliance runs nothing from a seed: a user-data that is a script, MIME multi-part, compressed,
or a cloud-config asking to run commands is refused, as is a network-config the appliance's
network answers cannot express. Volumes are read without mounting (ISO 9660) or mounted
read-only, nosuid, nodev, noexec.
"""

import contextlib
import difflib
import functools
import ipaddress
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from . import safeyaml
from .answers import AnswersError, check_fqdn, check_network, load_answers

CREDENTIAL_NAME = "ca-appliance.answers"
# Where PID 1 keeps the system credentials it imported (SMBIOS, fw_cfg, kernel command line).
SYSTEM_CREDENTIALS_DIR = Path("run/credentials/@system")
SEED_LABEL = "CASEED"
SEED_FILE_NAME = "ca-appliance.yaml"
OVF_ENV_FILE_NAME = "ovf-env.xml"
OVF_PROPERTY_PREFIX = "ca-appliance."
BAKED_ANSWERS = Path("etc/ca-appliance/answers.yaml")

# OVF properties are strings; these answers are lists (comma-separated) or booleans.
OVF_LIST_KEYS = {
    "ca.dns_names",
    "ca.name_constraints.dns",
    "ca.name_constraints.ip",
    "network.dns",
    "network.ntp",
    "admin.ssh_authorized_keys",
}
OVF_BOOLEAN_KEYS = {"ca.ssh"}
_OVF_NAMESPACE = "{http://schemas.dmtf.org/ovf/environment/1}"

ISO_SECTOR = 2048


class SourceError(AnswersError):
    """An unattended source that exists but can't be used (unreadable, not YAML, not a mapping, a
    script, a network-config beyond the appliance's): key is where, value a placeholder, a device or
    a seed's non-secret structure (a header, an address), never an answer's value."""

    names_a_source = True


def find_unattended(prefix=None):
    """(raw answers, source name) from the first unattended source present, or None."""
    root = Path(prefix) if prefix is not None else Path("/")
    for name, find in UNATTENDED_SOURCES:
        raw = find(root)
        if raw is not None:
            return raw, name
    return None


# ---- the sources: each returns the raw answers dict, or None when absent ----


def _find_credential(root):
    candidates = []
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    # Run by hand (not from the first-boot unit): read PID 1's store directly.
    candidates.append(root / SYSTEM_CREDENTIALS_DIR / CREDENTIAL_NAME)
    for path in candidates:
        if path.is_file():
            return _parse_yaml_answers(_read_bytes(path, "credential"), f"credential {path}")
    return None


def _find_seed_volume(root):
    devices = _block_devices_with("LABEL", SEED_LABEL)
    if not devices:
        return None
    device = devices[0]
    where = f"caseed {device}:{SEED_FILE_NAME}"
    if _filesystem_type(device) == "iso9660":
        # Read ISO seeds directly: no mount, so no isofs module or cleanup needed.
        text = _read_iso9660_file(device, SEED_FILE_NAME, where)
    else:
        with _mounted_read_only(device, where) as mountpoint:
            path = mountpoint / SEED_FILE_NAME
            text = _read_bytes(path, where) if path.is_file() else None
    if text is None:
        raise SourceError(where, "<missing>", f"volume labelled {SEED_LABEL} has no {SEED_FILE_NAME} in its top folder")
    return _parse_yaml_answers(text, where)


def _find_ovf_environment(root):
    for text, where in _ovf_environment_documents():
        if len(text) > safeyaml.MAX_BYTES:
            raise SourceError(where, "<xml>", f"is larger than {safeyaml.MAX_BYTES} bytes")
        try:
            raw = parse_ovf_env(text)
        except ElementTree.ParseError as error:
            raise SourceError(where, "<xml>", f"is not a readable OVF environment: {error}") from None
        # vSphere lists every declared property with its default filled in; the OVA leaves only
        # the hostname without a default, so a hostname is what says the deployer answered.
        if raw.get("hostname"):
            return raw
    return None


def _find_baked(root):
    path = root / BAKED_ANSWERS
    if not path.is_file():
        return None
    return _parse_yaml_answers(_read_bytes(path, "baked"), f"baked {path}")


# ---- cloud-init seeds (NoCloud cidata, OpenStack config-2), read without cloud-init ----


class CloudSeed:
    """Where one kind of cloud-init seed keeps its files (paths relative to the volume's top)."""

    def __init__(self, name, labels, user_data, meta_data, network_config):
        self.name = name
        self.labels = labels
        self.user_data = user_data
        self.meta_data = meta_data
        self.network_config = network_config


# cloud-init itself looks for these labels in upper and lower case.
NOCLOUD = CloudSeed("cidata", ("cidata", "CIDATA"), "user-data", "meta-data", "network-config")
CONFIG_DRIVE = CloudSeed("config-2", ("config-2", "CONFIG-2"), "openstack/latest/user_data",
                         "openstack/latest/meta_data.json", None)
CLOUD_CONFIG_KEY = "ca_appliance"
# cloud-config keys that ask for commands to be run: the appliance runs none from a seed.
COMMAND_KEYS = ("runcmd", "bootcmd")
NO_SCRIPTS = ("the appliance runs nothing from a seed: give a #cloud-config document with a "
              f"{CLOUD_CONFIG_KEY}: mapping, or {SEED_FILE_NAME} on the volume")
NETWORK_SUBSET = ("is more than the appliance's network answers can express (DHCP, or one static IPv4 "
                  "address/prefix with a gateway and DNS servers, on its one interface): put network: "
                  f"in {CLOUD_CONFIG_KEY}: instead, and network-config is not read")


def _find_cloud_seed(kind, root):
    devices = sorted({device for label in kind.labels for device in _block_devices_with("LABEL", label)})
    if not devices:
        return None
    device = devices[0]
    where = f"{kind.name} {device}"
    with _volume_reader(device, where) as read:
        seed_file = read(SEED_FILE_NAME)
        user_data = read(kind.user_data)
        meta_data = read(kind.meta_data)
        network_config = read(kind.network_config) if kind.network_config else None
    # The user-data is checked even next to ca-appliance.yaml: a script in it must not look as if it ran.
    cloud_config = parse_user_data(user_data, f"{where}:{kind.user_data}") if user_data is not None else None
    if seed_file is not None:
        raw = _parse_yaml_answers(seed_file, f"{where}:{SEED_FILE_NAME}")
    elif cloud_config is not None and CLOUD_CONFIG_KEY in cloud_config:
        raw = cloud_config[CLOUD_CONFIG_KEY]
        if not isinstance(raw, dict) or not raw:
            raise SourceError(f"{where}:{kind.user_data} {CLOUD_CONFIG_KEY}", "{...}" if raw else raw,
                              "must be a non-empty mapping of answers (hostname, network, ca, admin)")
        raw = dict(raw)
    else:
        return None
    if raw.get("hostname") is None and meta_data is not None:
        hostname = hostname_from_meta_data(meta_data, f"{where}:{kind.meta_data}")
        if hostname is not None:
            raw["hostname"] = hostname
    if raw.get("network") is None and network_config is not None:
        network = network_from_config(network_config, f"{where}:{kind.network_config}")
        if network is not None:
            raw["network"] = network
    return raw


def parse_user_data(data, where):
    """The mapping of a #cloud-config user-data ({} when empty); SourceError for any other kind."""
    if data[:2] == b"\x1f\x8b":
        raise SourceError(where, "<gzip>", f"is compressed user-data; {NO_SCRIPTS}")
    text = data.decode("utf-8", "replace")
    if not text.strip():
        return {}
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    header = first.split(None, 1)[0] if first else ""
    if first.startswith("#!"):
        raise SourceError(where, "#!", f"is a script; {NO_SCRIPTS}")
    if header.lower() in ("content-type:", "mime-version:"):
        raise SourceError(where, "<MIME>", f"is a multi-part MIME document; {NO_SCRIPTS}")
    if header != "#cloud-config":
        shown_header = header[:40] if header.startswith("#") else "<text>"
        raise SourceError(where, shown_header, f"is not a #cloud-config document; {NO_SCRIPTS}")
    document = safeyaml_mapping(data, where)
    for key in COMMAND_KEYS:
        if key in document:
            raise SourceError(f"{where} {key}", "[...]", f"asks to run commands; {NO_SCRIPTS}")
    if CLOUD_CONFIG_KEY not in document:
        close = difflib.get_close_matches(CLOUD_CONFIG_KEY, [str(key) for key in document], n=1, cutoff=0.8)
        if close:
            raise SourceError(f"{where} {close[0]}", "{...}", f"is not a key the appliance reads "
                                                            f"(did you mean {CLOUD_CONFIG_KEY}?)")
    return document


def safeyaml_mapping(data, where):
    """A YAML (or JSON) mapping through the one strict loader; {} when empty."""
    try:
        document = safeyaml.loads(data, where)
    except safeyaml.YAMLInputError as problem:
        raise SourceError(where, "<input>", problem.message) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise SourceError(where, f"<{type(document).__name__}>", "must be a YAML mapping")
    return document


def hostname_from_meta_data(data, where):
    """meta-data's local-hostname (NoCloud) or hostname (NoCloud, OpenStack), checked as a FQDN."""
    meta = safeyaml_mapping(data, where)
    for key in ("local-hostname", "hostname"):
        if meta.get(key) is not None:
            try:
                return check_fqdn(meta[key], f"{where} {key}")
            except AnswersError as error:
                raise SourceError(error.key, error.value, error.message + "; or give hostname: in the answers") \
                    from None
    return None


def network_from_config(data, where):
    """The appliance's network answers from a cloud-init network-config (version 1 or 2), or None
    when it configures no address (the appliance's default, DHCP, then applies)."""
    document = safeyaml_mapping(data, where)
    if set(document) == {"network"}:  # cloud-init also takes the document under a network: key
        document = document["network"]
        if not isinstance(document, dict):
            raise SourceError(f"{where} network", document, "must be a mapping")
    if document.get("config") == "disabled":
        return None
    version = document.get("version")
    if version == 1:
        network = _network_v1(document, where)
    elif version == 2:
        network = _network_v2(document, where)
    else:
        raise SourceError(f"{where} version", version, "must be 1 or 2 (cloud-init network-config)")
    if network is None:
        return None
    try:
        return check_network(network, where)
    except AnswersError as error:
        raise SourceError(error.key, error.value, error.message) from None


def _inexpressible(where, path, value):
    raise SourceError(f"{where} {path}", "{...}" if isinstance(value, (dict, list)) else value, NETWORK_SUBSET)


def _only_keys(mapping, allowed, where, path):
    if not isinstance(mapping, dict):
        raise SourceError(f"{where} {path}", "{...}" if isinstance(mapping, list) else mapping, "must be a mapping")
    for key in mapping:
        if key not in allowed:
            _inexpressible(where, f"{path}.{key}" if path else str(key), mapping[key])


def _address_list(value, where, path):
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise SourceError(f"{where} {path}", "{...}", "must be a list of addresses")
    return items


def _no_search_domains(value, where, path):
    if value:
        _inexpressible(where, path, value)


def _network_v1(document, where):
    _only_keys(document, ("version", "config"), where, "")
    entries = document.get("config")
    if not isinstance(entries, list):
        raise SourceError(f"{where} config", "{...}", "must be a list (network-config version 1)")
    physical, dns = [], []
    for index, entry in enumerate(entries):
        path = f"config[{index}]"
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind == "physical":
            _only_keys(entry, ("type", "name", "mac_address", "subnets"), where, path)
            physical.append((path, entry))
        elif kind == "nameserver":
            _only_keys(entry, ("type", "address", "search"), where, path)
            dns += _address_list(entry.get("address"), where, f"{path}.address")
            _no_search_domains(entry.get("search"), where, f"{path}.search")
        else:
            _inexpressible(where, f"{path}.type", kind)
    if len(physical) > 1:
        _inexpressible(where, physical[1][0], physical[1][1].get("name"))
    subnets = physical[0][1].get("subnets") if physical else None
    if not subnets:
        if dns:
            _inexpressible(where, "config (nameserver without an address)", dns)
        return None
    path = f"{physical[0][0]}.subnets"
    if not isinstance(subnets, list):
        raise SourceError(f"{where} {path}", "{...}", "must be a list")
    if len(subnets) > 1:
        _inexpressible(where, f"{path}[1]", subnets[1])
    subnet, path = subnets[0], f"{path}[0]"
    kind = subnet.get("type") if isinstance(subnet, dict) else None
    if kind in ("dhcp", "dhcp4"):
        _only_keys(subnet, ("type",), where, path)
        if dns:
            _inexpressible(where, "config (DNS servers with DHCP)", dns)
        return {"mode": "dhcp"}
    if kind != "static":
        _inexpressible(where, f"{path}.type", kind)
    _only_keys(subnet, ("type", "address", "netmask", "gateway", "dns_nameservers", "dns_search"), where, path)
    _no_search_domains(subnet.get("dns_search"), where, f"{path}.dns_search")
    address = subnet.get("address")
    if isinstance(address, str) and "/" not in address and subnet.get("netmask") is not None:
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{subnet['netmask']}").prefixlen
        except ValueError:
            raise SourceError(f"{where} {path}.netmask", subnet["netmask"],
                              "is not an IPv4 netmask (e.g. 255.255.255.0)") from None
        address = f"{address}/{prefix}"
    elif subnet.get("netmask") is not None:
        _inexpressible(where, f"{path}.netmask", subnet["netmask"])
    dns = _address_list(subnet.get("dns_nameservers"), where, f"{path}.dns_nameservers") + dns
    return {"mode": "static", "address": address, "gateway": subnet.get("gateway"),
            "dns": list(dict.fromkeys(dns))}


def _network_v2(document, where):
    _only_keys(document, ("version", "renderer", "ethernets"), where, "")
    ethernets = document.get("ethernets") or {}
    if not isinstance(ethernets, dict):
        raise SourceError(f"{where} ethernets", "{...}", "must be a mapping of interfaces")
    if not ethernets:
        return None
    if len(ethernets) > 1:
        _inexpressible(where, f"ethernets.{sorted(ethernets, key=str)[1]}", "{...}")
    name, interface = next(iter(ethernets.items()))
    path = f"ethernets.{name}"
    _only_keys(interface, ("match", "set-name", "dhcp4", "dhcp6", "addresses", "gateway4", "routes",
                           "nameservers"), where, path)
    if interface.get("dhcp6"):
        _inexpressible(where, f"{path}.dhcp6", interface["dhcp6"])
    nameservers = interface.get("nameservers") or {}
    _only_keys(nameservers, ("addresses", "search"), where, f"{path}.nameservers")
    _no_search_domains(nameservers.get("search"), where, f"{path}.nameservers.search")
    dns = _address_list(nameservers.get("addresses"), where, f"{path}.nameservers.addresses")
    addresses = _address_list(interface.get("addresses"), where, f"{path}.addresses")
    if interface.get("dhcp4") is True:
        for key in ("addresses", "gateway4", "routes", "nameservers"):
            if interface.get(key):
                _inexpressible(where, f"{path}.{key} (with dhcp4)", interface[key])
        return {"mode": "dhcp"}
    if not addresses:
        if interface.get("gateway4") or interface.get("routes") or dns:
            _inexpressible(where, f"{path} (a gateway or DNS without an address)", "{...}")
        return None
    if len(addresses) > 1:
        _inexpressible(where, f"{path}.addresses[1]", addresses[1])
    gateway = interface.get("gateway4")
    routes = interface.get("routes") or []
    if routes:
        if gateway is not None or not isinstance(routes, list) or len(routes) != 1:
            _inexpressible(where, f"{path}.routes", routes)
        route = routes[0]
        _only_keys(route, ("to", "via"), where, f"{path}.routes[0]")
        if route.get("to") not in ("default", "0.0.0.0/0"):
            _inexpressible(where, f"{path}.routes[0].to", route.get("to"))
        gateway = route.get("via")
    return {"mode": "static", "address": addresses[0], "gateway": gateway, "dns": dns}


# ---- the order (documented at the top) ----


UNATTENDED_SOURCES = (
    ("credential", _find_credential),
    ("caseed", _find_seed_volume),
    ("cidata", functools.partial(_find_cloud_seed, NOCLOUD)),
    ("config-2", functools.partial(_find_cloud_seed, CONFIG_DRIVE)),
    ("ovf-env", _find_ovf_environment),
    ("baked", _find_baked),
)


# ---- the OVF environment ----


def parse_ovf_env(xml_text):
    """Answers from an OVF environment document's `ca-appliance.*` properties (empty values skipped)."""
    document = ElementTree.fromstring(xml_text)
    raw = {}
    for element in document.iter():
        if element.tag.rpartition("}")[2] != "Property":
            continue
        key = element.get(f"{_OVF_NAMESPACE}key", element.get("key", ""))
        value = element.get(f"{_OVF_NAMESPACE}value", element.get("value", ""))
        if not key.startswith(OVF_PROPERTY_PREFIX) or not value.strip():
            continue
        path = key[len(OVF_PROPERTY_PREFIX) :]
        _set_dotted(raw, path, _ovf_value(path, value.strip()))
    return raw


def _ovf_value(path, value):
    if path in OVF_LIST_KEYS:
        return [item.strip() for item in value.split(",") if item.strip()]
    if path in OVF_BOOLEAN_KEYS and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _set_dotted(tree, path, value):
    *parents, leaf = path.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    tree[leaf] = value


def _ovf_environment_documents():
    """OVF environment documents: vmtoolsd's guestinfo first, then ovf-env.xml on any CD."""
    if shutil.which("vmtoolsd"):
        result = subprocess.run(
            ["vmtoolsd", "--cmd", "info-get guestinfo.ovfEnv"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            yield result.stdout, "ovf-env guestinfo.ovfEnv"
    for device in _block_devices_with("TYPE", "iso9660"):
        where = f"ovf-env {device}:{OVF_ENV_FILE_NAME}"
        text = _read_iso9660_file(device, OVF_ENV_FILE_NAME, where)
        if text is not None:
            yield text, where


# ---- helpers ----


def _read_bytes(path, where):
    """At most MAX_BYTES + 1 bytes: an oversized source is refused without reading it whole."""
    try:
        with open(path, "rb") as handle:
            return handle.read(safeyaml.MAX_BYTES + 1)
    except OSError as error:
        raise SourceError(where, str(path), f"can't be read ({error.strerror})") from None


def _parse_yaml_answers(data, where):
    """answers.load_answers (the one parser for every source), raising SourceError."""
    return load_answers(data, where, error=SourceError)


def _blkid(*args):
    """blkid without its cache (a stale cache names devices that changed since)."""
    if not shutil.which("blkid"):
        return []
    result = subprocess.run(["blkid", "-c", "/dev/null", *args], capture_output=True, text=True, check=False)
    return result.stdout.split() if result.returncode == 0 else []


def _block_devices_with(tag, value):
    return sorted(_blkid("-o", "device", "-t", f"{tag}={value}"))


def _filesystem_type(device):
    found = _blkid("-o", "value", "-s", "TYPE", device)
    return found[0] if found else None


@contextlib.contextmanager
def _mounted_read_only(device, where):
    mountpoint = Path(tempfile.mkdtemp(prefix="ca-appliance-seed-"))
    try:
        # Whatever the volume holds, nothing on it runs or acts as a device.
        result = subprocess.run(["mount", "-o", "ro,nosuid,nodev,noexec", device, str(mountpoint)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            detail = " ".join(result.stderr.split())
            raise SourceError(where, device, f"can't be mounted read-only: {detail}")
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


@contextlib.contextmanager
def _volume_reader(device, where):
    """read(path below the volume's top) -> bytes or None: ISO 9660 read directly, anything else
    mounted read-only, nosuid, nodev, noexec for the duration."""
    if _filesystem_type(device) == "iso9660":
        yield lambda relative: _read_iso9660_file(device, relative, f"{where}:{relative}")
    else:
        with _mounted_read_only(device, where) as mountpoint:
            yield lambda relative: _read_mounted_file(mountpoint, relative, f"{where}:{relative}")


def _read_mounted_file(mountpoint, relative, where):
    path = mountpoint / relative
    if not path.is_file():
        return None
    if not path.resolve().is_relative_to(mountpoint.resolve()):
        raise SourceError(where, "<link>", "is a symbolic link out of the volume: give the file itself")
    return _read_bytes(path, where)


def _read_iso9660_file(device, file_name, where):
    """A file in an ISO 9660 image (a path below its top folder, e.g. openstack/latest/user_data),
    as bytes, or None; no mount needed.

    Names are matched by Joliet, Rock Ridge and plain ISO names (OVF_ENV.XML;1 style)."""
    *folders, leaf = file_name.split("/")
    try:
        with open(device, "rb") as image:
            for descriptor in _iso_volume_descriptors(image):
                joliet = descriptor[0] == 2
                root_record = descriptor[156:190]
                extent, size = _extent_and_size(root_record)
                for folder in folders:
                    found = _iso_entry(image, extent, size, joliet, folder, directory=True)
                    if found is None:
                        break
                    extent, size = found
                else:
                    found = _iso_entry(image, extent, size, joliet, leaf, directory=False)
                    if found is not None:
                        extent, size = found
                        if size > safeyaml.MAX_BYTES:
                            raise SourceError(where, "<file>", f"is larger than {safeyaml.MAX_BYTES} bytes")
                        image.seek(extent * ISO_SECTOR)
                        return image.read(size)
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(where, device, f"can't be read: {error}") from None
    return None


def _iso_entry(image, extent, size, joliet, wanted_name, directory):
    """(extent, size) of the file or folder named wanted_name in a directory, or None."""
    wanted = {wanted_name.lower(), wanted_name.lower().replace("-", "_")}
    for name, entry_extent, entry_size, is_directory in _iso_directory(image, extent, size, joliet):
        if is_directory == directory and name.lower() in wanted:
            return entry_extent, entry_size
    return None


def _extent_and_size(record):
    return int.from_bytes(record[2:6], "little"), int.from_bytes(record[10:14], "little")


def _iso_volume_descriptors(image):
    """Primary (type 1) and Joliet supplementary (type 2) volume descriptors, Joliet first."""
    found = []
    for sector in range(16, 64):
        image.seek(sector * ISO_SECTOR)
        descriptor = image.read(ISO_SECTOR)
        if len(descriptor) < ISO_SECTOR or descriptor[1:6] != b"CD001" or descriptor[0] == 255:
            break
        if descriptor[0] == 2 and descriptor[88:91] in (b"%/@", b"%/C", b"%/E"):
            found.insert(0, descriptor)
        elif descriptor[0] == 1:
            found.append(descriptor)
    return found


def _iso_directory(image, extent, size, joliet):
    """(name, extent sector, size, is a folder) of each entry of the directory at extent."""
    image.seek(extent * ISO_SECTOR)
    data = image.read(min(size, safeyaml.MAX_BYTES))  # a seed's folders are a few sectors
    offset = 0
    while offset < len(data):
        length = data[offset]
        if length == 0:  # records don't cross sectors: the rest of this one is padding
            offset = (offset // ISO_SECTOR + 1) * ISO_SECTOR
            continue
        entry = data[offset : offset + length]
        offset += length
        name_length = entry[32]
        raw_name = entry[33 : 33 + name_length]
        if raw_name in (b"\0", b"\1"):  # "." and ".."
            continue
        name = raw_name.decode("utf-16-be" if joliet else "latin-1").split(";")[0].rstrip(".")
        if not joliet:
            name = _rock_ridge_name(entry[33 + name_length + (1 - name_length % 2) :]) or name
        extent_here, size_here = _extent_and_size(entry)
        yield name, extent_here, size_here, bool(entry[25] & 2)


def _rock_ridge_name(system_use):
    """The Rock Ridge (NM) long name in a directory record's system use area, if any."""
    name = b""
    offset = 0
    while offset + 4 <= len(system_use):
        signature, length = system_use[offset : offset + 2], system_use[offset + 2]
        if length < 4:
            break
        if signature == b"NM":
            name += system_use[offset + 5 : offset + length]
        offset += length
    return name.decode("utf-8", "replace") if name else None
