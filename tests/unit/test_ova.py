"""The OVF descriptor, OVF environment, manifest, signature and tar headers the OVA export writes,
checked against the DMTF schemas and against the guest's own OVF-environment reader."""
import io
import re
import tarfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ca_appliance.answers import validate
from ca_appliance.sources import parse_ovf_env
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from image import ova
from image.config import load_config
from image.errors import UserError
from image.payload import guest_defaults
from tests.helpers.ovfenv import make_ovf_env

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / ".." / "shared" / "ovf-schema"
GUEST_LIB = REPO / "overlay/usr/lib/ca-appliance"

NS = {"ovf": ova.OVF_NS, "rasd": ova.RASD_NS, "vssd": ova.VSSD_NS, "vmw": ova.VMW_NS}
OVF = f"{{{ova.OVF_NS}}}"


def schema(xsd_name: str) -> etree.XMLSchema:
    """A DMTF schema from shared/ovf-schema, its imports resolved offline through catalog.xml."""
    if not (SCHEMA_DIR / xsd_name).is_file():
        pytest.fail(f"the DMTF OVF schemas are missing: expected {SCHEMA_DIR.resolve()}/{xsd_name} "
                    "(shared/ovf-schema beside the repository checkout)")
    catalog = etree.parse(str(SCHEMA_DIR / "catalog.xml"))
    local = {e.get("name"): str(SCHEMA_DIR / e.get("uri"))
             for e in catalog.iter("{urn:oasis:names:tc:entity:xmlns:xml:catalog}uri")}

    class Catalog(etree.Resolver):
        def resolve(self, url, pubid, context):
            if url in local:
                return self.resolve_filename(local[url], context)
            return None

    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(Catalog())
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / xsd_name), parser))


def assert_valid(xsd: etree.XMLSchema, text: str) -> None:
    doc = etree.fromstring(text.encode())
    assert xsd.validate(doc), "\n".join(str(e) for e in xsd.error_log)


@pytest.fixture(scope="module")
def ovf_schema():
    return schema("dsp8023_1.1.0.xsd")


@pytest.fixture(scope="module")
def env_schema():
    return schema("dsp8027_1.1.0.xsd")


def config(**image):
    return load_config(overrides={"image": {"base": "debian", **image},
                                  "ca": {"name": "Lab CA", "dns_names": ["ca.lab.example"], "ssh": False}})


def descriptor(cfg=None, capacity=20 * 2**30, size=123456):
    return ova.build_descriptor(cfg or config(), vmdk_name="ca-appliance-disk1.vmdk", vmdk_size=size,
                                capacity=capacity)


def items(root):
    return {int(i.findtext("rasd:ResourceType", namespaces=NS)): i
            for i in root.iterfind("ovf:VirtualSystem/ovf:VirtualHardwareSection/ovf:Item", NS)}


# ---- the descriptor


@pytest.mark.parametrize("base", ["debian", "fedora"])
def test_descriptor_validates_against_the_dmtf_ovf_schema(ovf_schema, base):
    assert_valid(ovf_schema, descriptor(config(base=base)))


def test_the_schema_check_catches_a_broken_descriptor(ovf_schema):
    broken = descriptor().replace("<ovf:Info>Virtual hardware requirements</ovf:Info>", "")
    assert not ovf_schema.validate(etree.fromstring(broken.encode()))


def test_descriptor_uses_ovf_1_namespace_and_section_order():
    root = ET.fromstring(descriptor())
    assert root.tag == f"{OVF}Envelope"
    assert [c.tag.removeprefix(OVF) for c in root] == ["References", "DiskSection", "NetworkSection", "VirtualSystem"]
    vs = root.find("ovf:VirtualSystem", NS)
    sections = [c.tag.removeprefix(OVF) for c in vs if c.tag.removeprefix(OVF).endswith("Section")]
    assert sections == ["OperatingSystemSection", "ProductSection", "VirtualHardwareSection"]
    hw = vs.find("ovf:VirtualHardwareSection", NS)
    tags = [c.tag for c in hw]
    last_item = max(i for i, t in enumerate(tags) if t == f"{OVF}Item")
    assert all(i > last_item for i, t in enumerate(tags) if t.startswith(f"{{{ova.VMW_NS}}}"))


