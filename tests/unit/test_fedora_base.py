"""Fedora base, everything short of a real Anaconda run (no Fedora mirror is reachable here):
the QEMU command line, the OEMDRV ISO read back, .treeinfo checks against a tree served on
loopback HTTP, progress from serial lines, and the failure paths with a real QEMU."""
import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pycdlib
import pytest

from image.artifacts import Artifact
from image.bases import fedora
from image.bases.fedora.iso import write_volume_iso
from image.bases.fedora.kickstart import (
    OEMDRV_LABEL,
    PAYLOAD_NAME,
    SUCCESS_MARKER,
    artifact_volume_file,
    render_kickstart,
)
from image.config import load_config
from image.errors import StepFailed, UserError
from image.payload import write_payload_tarball
from image.runner import Runner

TREE = "http://mirror.example/pub/fedora/linux/releases/45/Server/x86_64/os/"


def test_anaconda_qemu_command_line_exactly(tmp_path):
    cfg = load_config()
    w = tmp_path
    cmd = fedora.anaconda_qemu_command(
        cfg, kernel=w / "vmlinuz", initrd=w / "initrd.img", iso=w / "oemdrv.iso", disk=w / "a,b.raw",
        serial_log=w / "serial.log", installer_log=w / "anaconda.log", result_log=w / "result.txt",
        accel="tcg", tree=TREE)
    assert cmd == [
        "qemu-system-x86_64", "-name", "ca-appliance-anaconda", "-machine", "q35", "-accel", "tcg",
        "-cpu", "max,la57=off,-erms", "-smp", "2", "-m", "4096", "-display", "none", "-monitor", "none",
        "-serial", f"file:{w}/serial.log", "-no-reboot",
        "-kernel", f"{w}/vmlinuz", "-initrd", f"{w}/initrd.img",
        "-append", f"inst.stage2={TREE} inst.ks=hd:LABEL=OEMDRV:/ks.cfg inst.text console=ttyS0,115200n8 "
                   "rd.emergency=reboot inst.nosave=all",
        "-drive", f"file={w}/a,,b.raw,format=raw,if=virtio,cache=unsafe",
        "-drive", f"file={w}/oemdrv.iso,format=raw,media=cdrom,readonly=on",
        "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
        "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=anaconda-log,path={w}/anaconda.log",
        "-device", "virtserialport,chardev=anaconda-log,name=org.fedoraproject.anaconda.log.0",
        "-chardev", f"file,id=install-result,path={w}/result.txt",
        "-device", "virtserialport,chardev=install-result,name=org.ca-appliance.install-result.0",
    ]


def test_kvm_uses_the_host_cpu_and_memory_never_below_anacondas_minimum(tmp_path):
    cfg = load_config(overrides={"image": {"memory_mb": 1024}})
    cmd = fedora.anaconda_qemu_command(
        cfg, kernel=tmp_path / "k", initrd=tmp_path / "i", iso=tmp_path / "o", disk=tmp_path / "d",
        serial_log=tmp_path / "s", installer_log=tmp_path / "a", result_log=tmp_path / "r", accel="kvm", tree=TREE)
    assert cmd[cmd.index("-accel") + 1] == "kvm" and cmd[cmd.index("-cpu") + 1] == "host"
    assert cmd[cmd.index("-m") + 1] == "2048"


# --- the OEMDRV volume


