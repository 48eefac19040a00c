"""VMDK and OVA export: what VirtualBox, vSphere/ESXi (ovftool) and virt-v2v (libvirt) import.

The choices below were checked against the importers, not just the OVF specification:
- OVF 1.0 envelope namespace (virt-v2v finds no disks with the 2.0 one); sections in the order
  References, DiskSection, NetworkSection, VirtualSystem; VMware extensions after all Items.
- The disk is a streamOptimized VMDK with ddb.toolsVersion set: vSphere refuses guest
  customisation of a disk that claims no VMware Tools.
- The OVA is a plain ustar archive (GNU headers only for a member of 8 GiB or more), the .ovf
  first, then the .mf, then the disk, then the .cert: VirtualBox and ovftool reject PAX headers
  and read the descriptor and manifest before the disk.
- The manifest says `SHA256(name)= hex`, the only spelling vSphere accepts.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from image.bases import get_base
from image.config import guest_limits
from image.errors import UserError
from image.files import sha256_file

# ESXi 6.5 and later. Candidate config key: ova.virtual_system_type (requested from the lead).
# VMware's "guest managed" marker: tools come from the distribution (open-vm-tools).
VMWARE_TOOLS_VERSION = "2147483647"
NETWORK_NAME = "VM Network"
# The boot disk's controller (ResourceType, ResourceSubType) and the NIC: drivers the boot matrix proves
# (image.vm.qemu.HARDWARE "virtualbox": AHCI SATA and e1000). VirtualBox, vSphere and virt-v2v all read
# vmware.sata.ahci; vSphere's E1000 (82545EM) and VirtualBox's (82540EM) both run on Linux's e1000.
DISK_CONTROLLER = (20, "vmware.sata.ahci")
NIC = "E1000"
DISK_ID = "vmdisk1"
TEST_IMAGE_MARK = "TEST IMAGE, not for production"

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
OVF_ENV_NS = "http://schemas.dmtf.org/ovf/environment/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW_NS = "http://www.vmware.com/schema/ovf"
VMW_ENV_NS = "http://www.vmware.com/schema/ovfenv"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
for _prefix, _uri in (("ovf", OVF_NS), ("rasd", RASD_NS), ("vssd", VSSD_NS), ("vmw", VMW_NS), ("xsi", XSI_NS),
                      ("oe", OVF_ENV_NS), ("ve", VMW_ENV_NS)):
    ET.register_namespace(_prefix, _uri)

USTAR_MAX_SIZE = 8 * 1024**3 - 1  # 11 octal digits in a ustar size field
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK


@dataclass(frozen=True)
class Property:
    """One first-boot answer offered as a vApp property (`ca-appliance.<answers key path>`)."""
    key: str
    label: str
    description: str
    category: str
    qualifiers: str = ""
    type: str = "string"

    @property
    def password(self) -> bool:
        """Entered as a password (vSphere hides it) when the one answers schema calls the key secret."""
        from image.config import ANSWERS_SCHEMA
        return ANSWERS_SCHEMA["keys"][self.key].get("secret") is True


def _choices(*values: str) -> str:
    return "ValueMap{" + ",".join(f'"{v}"' for v in values) + "}"


# The first-boot answers (README "First boot"); lists are comma-separated, as the guest's sources.py reads them.
PROPERTIES = (
    Property("hostname", "Host name", "Fully qualified host name of the appliance, e.g. ca.lab.example. "
             "Empty: ask on the console at first boot.", "Network", "MaxLen(253)"),
    Property("network.mode", "Network mode", "dhcp, or static with the address, gateway and DNS below.",
             "Network", _choices("dhcp", "static")),
    Property("network.address", "Static address", "IPv4 address with prefix length, e.g. 192.168.70.10/24.",
             "Network", "MaxLen(18)"),
    Property("network.gateway", "Static gateway", "IPv4 address of the default gateway.", "Network", "MaxLen(15)"),
    Property("network.dns", "DNS servers", "Comma-separated IPv4 addresses of DNS servers.", "Network",
             "MaxLen(255)"),
    Property("network.ntp", "Time servers", "Comma-separated NTP servers (names or IPs). Empty: the "
             "distribution's pool.", "Network", "MaxLen(2048)"),
    # MaxLen is the guest's own limit (answers.MAX_CA_NAME), filled in by build_descriptor.
    Property("ca.name", "CA name", "PKI name, in the root and intermediate certificate subjects.",
             "Certificate authority", "MinLen(1) MaxLen({ca_name_max})"),
    Property("ca.dns_names", "CA DNS names", "Comma-separated names and IP addresses in the CA's TLS "
             "certificate. Empty: the host name.", "Certificate authority", "MaxLen(1024)"),
    Property("ca.address", "Listen address", "Address step-ca listens on, e.g. :443.", "Certificate authority",
             "MinLen(2) MaxLen(64)"),
    Property("ca.provisioner", "Provisioner", "Name (an email address) of the first JWK provisioner.",
             "Certificate authority", "MinLen(3) MaxLen(254)"),
    Property("ca.ssh", "SSH CA", "Also sign SSH user and host certificates.", "Certificate authority",
             type="boolean"),
    Property("ca.password", "CA password", "Password of the CA keys. Empty: generate one and show it once "
             "on the console.", "Certificate authority", "MaxLen(256)"),
    Property("admin.ssh_authorized_keys", "Admin SSH keys", "Comma-separated SSH public keys allowed to log in "
             "as the admin.", "Administration", "MaxLen(65535)"),
)
PROPERTY_PREFIX = "ca-appliance."


def _property_defaults(cfg) -> dict[str, str]:
    """Property default values from the config: the wizard's defaults, as OVF strings."""
    return {
        "hostname": "",
        "network.mode": "dhcp",
        "network.address": "",
        "network.gateway": "",
        "network.dns": "",
        "network.ntp": "",
        "ca.name": cfg.ca.name,
        "ca.dns_names": ",".join(cfg.ca.dns_names),
        "ca.address": cfg.ca.address,
        "ca.provisioner": cfg.ca.provisioner,
        "ca.ssh": "true" if cfg.ca.ssh else "false",
        "ca.password": "",
        "admin.ssh_authorized_keys": ",".join(cfg.admin.ssh_authorized_keys),
    }