def test_hardware_comes_from_the_config():
    root = ET.fromstring(descriptor(config(cpus=3, memory_mb=6144, name="lab-ca")))
    hw = items(root)
    assert hw[3].findtext("rasd:VirtualQuantity", namespaces=NS) == "3"
    assert hw[4].findtext("rasd:VirtualQuantity", namespaces=NS) == "6144"
    assert hw[4].findtext("rasd:AllocationUnits", namespaces=NS) == "byte * 2^20"
    assert hw[20].findtext("rasd:ResourceSubType", namespaces=NS) == "vmware.sata.ahci"
    assert hw[10].findtext("rasd:ResourceSubType", namespaces=NS) == "E1000"
    assert {15, 17} <= set(hw)
    assert root.find("ovf:VirtualSystem", NS).get(f"{OVF}id") == "lab-ca"
    system = root.find("ovf:VirtualSystem/ovf:VirtualHardwareSection/ovf:System", NS)
    assert system.findtext("vssd:VirtualSystemType", namespaces=NS) == "vmx-13"


def test_disk_network_and_firmware_are_wired_together():
    root = ET.fromstring(descriptor(capacity=64 * 2**20, size=4242))
    hw = items(root)
    disk_item = hw[17]
    disk_id = disk_item.findtext("rasd:HostResource", namespaces=NS).removeprefix("ovf:/disk/")
    disk = root.find(f"ovf:DiskSection/ovf:Disk[@ovf:diskId='{disk_id}']", NS)
    assert disk.get(f"{OVF}capacity") == str(64 * 2**20)
    file = root.find(f"ovf:References/ovf:File[@ovf:id='{disk.get(f'{OVF}fileRef')}']", NS)
    assert (file.get(f"{OVF}href"), file.get(f"{OVF}size")) == ("ca-appliance-disk1.vmdk", "4242")
    assert disk_item.findtext("rasd:Parent", namespaces=NS) == hw[20].findtext("rasd:InstanceID", namespaces=NS)
    network = hw[10].findtext("rasd:Connection", namespaces=NS)
    assert root.find(f"ovf:NetworkSection/ovf:Network[@ovf:name='{network}']", NS) is not None
    firmware = root.find("ovf:VirtualSystem/ovf:VirtualHardwareSection/vmw:Config[@vmw:key='firmware']", NS)
    assert firmware.get(f"{{{ova.VMW_NS}}}value") == "bios" and firmware.get(f"{OVF}required") == "false"
    hw_section = root.find("ovf:VirtualSystem/ovf:VirtualHardwareSection", NS)
    assert hw_section.get(f"{OVF}transport") == "com.vmware.guestInfo iso"


def test_firmware_comes_from_ova_firmware():
    cfg = load_config(overrides={"image": {"base": "debian"}, "ova": {"firmware": "efi"}})
    root = ET.fromstring(descriptor(cfg))
    firmware = root.find("ovf:VirtualSystem/ovf:VirtualHardwareSection/vmw:Config[@vmw:key='firmware']", NS)
    assert firmware.get(f"{{{ova.VMW_NS}}}value") == "efi"
    with pytest.raises(UserError, match="ova.firmware"):
        load_config(overrides={"ova": {"firmware": "uefi"}})


def test_boot_disk_controller_and_nic_are_ones_the_boot_matrix_boots():
    """tests/boot boots image.vm.qemu.HARDWARE for real: the OVA's choices must be among its rows."""
    from image.vm.qemu import HARDWARE
    proven = {"vmware.sata.ahci": "ahci", "E1000": "e1000"}   # OVF ResourceSubType -> QEMU model in a row
    hw = items(ET.fromstring(descriptor()))
    disk_parent = hw[17].findtext("rasd:Parent", namespaces=NS)
    (controller,) = [i for i in hw.values() if i.findtext("rasd:InstanceID", namespaces=NS) == disk_parent]
    controller_model = proven[controller.findtext("rasd:ResourceSubType", namespaces=NS)]
    nic_model = proven[hw[10].findtext("rasd:ResourceSubType", namespaces=NS)]
    assert any(h.disk == controller_model for h in HARDWARE.values())
    assert any(h.nic == nic_model for h in HARDWARE.values())