def test_oemdrv_iso_reads_back_complete_and_byte_identical(tmp_path):
    cfg = load_config()
    payload = write_payload_tarball(cfg, tmp_path / PAYLOAD_NAME)
    binary = tmp_path / "step-ca-build"
    binary.write_bytes(os.urandom(3 * 1024 * 1024 + 17))   # bigger than one extent, odd length
    artifact = Artifact("step-ca", "local", "binary", binary, hashlib.sha256(binary.read_bytes()).hexdigest())
    vf = artifact_volume_file(artifact)
    ks = tmp_path / "ks.cfg"
    ks.write_text(render_kickstart(cfg, [vf]))
    files = {"ks.cfg": ks, PAYLOAD_NAME: payload, vf.name: binary}
    iso_path = write_volume_iso(tmp_path / "oemdrv.iso", files, OEMDRV_LABEL)

    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "OEMDRV"
        names = sorted(c.rock_ridge.name().decode() for c in iso.list_children(rr_path="/")
                       if c.rock_ridge and c.file_identifier() not in (b".", b".."))
        assert names == sorted(files)
        for name, source in files.items():
            for key in ("rr_path", "joliet_path"):
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **{key: f"/{name}"})
                assert out.getvalue() == source.read_bytes(), f"{name} via {key}"
    finally:
        iso.close()
    # what udev sees, and so what /dev/disk/by-label/OEMDRV and dracut's LABEL=OEMDRV find
    probe = subprocess.run(["blkid", "-p", "-o", "export", str(iso_path)], capture_output=True, text=True)
    assert "TYPE=iso9660" in probe.stdout and "LABEL=OEMDRV" in probe.stdout, probe.stdout + probe.stderr


def test_iso_refuses_a_missing_source(tmp_path):
    with pytest.raises(StepFailed, match="does not exist"):
        write_volume_iso(tmp_path / "x.iso", {"ks.cfg": tmp_path / "nope"}, OEMDRV_LABEL)
    assert not (tmp_path / "x.iso").exists()


# --- .treeinfo and the boot files, from a tree on a loopback HTTP server


REPOMD = ('<?xml version="1.0" encoding="UTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">'
          '<revision>1761900000</revision></repomd>\n')


class Tree:
    """A mirror tree: the Server tree's .treeinfo and pxeboot files, and the index (repodata/repomd.xml)
    of each repository the kickstart uses unless left out."""

    def __init__(self, root: Path, release: int = 45, without: tuple[str, ...] = ()):
        self.root = root
        self.dir = root / f"releases/{release}/Server/x86_64/os"
        (self.dir / "images/pxeboot").mkdir(parents=True)
        for repo in (f"releases/{release}/Server/x86_64/os", f"releases/{release}/Everything/x86_64/os",
                     f"updates/{release}/Everything/x86_64"):
            if repo not in without:
                (root / repo / "repodata").mkdir(parents=True, exist_ok=True)
                (root / repo / "repodata/repomd.xml").write_text(REPOMD)
        self.kernel = os.urandom(200_000)
        self.initrd = os.urandom(300_000)
        (self.dir / "images/pxeboot/vmlinuz").write_bytes(self.kernel)
        (self.dir / "images/pxeboot/initrd.img").write_bytes(self.initrd)
        self.write_treeinfo()

    def write_treeinfo(self, **override):
        sums = {"images/pxeboot/vmlinuz": "sha256:" + hashlib.sha256(self.kernel).hexdigest(),
                "images/pxeboot/initrd.img": "sha256:" + hashlib.sha256(self.initrd).hexdigest(),
                "images/install.img": "sha256:" + "0" * 64}
        sums.update(override)
        body = "".join(f"{k} = {v}\n" for k, v in sums.items() if v is not None)
        (self.dir / ".treeinfo").write_text(
            "[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n[release]\nname = Fedora\nshort = Fedora\n"
            "version = 45\n\n[images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n\n"
            f"[checksums]\n{body}")