# ---- files written atomically: a temp name beside the target, renamed when complete


@contextlib.contextmanager
def _atomic_path(out: Path) -> Iterator[Path]:
    """A path with out's name in a temp dir beside it (qemu-img records the name in the VMDK);
    moved to `out` when the block succeeds, removed with the dir when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.", suffix=".partial") as tmpdir:
        tmp = Path(tmpdir) / out.name
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)


def disk_info(disk: Path, runner) -> dict:
    return json.loads(runner.output(["qemu-img", "info", "--output=json", disk]))


def write_vmdk(disk: Path, out: Path, runner) -> Path:
    """A streamOptimized VMDK (ide adapter type: the disk hangs on a SATA controller; guest-managed
    tools) of a qcow2 or raw disk, written atomically."""
    disk, out = Path(disk), Path(out)
    if not disk.is_file():
        raise UserError(f"disk image: {str(disk)!r} does not exist")
    source_format = disk_info(disk, runner)["format"]
    with _atomic_path(out) as tmp:
        runner.run(["qemu-img", "convert", "-f", source_format, "-O", "vmdk", "-o",
                    f"subformat=streamOptimized,adapter_type=ide,toolsversion={VMWARE_TOOLS_VERSION}",
                    disk, tmp])
    return out


# ---- the OVF descriptor


def _sub(parent: ET.Element, tag: str, text=None, **attrs) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def _o(name: str) -> str:
    return f"{{{OVF_NS}}}{name}"


def _item(hardware: ET.Element, fields: list[tuple[str, object]], required: bool = True) -> None:
    """An Item; `fields` in the RASD schema's (alphabetical) order."""
    item = _sub(hardware, _o("Item"), **({} if required else {_o("required"): "false"}))
    for name, value in fields:
        _sub(item, f"{{{RASD_NS}}}{name}", value)


