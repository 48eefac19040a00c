"""OVA and VMDK export of a small real qcow2, read back by real tools: the raw tar headers, the
manifest digests, `qemu-img compare` of the disk, openssl on the signature, and virt-v2v's OVA
importer (`--print-source`: it parses the descriptor and checks the manifest without a guest)."""
import hashlib
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers.archives import members

from image import ova
from image.config import load_config
from image.errors import StepFailed, UserError
from image.runner import Runner

needs_qemu_img = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                                    reason="qemu-img and qemu-io (qemu-utils, host-packages.txt) make the test disk")
needs_virt_v2v = pytest.mark.skipif(not shutil.which("virt-v2v"),
                                    reason="virt-v2v (host-packages.txt) is the libvirt-side OVA importer under test")
pytestmark = needs_qemu_img

# Bytes the test disk holds: (offset, length, pattern)
WRITES = ((0, 2**20, 0xAB), (40 * 2**20, 512 * 1024, 0x12))


def run(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def source_disk(tmp_path_factory):
    """A 64 MiB qcow2 with two patterns written: small, but real data at both ends of a grain table."""
    disk = tmp_path_factory.mktemp("disk") / "source.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M")
    for offset, length, pattern in WRITES:
        run("qemu-io", "-c", f"write -P {pattern:#x} {offset} {length}", disk)
    return disk


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides={"image": {"base": "debian", "name": "lab-ca", "version": "2.3.4",
                                            "cpus": 3, "memory_mb": 3072}})


@pytest.fixture(scope="module")
def ova_file(tmp_path_factory, source_disk, cfg):
    out = tmp_path_factory.mktemp("dist") / "lab-ca-2.3.4-debian.ova"
    runner = Runner(out.parent.parent / "ova.log")
    assert ova.write_ova(cfg, source_disk, out, runner) == out
    return out


def raw_headers(path: Path) -> list[bytes]:
    """Every 512-byte member header of a tar file, read without tarfile's leniency."""
    headers = []
    with open(path, "rb") as f:
        while (block := f.read(512)) and block.strip(b"\0"):
            headers.append(block)
            size_field = block[124:136]
            size = (int.from_bytes(size_field[1:], "big") if size_field[0] & 0x80
                    else int(size_field.rstrip(b"\0 ") or b"0", 8))
            f.seek((size + 511) // 512 * 512, os.SEEK_CUR)
    return headers



def test_members_in_importer_order_with_plain_ustar_headers(ova_file):
    headers = raw_headers(ova_file)
    names = [h[:100].rstrip(b"\0").decode() for h in headers]
    assert names == ["lab-ca.ovf", "lab-ca.mf", "lab-ca-disk1.vmdk"]
    for h in headers:
        assert h[257:265] == b"ustar\x0000"      # POSIX ustar (no GNU: every member is far below 8 GiB)
        assert h[156:157] == b"0"                # regular files only: no PAX 'x'/'g' extended headers
        assert int(h[108:116].rstrip(b"\0 "), 8) == 0 and int(h[116:124].rstrip(b"\0 "), 8) == 0  # uid, gid
        assert re.fullmatch(rb"[0-7]{11}\0", h[136:148])  # integer mtime, octal
    assert ova_file.stat().st_size % ova.TAR_RECORD == 0


def test_manifest_lists_the_real_digests(ova_file, tmp_path):
    files = members(ova_file, tmp_path)
    lines = files["lab-ca.mf"].read_text().splitlines()
    digests = {}
    for line in lines:
        m = re.fullmatch(r"SHA256\(([^)]+)\)= ([0-9a-f]{64})", line)
        assert m, f"manifest line not in vSphere's form: {line!r}"
        digests[m.group(1)] = m.group(2)
    assert digests == {name: hashlib.sha256(files[name].read_bytes()).hexdigest()
                       for name in ("lab-ca.ovf", "lab-ca-disk1.vmdk")}


def test_disk_is_a_stream_optimized_copy_of_the_source(ova_file, source_disk, tmp_path):
    files = members(ova_file, tmp_path)
    vmdk = files["lab-ca-disk1.vmdk"]
    run("qemu-img", "compare", "-f", "qcow2", "-F", "vmdk", source_disk, vmdk)
    info = run("qemu-img", "info", "--output=json", vmdk).stdout
    assert '"create-type": "streamOptimized"' in info
    # The embedded descriptor (sector 1 on): vSphere needs the adapter and a tools version.
    descriptor = vmdk.read_bytes()[512:512 * 21].decode("latin-1")
    assert 'ddb.adapterType = "ide"' in descriptor   # the disk hangs on a SATA controller
    assert f'ddb.toolsVersion = "{ova.VMWARE_TOOLS_VERSION}"' in descriptor
    assert '"lab-ca-disk1.vmdk"' in descriptor  # the extent is named for the member, not a temp file
    ovf = ET.fromstring(files["lab-ca.ovf"].read_text())
    o = f"{{{ova.OVF_NS}}}"
    assert ovf.find(f"{o}References/{o}File").get(f"{o}size") == str(vmdk.stat().st_size)
    assert ovf.find(f"{o}DiskSection/{o}Disk").get(f"{o}capacity") == str(64 * 2**20)


@needs_virt_v2v
def test_virt_v2v_reads_name_cpus_memory_and_disk(ova_file):
    result = subprocess.run(["virt-v2v", "-i", "ova", str(ova_file), "--print-source"], capture_output=True,
                            text=True, env={**os.environ, "LIBGUESTFS_BACKEND": "direct"}, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"source name: lab-ca$", out, re.M), out
    assert re.search(r"nr vCPUs: 3$", out, re.M), out
    assert re.search(rf"memory: {3072 * 2**20} \(bytes\)$", out, re.M), out
    assert re.search(r"firmware: bios$", out, re.M), out
    disks = out.split("disks:", 1)[1].split("removable media:", 1)[0]
    assert re.findall(r"^\s+0 \[sata\]$", disks, re.M), out
    assert "CD-ROM [ide]" in out and '"VM Network" [e1000]' in out, out


@needs_virt_v2v
def test_virt_v2v_refuses_the_ova_when_the_descriptor_no_longer_matches_the_manifest(ova_file, tmp_path):
    files = members(ova_file, tmp_path / "x")
    ovf = files["lab-ca.ovf"]
    ovf.write_text(ovf.read_text().replace("<rasd:VirtualQuantity>3072<", "<rasd:VirtualQuantity>3073<"))
    tampered = tmp_path / "tampered.ova"
    with open(tampered, "wb") as f:
        ova.write_tar(f, [(n, files[n]) for n in ("lab-ca.ovf", "lab-ca.mf", "lab-ca-disk1.vmdk")], mtime=0)
    result = subprocess.run(["virt-v2v", "-i", "ova", str(tampered), "--print-source"], capture_output=True,
                            text=True, env={**os.environ, "LIBGUESTFS_BACKEND": "direct"}, timeout=300)
    assert result.returncode != 0
    assert "does not match manifest" in result.stderr


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl verifies the signature as a user would")
def test_signed_ova_carries_a_cert_openssl_verifies(source_disk, cfg, tmp_path):
    key, cert = tmp_path / "sign.key", tmp_path / "sign.crt"
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
        "-days", "30", "-subj", "/CN=appliance signing")
    out = ova.write_ova(cfg, source_disk, tmp_path / "dist" / "signed.ova", Runner(tmp_path / "log"),
                        sign_key=key, sign_cert=cert)
    names = [h[:100].rstrip(b"\0").decode() for h in raw_headers(out)]
    assert names == ["lab-ca.ovf", "lab-ca.mf", "lab-ca-disk1.vmdk", "lab-ca.cert"]
    files = members(out, tmp_path / "x")
    first, pem = files["lab-ca.cert"].read_text().split("\n", 1)
    m = re.fullmatch(r"SHA256\(lab-ca\.mf\)= ([0-9a-f]+)", first)
    assert m, first
    (tmp_path / "sig").write_bytes(bytes.fromhex(m.group(1)))
    (tmp_path / "cert-from-ova.pem").write_text(pem)
    pub = run("openssl", "x509", "-pubkey", "-noout", "-in", tmp_path / "cert-from-ova.pem").stdout
    (tmp_path / "pub.pem").write_text(pub)
    verified = run("openssl", "dgst", "-sha256", "-verify", tmp_path / "pub.pem", "-signature", tmp_path / "sig",
                   files["lab-ca.mf"])
    assert "Verified OK" in verified.stdout