def serve(tree: Tree):
    """The tree on a real HTTP server on 127.0.0.1 (python's http.server); stop it with tree.server."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tree.root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tree.mirror = f"http://127.0.0.1:{server.server_address[1]}"
    tree.requests = requests
    tree.server = server
    return tree


@pytest.fixture
def served_tree(tmp_path):
    tree = serve(Tree(tmp_path / "mirror"))
    yield tree
    tree.server.shutdown()
    tree.server.server_close()


def test_parse_treeinfo_reads_the_checksums_section():
    sums = fedora.parse_treeinfo("[checksums]\nimages/pxeboot/vmlinuz = sha256:ABCDEF\nImages/X = sha512:00\n")
    assert sums == {"images/pxeboot/vmlinuz": ("sha256", "abcdef"), "Images/X": ("sha512", "00")}
    with pytest.raises(StepFailed, match="no \\[checksums\\] section"):
        fedora.parse_treeinfo("[header]\nversion = 1.2\n")


def test_boot_files_are_fetched_verified_and_then_reused_from_the_cache(served_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    tree = fedora.tree_url(served_tree.mirror, 45)
    kernel, initrd = fedora.fetch_boot_files(tree, 45, say=lambda m: None)
    assert kernel.read_bytes() == served_tree.kernel and initrd.read_bytes() == served_tree.initrd
    assert kernel.parent == tmp_path / "cache" / "fedora" / "45"
    served_tree.requests.clear()
    said = []
    assert fedora.fetch_boot_files(tree, 45, say=said.append) == (kernel, initrd)
    assert [p for p in served_tree.requests if "pxeboot" in p] == []    # only .treeinfo again
    assert all("cached, verified" in m for m in said)


def test_checksum_mismatch_fails_and_leaves_nothing(served_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    served_tree.write_treeinfo(**{"images/pxeboot/initrd.img": "sha256:" + "ab" * 32})
    with pytest.raises(StepFailed) as e:
        fedora.fetch_boot_files(fedora.tree_url(served_tree.mirror, 45), 45, say=lambda m: None)
    assert "initrd.img does not match the tree's .treeinfo" in str(e.value)
    assert "ab" * 32 in str(e.value) and hashlib.sha256(served_tree.initrd).hexdigest() in str(e.value)
    cached = tmp_path / "cache" / "fedora" / "45"
    assert not (cached / "initrd.img").exists() and not list(cached.glob("*.part"))


def test_a_cached_file_that_no_longer_matches_is_downloaded_again(served_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    tree = fedora.tree_url(served_tree.mirror, 45)
    kernel, _ = fedora.fetch_boot_files(tree, 45, say=lambda m: None)
    kernel.write_bytes(b"damaged")
    kernel, _ = fedora.fetch_boot_files(tree, 45, say=lambda m: None)
    assert kernel.read_bytes() == served_tree.kernel


def test_treeinfo_without_a_boot_file_checksum_fails(served_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    served_tree.write_treeinfo(**{"images/pxeboot/vmlinuz": None})
    with pytest.raises(StepFailed, match="lists no checksum for images/pxeboot/vmlinuz"):
        fedora.fetch_boot_files(fedora.tree_url(served_tree.mirror, 45), 45, say=lambda m: None)


def test_a_release_the_mirror_lacks_is_a_user_error_saying_what_the_mirror_must_carry(served_tree, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError) as e:
        fedora.fetch_boot_files(fedora.tree_url(served_tree.mirror, 46), 46, say=lambda m: None)
    assert str(e.value) == (
        f"config error: fedora.release/fedora.mirror: {served_tree.mirror}/releases/46/Server/x86_64/os/.treeinfo "
        "does not exist (HTTP 404); the mirror must carry releases/46/Server/x86_64/os/, "
        "releases/46/Everything/x86_64/os/ and updates/46/Everything/x86_64/ (each with its repodata/)")


# --- every repository the kickstart uses, checked before the installer starts (issue 22)


@pytest.mark.parametrize("missing, what", [
    ("releases/45/Server/x86_64/os", "Server tree"),
    ("releases/45/Everything/x86_64/os", "Everything tree"),
    ("updates/45/Everything/x86_64", "updates"),
])
def test_a_partial_mirror_names_the_missing_repository_and_what_a_mirror_must_carry(tmp_path, missing, what):
    tree = serve(Tree(tmp_path / "mirror", without=(missing,)))
    try:
        with pytest.raises(UserError) as e:
            fedora.check_repositories(tree.mirror, 45)
    finally:
        tree.server.shutdown()
        tree.server.server_close()
    message = str(e.value)
    assert "\n" not in message and e.value.exit_code == 2
    assert message == (
        f"config error: fedora.mirror: the {what} of Fedora 45 is missing ({tree.mirror}/{missing}/repodata/repomd.xml "
        "does not exist); the kickstart installs from three repositories, so the mirror must carry "
        "releases/45/Server/x86_64/os/, releases/45/Everything/x86_64/os/ and updates/45/Everything/x86_64/ "
        "(each with its repodata/)")
    # each repository asked for its index, in the kickstart's order, up to the missing one
    asked = [p for p in tree.requests if p.endswith("repomd.xml")]
    assert asked[-1] == f"/{missing}/repodata/repomd.xml"


def test_a_complete_mirror_passes_over_http_and_as_a_local_copy(served_tree):
    fedora.check_repositories(served_tree.mirror, 45)
    assert sorted(p for p in served_tree.requests if p.endswith("repomd.xml")) == [
        "/releases/45/Everything/x86_64/os/repodata/repomd.xml", "/releases/45/Server/x86_64/os/repodata/repomd.xml",
        "/updates/45/Everything/x86_64/repodata/repomd.xml"]
    fedora.check_repositories(f"file://{served_tree.root}", 45)
    (served_tree.root / "updates/45/Everything/x86_64/repodata/repomd.xml").unlink()
    with pytest.raises(UserError, match="the updates of Fedora 45 is missing"):
        fedora.check_repositories(f"file://{served_tree.root}", 45)


def test_a_mirror_that_answers_with_an_error_is_a_failed_step_not_a_missing_repository(tmp_path):
    class Broken(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(503, "Service Unavailable")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StepFailed, match="repomd.xml: HTTP 503"):
            fedora.check_repositories(f"http://127.0.0.1:{server.server_address[1]}", 45)
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_mirror_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(StepFailed, match="cannot reach 127.0.0.1:9 .*fedora.mirror"):
        fedora.fetch_boot_files("http://127.0.0.1:9/os/", 45, say=lambda m: None)


def test_file_mirror_is_served_to_the_guest_over_http(tmp_path):
    tree = Tree(tmp_path / "mirror")
    with fedora.guest_visible_mirror(f"file://{tree.root}") as url:
        assert url.startswith("http://10.0.2.2:")
        host_side = url.replace("10.0.2.2", "127.0.0.1") + "/releases/45/Server/x86_64/os/images/pxeboot/vmlinuz"
        assert urllib.request.urlopen(host_side, timeout=10).read() == tree.kernel
    with fedora.guest_visible_mirror("https://mirror.example/fedora") as url:
        assert url == "https://mirror.example/fedora"


# --- following the install


def test_progress_lines_from_anacondas_text_output():
    progress = fedora.InstallProgress()
    lines = ["\x1b[0;32mStarting automated install\x1b[0m.......", "Configuring storage",
             "Configuring storage", "Downloading 500 RPMs, 10 MiB / 800 MiB (1%) done.",
             "Downloading 500 RPMs, 12 MiB / 800 MiB (1%) done.",
             "Downloading 500 RPMs, 90 MiB / 800 MiB (11%) done."]
    lines += [f"Installing pkg{i}.x86_64 ({i}/500)" for i in range(1, 501)]
    lines += ["Configuring pkg1.x86_64", "Running post-installation scripts", "random noise"]
    shown = [m for line in lines if (m := progress.feed(line))]
    assert shown[0] == "Starting automated install......."
    assert shown.count("Configuring storage") == 1
    assert "downloading 500 packages: 1%" in shown and "downloading 500 packages: 11%" in shown
    package_lines = [m for m in shown if m.startswith("installing packages")]
    assert package_lines[0] == "installing packages: 1/500 (pkg1.x86_64)"
    assert package_lines[-1] == "installing packages: 500/500 (pkg500.x86_64)"
    assert len(package_lines) == 11
    assert shown[-1] == "Running post-installation scripts"
    assert progress.fatal is None
    panic = "[  12.3] Kernel panic - not syncing: VFS"
    assert progress.feed(panic) == f"installer: {panic}"
    assert progress.fatal == "[ 12.3] Kernel panic - not syncing: VFS"   # quoted with its spaces collapsed
    assert progress.fatal_meaning == "the installer's kernel panicked"


def test_install_result_needs_the_success_marker(tmp_path):
    result = tmp_path / "result.txt"
    result.write_text("release: Fedora Linux 45 (Server Edition)\nbash 5.3.0-1.fc45\nstep-ca 0.30.2-1\n")
    assert fedora.read_install_result(result) is None
    result.write_text(result.read_text() + SUCCESS_MARKER + "\n")
    assert fedora.read_install_result(result) == ("Fedora Linux 45 (Server Edition)",
                                                  ["bash 5.3.0-1.fc45", "step-ca 0.30.2-1"])
    assert fedora.read_install_result(tmp_path / "missing") is None


def test_installer_timeout_stops_qemu_and_shows_the_log_tail(tmp_path):
    runner = Runner(tmp_path / "build.log")
    serial, installer = tmp_path / "serial.log", tmp_path / "anaconda.log"
    # A real QEMU that never finishes: no disk, no kernel; SeaBIOS waits for a boot device.
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "64", "-display", "none", "-monitor", "none",
           "-serial", f"file:{serial}", "-no-reboot", "-boot", "menu=off"]
    installer.write_text("INFO anaconda: line one\nERROR anaconda: the real reason\n")
    with pytest.raises(StepFailed) as e:
        fedora.run_installer(cmd, serial_log=serial, installer_log=installer, timeout=3, runner=runner, poll_s=0.5)
    message = str(e.value)
    assert "did not finish within 3s" in message
    assert "the real reason" in message and str(installer) in message
    # QEMU really ran (its serial log exists), and no process with this command line is left
    assert serial.exists()
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if str(serial) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                left.append(proc.name)
        except OSError:
            pass
    assert left == []


def test_qemu_that_cannot_start_is_a_failed_step(tmp_path):
    runner = Runner(tmp_path / "build.log")
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-display", "none", "-no-such-option"]
    with pytest.raises(StepFailed, match="qemu exited with status 1"):
        fedora.run_installer(cmd, serial_log=tmp_path / "serial.log", installer_log=tmp_path / "anaconda.log",
                             timeout=60, runner=runner, poll_s=0.2)


def payload_with(tmp_path, members):
    path = tmp_path / "payload.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in members:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return path


def test_payload_must_bring_the_units_the_kickstart_enables(tmp_path):
    complete = payload_with(tmp_path, ["etc/systemd/system/step-ca.service",
                                       "etc/systemd/system/ca-appliance-firstboot.service"])
    fedora.check_payload_units(complete)
    lacking = payload_with(tmp_path, ["etc/systemd/system/step-ca.service"])
    with pytest.raises(StepFailed, match="lacks ca-appliance-firstboot.service"):
        fedora.check_payload_units(lacking)


def test_build_raw_runs_the_whole_chain_up_to_qemu(served_tree, tmp_path, monkeypatch):
    """Everything but Anaconda for real: fetch + verify, OEMDRV ISO, raw disk, QEMU. The served
    'kernel' is random bytes, so QEMU refuses it and build_raw must say so with the logs."""
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CA_APPLIANCE_ACCEL", "tcg")
    cfg = load_config(overrides={"fedora": {"mirror": served_tree.mirror}, "image": {"disk_gb": 4}})
    payload = payload_with(tmp_path, ["etc/systemd/system/step-ca.service",
                                      "etc/systemd/system/ca-appliance-firstboot.service"])
    binary = tmp_path / "step-ca"
    binary.write_bytes(b"\x7fELF" + os.urandom(100))
    artifact = Artifact("step-ca", "local", "binary", binary, hashlib.sha256(binary.read_bytes()).hexdigest())
    runner = Runner(tmp_path / "build.log")
    with pytest.raises(StepFailed) as e:
        fedora.build_raw(cfg, workdir=tmp_path / "work", runner=runner, artifacts=[artifact], payload=payload)
    assert "qemu exited with status" in str(e.value)
    work = tmp_path / "work"
    assert (work / "fedora-45.raw").stat().st_size == 4 * 1024 ** 3
    ks = (work / "ks.cfg").read_text()
    assert f"url --url={served_tree.mirror}/releases/45/Server/x86_64/os/" in ks
    iso = pycdlib.PyCdlib()
    iso.open(str(work / "oemdrv.iso"))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/step-ca")
        assert out.getvalue() == binary.read_bytes()
    finally:
        iso.close()
    assert "qemu-system-x86_64" in (tmp_path / "build.log").read_text()
    # the installer's logs outlive the work directory: they sit next to the build log
    assert (tmp_path / "build.anaconda-serial.log").exists()
    assert str(tmp_path / "build.anaconda") in str(e.value)


# --- Anaconda never waits for a person in a build (issue 22): recorded console transcripts
# tests/fixtures/anaconda/*.log are stand-ins written from Anaconda 45.21's sources (see its README):
# Anaconda cannot run here.

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "fixtures" / "anaconda"
STOPS = {
    "repository-error.log": ("(Error setting up repositories) (Installation source not set up)",
                             "a repository the kickstart uses could not be set up"),
    "missing-package.log": ("(http://10.0.2.2:41237/releases/45/Server/x86_64/os/) (Error checking software selection)",
                            "a package or group the kickstart asks for is missing"),
    "storage-error.log": ("(Error checking storage configuration) (Kdump is enabled)",
                          "the kickstart's storage layout cannot be made"),
    "post-script-error.log": ("There was an error running the kickstart script at line 118. This is a fatal",
                              "a %pre or %post with --erroronfail failed"),
    "payload-error.log": ("The following error occurred while installing the payload. This is a fatal",
                          "a package failed to install"),
    "unexpected-error.log": ("An unknown error has occured, look at the /tmp/anaconda-tb* file(s) for more details",
                             "Anaconda hit an unexpected error"),
}


def feed_all(name: str) -> tuple[fedora.InstallProgress, list[str]]:
    progress = fedora.InstallProgress()
    shown = [m for line in (TRANSCRIPTS / name).read_text().splitlines() if (m := progress.feed(line))]
    return progress, shown


@pytest.mark.parametrize("name", sorted(STOPS))
def test_every_error_state_of_anacondas_text_ui_is_recognised_in_its_own_words(name):
    progress, _ = feed_all(name)
    quoted, meaning = STOPS[name]
    assert (progress.fatal, progress.fatal_meaning) == (quoted, meaning)
    assert progress.stop_reason.startswith(f'Anaconda stopped: "{quoted}" ({meaning})')


def test_a_failed_post_names_our_last_line_with_anacondas_dialog():
    progress, shown = feed_all("post-script-error.log")
    assert progress.stop_reason == (
        'Anaconda stopped: "There was an error running the kickstart script at line 118. This is a fatal" '
        '(a %pre or %post with --erroronfail failed); the last %post line: "ca-appliance: step CLI failed: '
        'artifacts.step_cli is enabled but /usr/bin/step is missing (its package makes it with `alternatives`: '
        'is that installed?)"')
    # the %post's progress was on the console as it ran: each step line once
    assert "ca-appliance: installing step-ca.rpm" in shown
    assert shown.count("ca-appliance: ca-appliance provision --base fedora") == 1


def test_a_good_install_stops_nowhere_and_shows_the_post_steps_live():
    progress, shown = feed_all("success.log")
    assert progress.fatal is None and progress.stop_reason is None
    posts = [m for m in shown if m.startswith("ca-appliance:")]
    assert posts[0] == "ca-appliance: payload copied from /dev/disk/by-label/OEMDRV to /var/tmp/ca-appliance-install"
    assert "ca-appliance: protective MBR of /dev/vda: boot flag clear" in posts
    assert posts[-1] == "ca-appliance: install reported to the builder"
    assert "Running post-installation scripts" in shown and "installing packages: 612/612 (step-ca.x86_64)" in shown


def test_our_own_post_lines_are_never_taken_for_anacondas():
    progress = fedora.InstallProgress()
    assert progress.feed("ca-appliance: Traceback (most recent call last): in a %post") is not None
    assert progress.fatal is None


# A stand-in for QEMU running Anaconda: writes a recorded transcript to the serial log, then waits
# (as Anaconda waits for a person at a dialog) until it is killed.
CONSOLE_STAND_IN = """
import sys, time
transcript, serial = sys.argv[1], sys.argv[2]
with open(serial, "a") as out:
    for line in open(transcript):
        out.write(line.replace("\\n", "\\r\\n"))
        out.flush()
        time.sleep(0.01)