def test_product_section_offers_every_first_boot_answer_with_config_defaults():
    root = ET.fromstring(descriptor())
    product = root.find("ovf:VirtualSystem/ovf:ProductSection", NS)
    assert product.findtext("ovf:Version", namespaces=NS) == "1.1.0"
    props = {p.get(f"{OVF}key"): p for p in product.iterfind("ovf:Property", NS)}
    assert set(props) == {f"ca-appliance.{k}" for k in (
        "hostname", "network.mode", "network.address", "network.gateway", "network.dns", "network.ntp", "ca.name",
        "ca.dns_names", "ca.address", "ca.provisioner", "ca.password", "ca.ssh", "admin.ssh_authorized_keys")}
    assert all(p.get(f"{OVF}userConfigurable") == "true" for p in props.values())
    assert props["ca-appliance.ca.name"].get(f"{OVF}value") == "Lab CA"
    assert props["ca-appliance.ca.dns_names"].get(f"{OVF}value") == "ca.lab.example"
    assert props["ca-appliance.ca.ssh"].get(f"{OVF}value") == "false"
    assert props["ca-appliance.ca.ssh"].get(f"{OVF}type") == "boolean"
    assert props["ca-appliance.network.mode"].get(f"{OVF}qualifiers") == 'ValueMap{"dhcp","static"}'
    assert props["ca-appliance.ca.password"].get(f"{OVF}password") == "true"
    assert [k for k, p in props.items() if p.get(f"{OVF}password") == "true"] == ["ca-appliance.ca.password"]
    # every property is an answers key of the one schema, and hidden exactly when the schema says secret
    from image.config import ANSWERS_SCHEMA
    for key, prop in props.items():
        entry = ANSWERS_SCHEMA["keys"][key.removeprefix("ca-appliance.")]
        assert (prop.get(f"{OVF}password") == "true") is (entry.get("secret") is True), key
    # The guest's own limit (answers.MAX_CA_NAME: a CN of 64 minus " Intermediate CA"), read by running it.
    assert props["ca-appliance.ca.name"].get(f"{OVF}qualifiers") == "MinLen(1) MaxLen(48)"
    # ValueMap with the quotes escaped, as vSphere writes it.
    assert "ValueMap{&quot;dhcp&quot;,&quot;static&quot;}" in descriptor()


# ---- the OVF environment, read back by the guest


def ssh_key():
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def ovf_values(answers: dict) -> dict[str, str]:
    """What a vSphere user types into the vApp properties for these answers."""
    values = {}
    for prop in ova.PROPERTIES:
        node = answers
        for part in prop.key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue
        if isinstance(node, bool):
            node = "true" if node else "false"
        elif isinstance(node, list):
            node = ",".join(node)
        values[ova.PROPERTY_PREFIX + prop.key] = node
    return values


def test_ovf_environment_validates_against_the_dmtf_schema(env_schema):
    assert_valid(env_schema, make_ovf_env(descriptor(), {"ca-appliance.hostname": "ca.lab.example"}))


def test_ovf_environment_refuses_unknown_properties():
    with pytest.raises(ValueError, match="ca-appliance.ca.nmae"):
        make_ovf_env(descriptor(), {"ca-appliance.ca.nmae": "x"})


def test_vapp_properties_round_trip_into_the_same_answers_as_an_answers_file():
    cfg = config()
    defaults = guest_defaults(cfg)
    answers = {
        "hostname": "ca.lab.example",
        "network": {"mode": "static", "address": "192.168.70.10/24", "gateway": "192.168.70.1",
                    "dns": ["192.168.70.1", "1.1.1.1"], "ntp": ["ntp1.lab.example", "192.168.70.2"]},
        "ca": {"name": "Lab CA", "dns_names": ["ca.lab.example", "192.168.70.10"], "address": ":8443",
               "provisioner": "admin@lab.example", "password": "correct horse battery staple", "ssh": False},
        "admin": {"ssh_authorized_keys": [ssh_key(), ssh_key()]},
    }
    env = make_ovf_env(descriptor(cfg), ovf_values(answers))
    from_ovf = validate(parse_ovf_env(env), defaults)
    assert from_ovf == validate(answers, defaults)
    assert from_ovf["ca"]["password"] == "correct horse battery staple"
    assert from_ovf["network"]["dns"] == ["192.168.70.1", "1.1.1.1"]
    assert from_ovf["network"]["ntp"] == ["ntp1.lab.example", "192.168.70.2"]


def test_vapp_defaults_mean_the_same_as_the_shipped_defaults():
    cfg = config()
    defaults = guest_defaults(cfg)
    env = make_ovf_env(descriptor(cfg), {"ca-appliance.hostname": "ca.lab.example"})
    answers = {"hostname": "ca.lab.example"}
    assert validate(parse_ovf_env(env), defaults) == validate(answers, defaults)
    assert validate(parse_ovf_env(env), defaults)["ca"]["password"] is None  # generated on the appliance


