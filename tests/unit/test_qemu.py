"""The QEMU layer without booting anything: command line, credential encoding, ports, overlay."""
import base64
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from image.errors import UserError
from image.vm.qemu import (
    HARDWARE,
    VM,
    Hardware,
    QemuSpec,
    free_port,
    image_format,
    loggable,
    qemu_command,
    write_credential_files,
)

# a CA password of every length modulo 3 (base64 pads 0, 2 or 1 '='), from tiny to beyond SMBIOS's few KiB
SECRET_LENGTHS = [1, 2, 3, 29, 30, 31, 6000, 6001, 6002]


def secret_answers(length):
    """Answers whose CA password has `length` characters, and that password."""
    password = ("Sekr3t-" * (length // 7 + 1))[:length]
    return f"hostname: ca.test\nca: {{password: '{password}'}}\n".encode(), password


def exposures(data: bytes, password: str):
    """Every form in which a secret could show on a command line: raw, and base64 at each alignment."""
    forms = {password, data.decode()}
    for start in range(3):
        encoded = base64.b64encode(data[start:]).decode().rstrip("=")
        forms.add(encoded[:-4] if len(encoded) > 8 else encoded)
    return {form for form in forms if len(form) >= 1}


def spec(tmp_path, **kw):
    base = dict(disk=tmp_path / "overlay.qcow2", cpus=2, memory_mb=4096, accel="tcg",
                serial_socket=tmp_path / "serial.sock", serial_log=tmp_path / "serial.log",
                pidfile=tmp_path / "qemu.pid", credential_dir=tmp_path / "cred")
    base.update(kw)
    return QemuSpec(**base)


def option(cmd, flag):
    """Every value given to `flag` in a command line."""
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]


def test_cpus_memory_and_accel_come_from_the_spec(tmp_path):
    cmd = qemu_command(spec(tmp_path, cpus=3, memory_mb=2048, accel="tcg"))
    assert option(cmd, "-smp") == ["3"]
    assert option(cmd, "-m") == ["2048"]
    assert option(cmd, "-accel") == ["tcg"]
    assert option(cmd, "-display") == ["none"]


def test_kvm_uses_the_host_cpu(tmp_path):
    cmd = qemu_command(spec(tmp_path, accel="kvm"))
    assert option(cmd, "-accel") == ["kvm"] and option(cmd, "-cpu") == ["host"]


def test_an_accelerator_other_than_kvm_or_tcg_is_refused(tmp_path):
    with pytest.raises(ValueError):
        qemu_command(spec(tmp_path, accel="auto"))


def test_the_vm_boots_the_overlay_never_the_image(tmp_path):
    drives = option(qemu_command(spec(tmp_path)), "-drive")
    assert drives == [f"file={tmp_path / 'overlay.qcow2'},format=qcow2,if=virtio,cache=writeback"]


@pytest.mark.parametrize("row, machine, controller, disk_device, nic", [
    ("virtualbox", "pc", "ich9-ahci,id=ctrl0", "ide-hd,bus=ctrl0.0,drive=disk0,bootindex=0", "e1000,netdev=net0"),
    ("vsphere", "pc", "pvscsi,id=ctrl0", "scsi-hd,bus=ctrl0.0,scsi-id=0,lun=0,drive=disk0,bootindex=0",
     "vmxnet3,netdev=net0"),
    ("lsi-scsi", "pc", "lsi53c895a,id=ctrl0", "scsi-hd,bus=ctrl0.0,scsi-id=0,lun=0,drive=disk0,bootindex=0",
     "e1000,netdev=net0"),
])
def test_each_target_boots_its_disk_on_its_own_controller_and_nic(tmp_path, row, machine, controller,
                                                                   disk_device, nic):
    cmd = qemu_command(spec(tmp_path, hardware=HARDWARE[row]))
    assert option(cmd, "-machine") == [machine]
    assert option(cmd, "-drive") == [f"file={tmp_path / 'overlay.qcow2'},format=qcow2,cache=writeback,"
                                     "if=none,id=disk0"]
    devices = option(cmd, "-device")
    assert devices[:2] == [controller, disk_device] and nic in devices
    assert "virtio-net-pci,netdev=net0" not in devices


def test_the_default_hardware_is_libvirts_q35_with_virtio(tmp_path):
    cmd = qemu_command(spec(tmp_path))
    assert option(cmd, "-machine") == ["q35"] and "virtio-net-pci,netdev=net0" in option(cmd, "-device")


def test_an_unknown_disk_controller_is_refused(tmp_path):
    with pytest.raises(ValueError, match="megasas"):
        qemu_command(spec(tmp_path, hardware=Hardware("x", "pc", "megasas", "e1000")))


def test_forwards_listen_on_loopback_only(tmp_path):
    cmd = qemu_command(spec(tmp_path, hostfwds={40022: 22, 40443: 443},
                            guestfwds={("10.0.2.100", 80): "socat - TCP:127.0.0.1:40080"}))
    (netdev,) = option(cmd, "-netdev")
    parts = netdev.split(",")
    assert parts[:2] == ["user", "id=net0"]
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in parts
    assert "hostfwd=tcp:127.0.0.1:40443-:443" in parts
    assert "guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:40080" in parts


def test_commas_in_paths_are_escaped_for_qemu(tmp_path):
    weird = tmp_path / "a,b"
    cmd = qemu_command(spec(tmp_path, disk=weird / "overlay.qcow2"))
    assert option(cmd, "-drive")[0].startswith(f"file={tmp_path}/a,,b/overlay.qcow2,format=qcow2")


def test_serial_console_is_a_socket_that_qemu_also_logs(tmp_path):
    cmd = qemu_command(spec(tmp_path))
    (chardev,) = option(cmd, "-chardev")
    assert chardev.startswith("socket,id=serial0,")
    assert f"path={tmp_path / 'serial.sock'}" in chardev.split(",")
    assert f"logfile={tmp_path / 'serial.log'}" in chardev.split(",")
    assert "server=on" in chardev and "wait=off" in chardev
    assert option(cmd, "-serial") == ["chardev:serial0"]


@pytest.mark.parametrize("length", SECRET_LENGTHS)
def test_a_credential_of_any_size_goes_in_as_an_fw_cfg_file_never_on_the_command_line(tmp_path, length):
    answers, password = secret_answers(length)
    cmd = qemu_command(spec(tmp_path, credentials={"ca-appliance.answers": answers}))
    assert not option(cmd, "-smbios")
    assert option(cmd, "-fw_cfg") == [
        f"name=opt/io.systemd.credentials/ca-appliance.answers,file={tmp_path / 'cred' / 'ca-appliance.answers'}"]
    line = "\0".join(cmd)
    for form in exposures(answers, password):
        if len(form) >= 4:
            assert form not in line


def test_credentials_without_a_directory_for_their_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="credential_dir"):
        qemu_command(spec(tmp_path, credential_dir=None, credentials={"ca-appliance.answers": b"x"}))


