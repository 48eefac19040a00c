"""Unattended answers: the places a hypervisor, a seed volume or the build can leave them.

First found wins, in this order:
  credential  systemd credential `ca-appliance.answers` (QEMU/libvirt: SMBIOS type 11
              `io.systemd.credential:ca-appliance.answers=...` or fw_cfg
              `opt/io.systemd.credentials/ca-appliance.answers`; PID 1 imports both)
  caseed      `ca-appliance.yaml` on a volume labelled CASEED (ext4, vfat, ISO 9660...)
  ovf-env     the OVF environment (vSphere vApp properties `ca-appliance.<key path>`)
  baked       /etc/ca-appliance/answers.yaml, written into the image at build time
Every YAML source is parsed by answers.load_answers (safeyaml): an empty one is an error too.
A source that is present but unreadable raises SourceError rather than falling through,
so a typo in a seed never silently configures a CA from another source.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from . import safeyaml
from .answers import AnswersError, load_answers

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
    "admin.ssh_authorized_keys",
}
OVF_BOOLEAN_KEYS = {"ca.ssh"}
_OVF_NAMESPACE = "{http://schemas.dmtf.org/ovf/environment/1}"

ISO_SECTOR = 2048


class SourceError(AnswersError):
    """An unattended source that exists but can't be used (unreadable, not YAML, not a mapping)."""


def find_unattended(prefix=None):
    """(raw answers, source name) from the first unattended source present, or None."""
    root = Path(prefix) if prefix is not None else Path("/")
    for name, find in (
        ("credential", _find_credential),
        ("caseed", _find_seed_volume),
        ("ovf-env", _find_ovf_environment),
        ("baked", _find_baked),
    ):
        raw = find(root)
        if raw is not None:
            return raw, name
    return None


# ---- the four sources: each returns the raw answers dict, or None when absent ----


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


def _read_iso9660_file(device, file_name, where):
    """A file in an ISO 9660 image's top folder, as bytes, or None; no mount needed.

    Names are matched by Joliet, Rock Ridge and plain ISO names (OVF_ENV.XML;1 style)."""
    wanted = {file_name.lower(), file_name.lower().replace("-", "_")}
    try:
        with open(device, "rb") as image:
            for descriptor in _iso_volume_descriptors(image):
                joliet = descriptor[0] == 2
                root_record = descriptor[156:190]
                for name, extent, size in _iso_directory(image, root_record, joliet):
                    if name.lower() in wanted:
                        if size > safeyaml.MAX_BYTES:
                            raise SourceError(where, "<file>", f"is larger than {safeyaml.MAX_BYTES} bytes")
                        image.seek(extent * ISO_SECTOR)
                        return image.read(size)
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(where, device, f"can't be read: {error}") from None
    return None


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


def _iso_directory(image, record, joliet):
    """(name, extent sector, size) of each file in the directory a directory record points at."""
    extent = int.from_bytes(record[2:6], "little")
    size = int.from_bytes(record[10:14], "little")
    image.seek(extent * ISO_SECTOR)
    data = image.read(size)
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
        if entry[25] & 2 or raw_name in (b"\0", b"\1"):  # sub-folders, "." and ".."
            continue
        name = raw_name.decode("utf-16-be" if joliet else "latin-1").split(";")[0].rstrip(".")
        if not joliet:
            name = _rock_ridge_name(entry[33 + name_length + (1 - name_length % 2) :]) or name
        yield name, int.from_bytes(entry[2:6], "little"), int.from_bytes(entry[10:14], "little")


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