# ---- manifest, signature, tar headers


def test_manifest_lines_are_in_the_one_form_vsphere_accepts():
    text = ova.manifest_text({"a.ovf": "ab" * 32, "a-disk1.vmdk": "cd" * 32})
    assert text == f"SHA256(a.ovf)= {'ab' * 32}\nSHA256(a-disk1.vmdk)= {'cd' * 32}\n"


def make_signer(tmp_path, key=None):
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance signing")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    key_path, cert_path = tmp_path / "sign.key", tmp_path / "sign.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, cert


def test_signature_file_is_the_manifest_signature_then_the_certificate(tmp_path):
    key_path, cert_path, cert = make_signer(tmp_path)
    mf = b"SHA256(a.ovf)= " + b"ab" * 32 + b"\n"
    text = ova.signature_text("a.mf", mf, ova.load_signer(key_path, cert_path))
    first, pem = text.split("\n", 1)
    m = re.fullmatch(r"SHA256\(a\.mf\)= ([0-9a-f]+)", first)
    assert m, first
    cert.public_key().verify(bytes.fromhex(m.group(1)), mf, padding.PKCS1v15(), hashes.SHA256())
    assert x509.load_pem_x509_certificate(pem.encode()) == cert


def test_signing_refuses_a_certificate_of_another_key_and_non_rsa_keys(tmp_path):
    key_path, _, _ = make_signer(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_cert, _ = make_signer(tmp_path / "other")
    with pytest.raises(UserError, match="does not belong to the key"):
        ova.load_signer(key_path, other_cert)
    (tmp_path / "ec").mkdir()
    ec_key, ec_cert, _ = make_signer(tmp_path / "ec", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(UserError, match="not an RSA key"):
        ova.load_signer(ec_key, ec_cert)
    with pytest.raises(UserError, match="cannot be read"):
        ova.load_signer(tmp_path / "missing.key", other_cert)


def test_bad_signing_input_fails_before_any_disk_work(tmp_path):
    key_path, _, _ = make_signer(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_cert, _ = make_signer(tmp_path / "other")
    # runner=None: reaching qemu-img would be an AttributeError, not this UserError
    with pytest.raises(UserError, match="--cert: .* does not belong"):
        ova.write_ova(config(), tmp_path / "d.qcow2", tmp_path / "x.ova", runner=None,
                      sign_key=key_path, sign_cert=other_cert)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(UserError, match="--sign: .* not an unencrypted PEM private key"):
        ova.load_signer(encrypted, other_cert)


def test_write_ova_wants_key_and_certificate_together(tmp_path):
    with pytest.raises(UserError, match="give both"):
        ova.write_ova(config(), tmp_path / "d.qcow2", tmp_path / "x.ova", runner=None, sign_key=tmp_path / "k")
    assert not (tmp_path / "x.ova").exists()


@pytest.mark.parametrize("size, magic", [(1234, b"ustar\x0000"), (8 * 2**30 - 1, b"ustar\x0000"),
                                         (8 * 2**30, b"ustar  \x00"), (30 * 2**30, b"ustar  \x00")])
def test_tar_headers_are_ustar_and_gnu_only_past_8_gib(size, magic):
    header = ova._tar_header("ca-appliance-disk1.vmdk", size, mtime=1700000000)
    assert len(header) == 512 and header[257:265] == magic and header[156:157] == b"0"
    info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
    assert (info.name, info.size, info.mtime, info.uid, info.gid) == ("ca-appliance-disk1.vmdk", size,
                                                                      1700000000, 0, 0)


def test_tar_archive_keeps_member_order_and_ends_on_a_record(tmp_path):
    files = []
    for name, data in (("z.ovf", b"<x/>"), ("a.mf", b"m" * 700), ("m.vmdk", b"\1" * 1024)):
        (tmp_path / name).write_bytes(data)
        files.append((name, tmp_path / name))
    buf = io.BytesIO()
    ova.write_tar(buf, files, mtime=1700000000)
    assert len(buf.getvalue()) % ova.TAR_RECORD == 0
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [("z.ovf", 4), ("a.mf", 700), ("m.vmdk", 1024)]
        assert tar.extractfile("a.mf").read() == b"m" * 700