@pytest.mark.parametrize("name", ["a,b", "a/b", "..", "", "x=y", "n" * 40])
def test_a_credential_name_qemu_or_systemd_would_misread_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="credential name"):
        qemu_command(spec(tmp_path, credentials={name: b"x"}))


def test_credential_files_are_private_and_never_follow_a_planted_link(tmp_path):
    directory = tmp_path / "cred"
    directory.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (directory / "ca-appliance.answers").symlink_to(victim)
    write_credential_files(directory, {"ca-appliance.answers": b"ca: {password: x}\n"})
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    path = directory / "ca-appliance.answers"
    assert not path.is_symlink() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == b"ca: {password: x}\n"
    assert victim.read_text() == "untouched"


def test_a_credential_directory_that_is_a_link_is_refused(tmp_path):
    from image.errors import StepFailed
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "cred").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StepFailed, match="cred"):
        write_credential_files(tmp_path / "cred", {"ca-appliance.answers": b"x"})
    assert not (tmp_path / "elsewhere" / "ca-appliance.answers").exists()


def test_a_real_qemu_gets_every_credential_as_a_file_and_shows_none_in_argv_or_its_log(tmp_path):
    """A real QEMU process (the guest has nothing to boot, it idles in the firmware): its
    /proc/PID/cmdline, which every local user can read, and qemu.log hold no credential of any
    length modulo 3, only file names; the files are 0600 in a 0700 directory."""
    image = tmp_path / "appliance.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    secrets = {f"ca-appliance.answers{suffix}": secret_answers(length)
               for suffix, length in (("", 30), (".one", 31), (".two", 32), (".big", 6001))}
    vm = VM(image, tmp_path / "vm", cpus=1, memory_mb=64, accel="tcg", keep=False,
            credentials={name: data for name, (data, _) in secrets.items()})
    with vm:
        vm.start()
        assert vm.is_running()
        cmdline = (Path(f"/proc/{vm.proc.pid}/cmdline")).read_bytes().decode()
        credential_dir = vm.spec.credential_dir
        assert stat.S_IMODE(os.stat(credential_dir).st_mode) == 0o700
        for name, (data, _password) in secrets.items():
            assert f"name=opt/io.systemd.credentials/{name},file={credential_dir / name}" in cmdline
            assert stat.S_IMODE(os.stat(credential_dir / name).st_mode) == 0o600
            assert (credential_dir / name).read_bytes() == data
        log = vm.qemu_log.read_text()
        assert "-fw_cfg" in log
        for data, password in secrets.values():
            for form in exposures(data, password):
                if len(form) >= 4:
                    assert form not in cmdline and form not in log
    assert not vm.is_running()


def test_uefi_adds_the_firmware_and_a_private_vars_copy(tmp_path):
    cmd = qemu_command(spec(tmp_path, uefi_vars=tmp_path / "VARS.fd"))
    drives = option(cmd, "-drive")
    assert any("if=pflash" in d and "readonly=on" in d for d in drives)
    assert any(d.endswith(f"file={tmp_path / 'VARS.fd'}") for d in drives)
    assert not any("pflash" in d for d in option(qemu_command(spec(tmp_path)), "-drive"))