def test_write_vmdk_from_raw(source_disk, tmp_path):
    raw = tmp_path / "disk.raw"
    run("qemu-img", "convert", "-O", "raw", source_disk, raw)
    out = ova.write_vmdk(raw, tmp_path / "dist" / "lab-ca.vmdk", Runner(tmp_path / "log"))
    run("qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, out)
    assert [p.name for p in out.parent.iterdir()] == ["lab-ca.vmdk"]


def corrupt_copy(disk: Path, dest: Path) -> Path:
    """A copy of a qcow2 that qemu-img opens but cannot read: L1 entry 0 points at an unaligned L2 table."""
    data = bytearray(disk.read_bytes())
    l1_offset = struct.unpack(">Q", data[40:48])[0]
    data[l1_offset:l1_offset + 8] = struct.pack(">Q", (1 << 63) | 0x30200)
    dest.write_bytes(data)
    return dest


def test_a_failed_export_leaves_the_previous_output_and_no_partial_files(source_disk, tmp_path, cfg):
    broken = corrupt_copy(source_disk, tmp_path / "broken.qcow2")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "lab-ca.ova").write_bytes(b"previous build")
    with pytest.raises(StepFailed, match=r"(?s)qemu-img exited with status \d+.*Input/output error.*log: "):
        ova.write_ova(cfg, broken, dist / "lab-ca.ova", Runner(tmp_path / "log"))
    with pytest.raises(StepFailed):
        ova.write_vmdk(broken, dist / "lab-ca.vmdk", Runner(tmp_path / "log"))
    assert sorted(p.name for p in dist.iterdir()) == ["lab-ca.ova"]
    assert (dist / "lab-ca.ova").read_bytes() == b"previous build"


def test_a_missing_disk_is_a_user_error(tmp_path, cfg):
    with pytest.raises(UserError, match="does not exist"):
        ova.write_ova(cfg, tmp_path / "nope.qcow2", tmp_path / "dist" / "x.ova", Runner(tmp_path / "log"))
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())