time.sleep(3600)
"""


def processes_with(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(proc.name)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("name", ["repository-error.log", "post-script-error.log"])
def test_an_installer_that_waits_for_a_person_fails_the_build_in_seconds_with_one_line(tmp_path, name):
    runner = Runner(tmp_path / "build.log")
    serial, installer = tmp_path / "build.anaconda-serial.log", tmp_path / "build.anaconda.log"
    installer.write_text("INFO anaconda: the installer's own log, from its virtio-serial port\n")
    cmd = [sys.executable, "-c", CONSOLE_STAND_IN, str(TRANSCRIPTS / name), str(serial)]
    started = time.monotonic()
    with pytest.raises(StepFailed) as e:
        fedora.run_installer(cmd, serial_log=serial, installer_log=installer, timeout=3600, runner=runner,
                             poll_s=0.5)
    took = time.monotonic() - started
    assert took < fedora.FATAL_GRACE_S + 10, took          # seconds, not the 90-minute (KVM) timeout
    message = str(e.value)
    assert "\n" not in message and e.value.exit_code == 1
    quoted, meaning = STOPS[name]
    assert f'Anaconda stopped: "{quoted}" ({meaning})' in message
    assert message.endswith(f"; serial console: {serial} (log: {installer})")
    assert processes_with(str(serial)) == []                 # the stand-in (the VM) is gone


def test_the_progress_shows_our_post_lines_while_the_install_runs(tmp_path):
    out = io.StringIO()
    runner = Runner(tmp_path / "build.log", out=out)
    serial = tmp_path / "serial.log"
    script = CONSOLE_STAND_IN.replace("time.sleep(3600)", "")   # a good install ends by itself
    fedora.run_installer([sys.executable, "-c", script, str(TRANSCRIPTS / "success.log"), str(serial)],
                         serial_log=serial, installer_log=tmp_path / "anaconda.log", timeout=60, runner=runner,
                         poll_s=0.2)
    said = out.getvalue().splitlines()
    assert "    ca-appliance: protective MBR of /dev/vda: boot flag clear" in said
    assert "    ca-appliance: payload installed and provisioned" in said


def test_build_raw_stops_before_the_installer_starts_when_a_repository_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CA_APPLIANCE_ACCEL", "tcg")
    tree = serve(Tree(tmp_path / "mirror", without=("releases/45/Everything/x86_64/os",)))
    try:
        cfg = load_config(overrides={"fedora": {"mirror": tree.mirror}, "image": {"disk_gb": 4}})
        payload = payload_with(tmp_path, ["etc/systemd/system/step-ca.service",
                                          "etc/systemd/system/ca-appliance-firstboot.service"])
        binary = tmp_path / "step-ca"
        binary.write_bytes(b"\x7fELF" + os.urandom(100))
        artifact = Artifact("step-ca", "local", "binary", binary, hashlib.sha256(binary.read_bytes()).hexdigest())
        with pytest.raises(UserError, match="the Everything tree of Fedora 45 is missing"):
            fedora.build_raw(cfg, workdir=tmp_path / "work", runner=Runner(tmp_path / "build.log"),
                             artifacts=[artifact], payload=payload)
    finally:
        tree.server.shutdown()
        tree.server.server_close()
    assert not (tmp_path / "work" / "fedora-45.raw").exists()            # no disk, no installer run
    assert "qemu-system-x86_64" not in (tmp_path / "build.log").read_text()
    assert not [p for p in tree.requests if "pxeboot" in p]                # nothing downloaded first