def test_free_port_is_bindable_and_avoids_taken_ones():
    first = free_port()
    second = free_port(taken=[first])
    assert first != second
    for port in (first, second):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_vm_picks_distinct_host_ports_for_each_forward(tmp_path):
    vm = VM(tmp_path / "img.qcow2", tmp_path / "vm", cpus=1, memory_mb=1024, accel="tcg",
            ports={"ssh": 22, "ca": 443, "http": 80})
    assert len(set(vm.ports.values())) == 3
    assert vm.spec.hostfwds == {vm.ports["ssh"]: 22, vm.ports["ca"]: 443, vm.ports["http"]: 80}


def test_overlay_is_backed_by_the_image_which_stays_unchanged(tmp_path):
    image = tmp_path / "appliance.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    before = image.read_bytes()
    vm = VM(image, tmp_path / "vm", cpus=1, memory_mb=1024, accel="tcg",
            credentials={"ca-appliance.answers": b"hostname: x.test\n"})
    vm.create_overlay()
    info = subprocess.run(["qemu-img", "info", "--output=json", str(vm.spec.disk)],
                          check=True, capture_output=True, text=True).stdout
    assert f'"backing-filename": "{image}"' in info and '"backing-filename-format": "qcow2"' in info
    assert (vm.spec.credential_dir / "ca-appliance.answers").read_bytes() == b"hostname: x.test\n"
    assert image.read_bytes() == before
    vm.close()
    assert not (tmp_path / "vm").exists()


def test_a_raw_image_is_named_raw_for_the_overlay(tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    assert image_format(raw) == "raw"


def test_a_missing_image_is_a_user_error_naming_it(tmp_path):
    vm = VM(tmp_path / "nope.qcow2", tmp_path / "vm", cpus=1, memory_mb=1024, accel="tcg")
    with pytest.raises(UserError, match="nope.qcow2"):
        vm.create_overlay()


def test_a_qemu_that_cannot_start_fails_the_step_with_its_log(tmp_path):
    """A real QEMU that cannot open its disk (the image went away under the overlay): the error
    names the step and carries QEMU's own words."""
    from image.errors import StepFailed
    image = tmp_path / "appliance.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    vm = VM(image, tmp_path / "vm", cpus=1, memory_mb=1024, accel="tcg")
    vm.create_overlay()
    image.unlink()
    with vm, pytest.raises(StepFailed) as failure:
        vm.start()          # may already notice; if not, the next look at QEMU does
        vm.proc.wait(timeout=60)
        vm.check_alive("boot")
    assert "qemu exited with status 1" in str(failure.value)
    assert "appliance.qcow2" in str(failure.value)
    assert not vm.is_running()


@pytest.mark.parametrize("length", SECRET_LENGTHS)
def test_an_inline_credential_is_never_logged_whatever_its_length(length):
    """Defence in depth: qemu_command no longer puts credentials inline, but a command line that
    does (SMBIOS type 11 or fw_cfg string=) is logged without them; base64 ends in 0, 1 or 2 '='."""
    data, password = secret_answers(length)
    encoded = base64.b64encode(data).decode()
    cmd = ["qemu-system-x86_64",
           "-smbios", f"type=11,value=io.systemd.credential.binary:ca-appliance.answers={encoded}",
           "-smbios", f"type=11,value=io.systemd.credential:plain=hostname: x\nca: {{password: '{password}'}}",
           "-fw_cfg", f"name=opt/io.systemd.credentials/x,string={password}", "-m", "4096"]
    shown = " ".join(loggable(cmd))
    for form in exposures(data, password):
        if len(form) >= 4:
            assert form not in shown
    assert len(password) < 4 or password not in shown
    assert "io.systemd.credential.binary:ca-appliance.answers=<" in shown and "-m 4096" in shown


def test_the_console_logs_what_the_guest_shows_never_what_is_typed(tmp_path):
    """vm.console() on a real UNIX socket standing where QEMU's serial chardev listens: the session
    reads the guest's output into the log, and a typed secret reaches the guest but not the log."""
    import io
    import threading
    vm = VM(tmp_path / "img.qcow2", tmp_path / "vm", cpus=1, memory_mb=1024, accel="tcg")
    vm.spec.serial_socket.parent.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(vm.spec.serial_socket))
    server.listen(1)
    typed = []

    def guest():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"CA password: ")
            typed.append(conn.recv(100))
            conn.sendall(b"\r\nYour CA is ready.\r\n")

    thread = threading.Thread(target=guest, daemon=True)
    thread.start()
    log = io.StringIO()
    session = vm.console(timeout=10, logfile=log)
    session.expect("CA password: ")
    session.sendline("s3cret-typed")
    session.expect("Your CA is ready.")
    thread.join(10)
    server.close()
    assert typed and b"s3cret-typed" in typed[0]
    assert "Your CA is ready." in log.getvalue() and "CA password: " in log.getvalue()
    assert "s3cret-typed" not in log.getvalue()