_CONFIGURED = object()


def test_image_reason(cfg, test_reason=_CONFIGURED) -> str | None:
    """Why this is a test image (None: it is not). Not given: judged from the step-ca the config names,
    and an unreadable version counts as test (image.stepca_version: the marking fails closed)."""
    if test_reason is _CONFIGURED:
        from image.stepca_version import assess_configured
        return assess_configured(cfg).reason
    return test_reason


def build_descriptor(cfg, *, vmdk_name: str, vmdk_size: int, capacity: int, test_reason=_CONFIGURED) -> str:
    """The .ovf text for one VM with the appliance's hardware, disk and first-boot properties.
    A test image says so where importers show it: the product name and full version (vSphere's
    deploy wizard, VirtualBox's import dialog) and an annotation (the VM's notes)."""
    name = cfg.image.name
    test_reason = test_image_reason(cfg, test_reason)
    env = ET.Element(_o("Envelope"), {"{http://www.w3.org/XML/1998/namespace}lang": "en-US"})
    refs = _sub(env, _o("References"))
    _sub(refs, _o("File"), **{_o("id"): "file1", _o("href"): vmdk_name, _o("size"): vmdk_size})

    disks = _sub(env, _o("DiskSection"))
    _sub(disks, _o("Info"), "Virtual disk information")
    _sub(disks, _o("Disk"), **{
        _o("diskId"): DISK_ID, _o("fileRef"): "file1", _o("capacity"): capacity,
        _o("capacityAllocationUnits"): "byte",
        _o("format"): "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"})

    nets = _sub(env, _o("NetworkSection"))
    _sub(nets, _o("Info"), "The logical networks used")
    net = _sub(nets, _o("Network"), **{_o("name"): NETWORK_NAME})
    _sub(net, _o("Description"), "The network the CA serves")

    vs = _sub(env, _o("VirtualSystem"), **{_o("id"): name})
    _sub(vs, _o("Info"), "A private certificate authority (step-ca)")
    _sub(vs, _o("Name"), name)

    os_id, vmw_os, os_text = get_base(cfg.image.base).OVA_GUEST_OS   # the base's fact
    oss = _sub(vs, _o("OperatingSystemSection"), **{_o("id"): os_id, f"{{{VMW_NS}}}osType": vmw_os})
    _sub(oss, _o("Info"), "The guest operating system")
    _sub(oss, _o("Description"), os_text)

    if test_reason:
        notes = _sub(vs, _o("AnnotationSection"))
        _sub(notes, _o("Info"), "A test image")
        _sub(notes, _o("Annotation"), f"{TEST_IMAGE_MARK}: {test_reason}")
    product = _sub(vs, _o("ProductSection"))
    _sub(product, _o("Info"), "First-boot answers of the CA appliance")
    _sub(product, _o("Product"), "CA appliance (step-ca)" + (f" - {TEST_IMAGE_MARK}" if test_reason else ""))
    _sub(product, _o("Vendor"), name)
    _sub(product, _o("Version"), cfg.image.version + ("-test" if test_reason else ""))
    _sub(product, _o("FullVersion"), f"{cfg.image.version} ({cfg.image.base})"
                                     + (f" {TEST_IMAGE_MARK}: {test_reason}" if test_reason else ""))
    defaults = _property_defaults(cfg)
    category = None
    for prop in PROPERTIES:
        if prop.category != category:
            category = prop.category
            _sub(product, _o("Category"), category)
        attrs = {_o("key"): PROPERTY_PREFIX + prop.key, _o("type"): prop.type,
                 _o("userConfigurable"): "true", _o("value"): defaults[prop.key]}
        if prop.qualifiers:
            qualifiers = prop.qualifiers
            if "{ca_name_max}" in qualifiers:
                qualifiers = qualifiers.replace("{ca_name_max}", str(guest_limits()["ca_name_max"]))
            attrs[_o("qualifiers")] = qualifiers
        if prop.password:
            attrs[_o("password")] = "true"
        el = _sub(product, _o("Property"), **attrs)
        _sub(el, _o("Label"), prop.label)
        _sub(el, _o("Description"), prop.description)

    # vSphere hands the OVF environment over through guestinfo and as ovf-env.xml on the CD-ROM.
    hw = _sub(vs, _o("VirtualHardwareSection"), **{_o("transport"): "com.vmware.guestInfo iso"})
    _sub(hw, _o("Info"), "Virtual hardware requirements")
    system = _sub(hw, _o("System"))
    for tag, value in (("ElementName", "Virtual Hardware Family"), ("InstanceID", 0),
                       ("VirtualSystemIdentifier", name), ("VirtualSystemType", cfg.ova.virtual_system_type)):
        _sub(system, f"{{{VSSD_NS}}}{tag}", value)
    cpus, memory = cfg.image.cpus, cfg.image.memory_mb
    _item(hw, [("AllocationUnits", "hertz * 10^6"), ("Description", "Number of virtual CPUs"),
               ("ElementName", f"{cpus} virtual CPU(s)"), ("InstanceID", 1), ("ResourceType", 3),
               ("VirtualQuantity", cpus)])
    _item(hw, [("AllocationUnits", "byte * 2^20"), ("Description", "Memory size"),
               ("ElementName", f"{memory}MB of memory"), ("InstanceID", 2), ("ResourceType", 4),
               ("VirtualQuantity", memory)])
    # SATA (AHCI): VirtualBox's default and a vSphere choice, read by all three importers, and booted for
    # real by the matrix (tests/boot, ahci). VMware's default LSI Logic (mptspi) has no QEMU model.
    _item(hw, [("Address", 0), ("Description", "SATA Controller"), ("ElementName", "SATA Controller 0"),
               ("InstanceID", 3), ("ResourceSubType", DISK_CONTROLLER[1]), ("ResourceType", DISK_CONTROLLER[0])])
    _item(hw, [("Address", 0), ("Description", "IDE Controller"), ("ElementName", "IDE Controller 0"),
               ("InstanceID", 4), ("ResourceType", 5)])
    _item(hw, [("AddressOnParent", 0), ("ElementName", "Hard Disk 1"), ("HostResource", f"ovf:/disk/{DISK_ID}"),
               ("InstanceID", 5), ("Parent", 3), ("ResourceType", 17)])
    # Empty CD-ROM: the seed ISO or vSphere's OVF environment goes in here.
    _item(hw, [("AddressOnParent", 0), ("AutomaticAllocation", "false"), ("ElementName", "CD-ROM 1"),
               ("InstanceID", 6), ("Parent", 4), ("ResourceType", 15)], required=False)
    _item(hw, [("AddressOnParent", 7), ("AutomaticAllocation", "true"), ("Connection", NETWORK_NAME),
               ("Description", f"E1000 ethernet adapter on {NETWORK_NAME}"), ("ElementName", "Network adapter 1"),
               ("InstanceID", 7), ("ResourceSubType", NIC), ("ResourceType", 10)])
    # vSphere and virt-v2v read the firmware here; VirtualBox only from its own section (imports BIOS)
    _sub(hw, f"{{{VMW_NS}}}Config", **{_o("required"): "false", f"{{{VMW_NS}}}key": "firmware",
                                        f"{{{VMW_NS}}}value": cfg.ova.firmware})

    ET.indent(env, "  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(env, encoding="unicode") + "\n"


# ---- manifest, signature, archive



def manifest_text(digests: dict[str, str]) -> str:
    return "".join(f"SHA256({name})= {digest}\n" for name, digest in digests.items())


@dataclass(frozen=True)
class Signer:
    key: object    # an RSA private key (cryptography)
    cert: object   # its X.509 certificate


def load_signer(sign_key, sign_cert) -> Signer:
    """The OVA signing key and certificate, checked (call it before a build: bad input fails fast)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def read(path, what):
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise UserError(f"{what}: {str(path)!r} cannot be read ({e.strerror})") from None

    try:
        key = serialization.load_pem_private_key(read(sign_key, "--sign"), password=None)
    except (ValueError, TypeError):
        raise UserError(f"--sign: {str(sign_key)!r} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"--sign: {str(sign_key)!r} is not an RSA key (ovftool and vSphere verify RSA only)")
    try:
        cert = x509.load_pem_x509_certificate(read(sign_cert, "--cert"))
    except ValueError:
        raise UserError(f"--cert: {str(sign_cert)!r} is not a PEM X.509 certificate") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise UserError(f"--cert: {str(sign_cert)!r} does not belong to the key {str(sign_key)!r}")
    return Signer(key, cert)


def signature_text(mf_name: str, mf_bytes: bytes, signer: Signer) -> str:
    """The .cert: `SHA256(<mf>)= <hex RSA-SHA256 signature of the manifest>` then the PEM certificate."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = signer.key.sign(mf_bytes, padding.PKCS1v15(), hashes.SHA256())
    pem = signer.cert.public_bytes(serialization.Encoding.PEM).decode()
    return f"SHA256({mf_name})= {signature.hex()}\n{pem}"


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    fmt = tarfile.USTAR_FORMAT if size <= USTAR_MAX_SIZE else tarfile.GNU_FORMAT
    return info.tobuf(format=fmt, encoding="utf-8", errors="strict")


def write_tar(out, members: list[tuple[str, Path]], mtime: int) -> None:
    """A ustar archive of `members` in the given order (GNU size encoding past 8 GiB, no PAX headers)."""
    written = 0
    for name, path in members:
        size = path.stat().st_size
        out.write(_tar_header(name, size, mtime))
        with open(path, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        pad = -size % TAR_BLOCK
        out.write(b"\0" * pad)
        written += TAR_BLOCK + size + pad
    end = 2 * TAR_BLOCK
    out.write(b"\0" * (end + (-(written + end) % TAR_RECORD)))


def write_ova(cfg, disk: Path, out: Path, runner, sign_key=None, sign_cert=None, test_reason=_CONFIGURED) -> Path:
    """An OVA of the disk (qcow2 or raw) with the config's hardware and first-boot properties, written
    atomically; signed (a .cert member) when sign_key and sign_cert are given. test_reason: why the
    image is a test image (None: it is not; not given: judged from the config's step-ca)."""
    test_reason = test_image_reason(cfg, test_reason)
    disk, out = Path(disk), Path(out)
    if (sign_key is None) != (sign_cert is None):
        raise UserError("--sign and --cert: give both (the RSA key and its certificate) or neither")
    signer = load_signer(sign_key, sign_cert) if sign_key is not None else None
    stem = cfg.image.name
    names = {"ovf": f"{stem}.ovf", "mf": f"{stem}.mf", "vmdk": f"{stem}-disk1.vmdk", "cert": f"{stem}.cert"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        work = Path(work)
        paths = {kind: work / name for kind, name in names.items()}
        write_vmdk(disk, paths["vmdk"], runner)
        capacity = disk_info(paths["vmdk"], runner)["virtual-size"]
        paths["ovf"].write_text(build_descriptor(cfg, vmdk_name=names["vmdk"],
                                                 vmdk_size=paths["vmdk"].stat().st_size, capacity=capacity,
                                                 test_reason=test_reason))
        mf = manifest_text({names[k]: sha256_file(paths[k]) for k in ("ovf", "vmdk")})
        paths["mf"].write_text(mf)
        order = ["ovf", "mf", "vmdk"]
        if signer is not None:
            paths["cert"].write_text(signature_text(names["mf"], mf.encode(), signer))
            order.append("cert")
        with _atomic_path(out) as tmp, open(tmp, "wb") as f:
            write_tar(f, [(names[k], paths[k]) for k in order], mtime=int(time.time()))
    return out
