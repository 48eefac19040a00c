"""The rendered kickstart: valid for pykickstart's F45 handler and for the ksvalidator command,
each config key where it belongs, the %post shell clean under shellcheck, and `invoke render`
end to end."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pykickstart import constants

from image.config import PROJECT_ROOT, load_config
from image.errors import StepFailed
from image.kickstart import (
    DRACUT_DRIVERS,
    EXTRA_PACKAGES,
    KICKSTART_DIR,
    OEMDRV_LABEL,
    PAYLOAD_NAME,
    VolumeFile,
    kickstart_syntax,
    planned_artifacts,
    render_kickstart,
    render_scripts,
    render_to,
    validate_kickstart,
)

VENV_BIN = Path(sys.executable).parent
KEY_1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1Y2t5bnVtYmVyc2V2ZW5lbGV2ZW50aGlydGVlbg admin@laptop"
KEY_2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bob's \"work\" key $HOME"
HASH = "$6$rounds=4096$saltsalt$Vd0mE0rA6Fq3qk8jA9Gm1yF7y5yK0m0C9kqk1.FZ9w5S0pZ1e2/3u4v5w6x7y8z9"

RPMS = [VolumeFile("step-ca.rpm", "step-ca", "rpm", "0.30.2", None, None, "to be fetched by the build"),
        VolumeFile("step-cli.rpm", "step-cli", "rpm", "0.30.6", None, None, "to be fetched by the build")]
BINARY = [VolumeFile("step-ca", "step-ca", "binary", "local", None, None, "local")]


def custom_config(tmp_path, **sections):
    data = {"fedora": {"release": 45, "mirror": "http://mirror.lab.example/fedora/linux"},
            "image": {"name": "lab-ca", "version": "2.3.4"},
            "ca": {"address": ":8443"},
            "admin": {"user": "opsadmin", "ssh_authorized_keys": [KEY_1, KEY_2], "password_hash": HASH}}
    data.update(sections)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def parsed(text, syntax="F45"):
    return validate_kickstart(text, syntax)


def test_default_config_renders_a_valid_f45_kickstart():
    cfg = load_config()
    text = render_kickstart(cfg, RPMS)
    handler = parsed(text)
    assert handler.selinux.selinux == constants.SELINUX_ENFORCING
    assert handler.firewall.enabled is True
    assert set(handler.firewall.services) == {"ssh", "https"}
    assert handler.firewall.ports == []          # :443 is https
    assert handler.rootpw.lock is True
    assert handler.displaymode.displayMode == constants.DISPLAY_MODE_TEXT
    assert handler.reboot.action == constants.KS_SHUTDOWN
    assert "\npoweroff\n" in text              # pykickstart reads poweroff and shutdown alike
    assert handler.firstboot.firstboot == constants.FIRSTBOOT_SKIP
    assert handler.bootloader.appendLine == "console=tty0 console=ttyS0,115200n8"
    assert handler.url.url == "https://dl.fedoraproject.org/pub/fedora/linux/releases/45/Server/x86_64/os/"
    assert [r.baseurl for r in handler.repo.repoList] == [
        "https://dl.fedoraproject.org/pub/fedora/linux/updates/45/Everything/x86_64/"]
    assert handler.packages.environment == "server-product-environment"
    assert set(EXTRA_PACKAGES) <= set(handler.packages.packageList)
    assert {"python3-cryptography", "python3-jwcrypto", "python3-pyyaml", "NetworkManager", "firewalld", "chrony",
            "qemu-guest-agent", "open-vm-tools", "cloud-utils-growpart"} <= set(handler.packages.packageList)
    (user,) = handler.user.userList
    assert user.name == "admin" and user.password == "" and "wheel" in user.groups
    assert handler.sshkey.sshUserList == []   # the default config has no keys


def test_each_config_key_lands_where_it_belongs(tmp_path):
    cfg = custom_config(tmp_path)
    text = render_kickstart(cfg, RPMS)
    handler = parsed(text)
    # fedora.release and fedora.mirror: the tree and the updates repo
    assert handler.url.url == "http://mirror.lab.example/fedora/linux/releases/45/Server/x86_64/os/"
    assert handler.repo.repoList[0].baseurl == "http://mirror.lab.example/fedora/linux/updates/45/Everything/x86_64/"
    # ca.address: its port is opened besides ssh and https
    assert handler.firewall.ports == ["8443:tcp"]
    # admin.user, admin.password_hash (crypted), admin.ssh_authorized_keys (quoting survives)
    (user,) = handler.user.userList
    assert user.name == "opsadmin"
    assert user.isCrypted is True and user.password == HASH
    # pykickstart takes one sshkey per user: the first key there, the others appended by the %post
    assert [(k.username, k.key) for k in handler.sshkey.sshUserList] == [("opsadmin", KEY_1)]
    install = [s for s in handler.scripts if s.inChroot][0].script
    assert f"<<'KEYS'\n{KEY_2}\nKEYS\n" in install
    assert "chown -R opsadmin: \"$admin_home/.ssh\"" in install
    # image.name and image.version: the header says what the kickstart is for
    assert "lab-ca 2.3.4" in text.splitlines()[0]
    # a password hash means sudo asks for it: no NOPASSWD rule then
    assert "NOPASSWD" not in text


def test_no_plaintext_password_anywhere(tmp_path):
    cfg = custom_config(tmp_path)
    text = render_kickstart(cfg, RPMS)
    assert "--plaintext" not in text
    for line in text.splitlines():
        if "--password" in line:
            assert "--iscrypted" in line
    handler = parsed(render_kickstart(load_config(), RPMS))
    assert handler.user.userList[0].password == ""   # no hash given: locked, key-only


def test_key_only_admin_gets_passwordless_sudo():
    text = render_kickstart(load_config(), RPMS)
    assert "admin ALL=(ALL) NOPASSWD: ALL" in text


def test_other_fedora_release_uses_its_own_tree_and_syntax(tmp_path):
    cfg = custom_config(tmp_path, fedora={"release": 44, "mirror": "https://mirror.example/pub/fedora/linux"})
    handler = parsed(render_kickstart(cfg, RPMS), "F44")
    assert "/releases/44/Server/x86_64/os/" in handler.url.url
    assert kickstart_syntax(44) == "F44"
    assert kickstart_syntax(99).startswith("F")  # the newest pykickstart knows


def test_post_installs_rpms_or_the_local_binary():
    rpm_text = render_kickstart(load_config(), RPMS)
    assert 'rpm --upgrade --replacepkgs "$staging"/step-ca.rpm' in rpm_text
    assert 'rpm --upgrade --replacepkgs "$staging"/step-cli.rpm' in rpm_text
    bin_text = render_kickstart(load_config(), BINARY)
    assert 'install -D -m 0755 -o root -g root "$staging"/step-ca /usr/bin/step-ca' in bin_text
    assert "step-cli" not in bin_text


def test_post_scripts_do_what_the_image_needs():
    handler = parsed(render_kickstart(load_config(), RPMS))
    scripts = [s for s in handler.scripts if s.type == constants.KS_SCRIPT_POST]
    copy, install, hybrid_boot, report = scripts
    assert copy.inChroot is False and copy.errorOnFail is True
    assert f"/dev/disk/by-label/{OEMDRV_LABEL}" in copy.script
    assert f"cp \"$source_dir\"/{PAYLOAD_NAME} \"$staging/\"" in copy.script
    assert install.inChroot is True and install.errorOnFail is True
    body = install.script
    assert "tar --extract --gzip" in body and "--directory=/" in body
    assert "systemctl enable step-ca.service ca-appliance-firstboot.service ca-appliance-growroot.service" in body
    assert "useradd --system" in body and " step" in body
    assert "rm -f /etc/ssh/ssh_host_*" in body
    assert "truncate -s 0 /etc/machine-id" in body
    assert f'add_drivers+=" {" ".join(DRACUT_DRIVERS)} "' in body
    for driver in ("virtio_blk", "e1000", "vmxnet3", "mptspi", "vmw_pvscsi", "ahci"):
        assert driver in DRACUT_DRIVERS
    assert "dracut --force --regenerate-all" in body
    assert "growpart" in body and "xfs_growfs" in body
    assert report.inChroot is False and "org.ca-appliance.install-result.0" in report.script


def test_rendered_shell_passes_shellcheck(tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (host-packages.txt lists it)")
    for artifacts in (RPMS, BINARY):
        scripts = render_scripts(custom_config(tmp_path), artifacts)
        assert set(scripts) == {"post-copy-payload.sh", "post-install.sh", "post-report.sh", "growroot.sh",
                                "post-hybrid-boot.sh"}
        for name, text in scripts.items():
            path = tmp_path / name
            path.write_text(text)
            proc = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{name}:\n{proc.stdout}{proc.stderr}"


def test_shellcheck_does_catch_a_bad_script(tmp_path):
    """The check above can fail: the same shellcheck call flags an unquoted variable."""
    path = tmp_path / "bad.sh"
    path.write_text("# shellcheck shell=bash\nrm -rf $staging/*\n")
    assert subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True).returncode != 0


def test_ksvalidator_command_accepts_the_rendered_kickstart(tmp_path):
    ks = tmp_path / "ks.cfg"
    ks.write_text(render_kickstart(custom_config(tmp_path), RPMS))
    proc = subprocess.run([str(VENV_BIN / "ksvalidator"), "-v", "F45", str(ks)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ksvalidator_command_rejects_a_broken_one(tmp_path):
    ks = tmp_path / "ks.cfg"
    ks.write_text(render_kickstart(load_config(), RPMS).replace("selinux --enforcing", "selinux --strictest"))
    proc = subprocess.run([str(VENV_BIN / "ksvalidator"), "-v", "F45", str(ks)], capture_output=True, text=True)
    assert proc.returncode != 0


def broken_template_dir(tmp_path, old, new):
    copy = tmp_path / "kickstart"
    shutil.copytree(KICKSTART_DIR, copy)
    template = copy / "ks.cfg.j2"
    text = template.read_text()
    assert old in text
    template.write_text(text.replace(old, new))
    return copy


def test_invalid_kickstart_directive_is_an_error_not_a_warning(tmp_path):
    templates = broken_template_dir(tmp_path, "selinux --enforcing", "selinux --enforcing\nfrobnicate --now")
    with pytest.raises(StepFailed) as e:
        render_kickstart(load_config(), RPMS, template_dir=templates)
    message = str(e.value)
    assert "not a valid F45 kickstart" in message and "frobnicate" in message


def test_deprecated_syntax_is_refused_like_ksvalidator_does(tmp_path):
    templates = broken_template_dir(tmp_path, "text\n", "text\ninstall\n")
    with pytest.raises(StepFailed, match="not a valid F45 kickstart"):
        render_kickstart(load_config(), RPMS, template_dir=templates)


def test_undefined_template_variable_is_a_clear_error(tmp_path):
    templates = broken_template_dir(tmp_path, "{{ admin_user | shquote }}", "{{ admin_name | shquote }}")
    with pytest.raises(StepFailed, match="'admin_name' is undefined"):
        render_kickstart(load_config(), RPMS, template_dir=templates)


def test_template_syntax_error_names_the_file_and_line(tmp_path):
    templates = broken_template_dir(tmp_path, "{% endfor %}", "{% endfr %}")
    with pytest.raises(StepFailed, match=r"ks.cfg.j2 line \d+"):
        render_kickstart(load_config(), RPMS, template_dir=templates)


def test_render_to_writes_kickstart_payload_and_list_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("CA_APPLIANCE_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "render"
    result = render_to(custom_config(tmp_path), out, out_stream=open(tmp_path / "stdout", "w"))
    listing = json.loads((out / "payload.json").read_text())
    assert listing["volume_label"] == "OEMDRV"
    names = [f["name"] for f in listing["files"]]
    assert names == ["ks.cfg", PAYLOAD_NAME, "step-ca.rpm", "step-cli.rpm"]
    by_name = {f["name"]: f for f in listing["files"]}
    assert by_name["step-ca.rpm"]["state"] == "to be fetched by the build"
    assert by_name["step-ca.rpm"]["version"] == "0.30.2" and by_name["step-ca.rpm"]["source"] is None
    assert Path(by_name["ks.cfg"]["source"]).read_text() == result.kickstart.read_text()
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*.rpm"))


def test_planned_artifacts_use_a_local_binary_as_is(tmp_path):
    elf = tmp_path / "step-ca"
    elf.write_bytes(Path(sys.executable).resolve().read_bytes()[:4096])  # an x86-64 ELF header
    cfg = custom_config(tmp_path, artifacts={"step_ca": {"path": str(elf)}, "step_cli": {"enabled": False}})
    (planned,) = planned_artifacts(cfg)
    assert (planned.name, planned.kind, planned.state, planned.install_path) == \
        ("step-ca", "binary", "local", "/usr/bin/step-ca")


def run_invoke(*args, cwd=PROJECT_ROOT):
    return subprocess.run([str(VENV_BIN / "invoke"), *args], cwd=cwd, capture_output=True, text=True)


def test_invoke_render_prints_the_paths_and_exits_0(tmp_path):
    out = tmp_path / "out"
    proc = run_invoke("render", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"kickstart: {out / 'ks.cfg'}" in proc.stdout
    assert str(out / "payload.json") in proc.stdout
    assert (out / "ks.cfg").is_file() and (out / PAYLOAD_NAME).is_file()
    validate_kickstart((out / "ks.cfg").read_text(), "F45")


def test_invoke_render_with_a_bad_config_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fedora:\n  release: 12\n")
    proc = run_invoke("render", "--config", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "fedora.release" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "ks.cfg").exists()


def test_the_disk_boots_bios_and_uefi_biosboot_esp_and_root_on_gpt():
    handler = parsed(render_kickstart(load_config(), RPMS))
    assert handler.clearpart.disklabel == "gpt"
    assert not handler.reqpart.reqpart   # reqpart would make only the installer firmware's partition
    parts = {p.mountpoint: p for p in handler.partition.partitions}
    assert list(parts) == ["biosboot", "/boot/efi", "/"]
    assert parts["biosboot"].fstype == "biosboot" and parts["/boot/efi"].fstype == "efi"
    assert parts["/boot/efi"].size >= 100 and parts["/"].grow   # the root last, growing into the disk
    assert {"grub2-pc", "grub2-efi-x64", "shim-x64"} <= set(handler.packages.packageList)
    posts = [s for s in handler.scripts if s.type == constants.KS_SCRIPT_POST]
    (hybrid,) = [s for s in posts if "/boot/efi/EFI/fedora/grub.cfg" in s.script]
    assert hybrid.inChroot and hybrid.errorOnFail
    assert "search --no-floppy --fs-uuid --set=dev $root_uuid" in hybrid.script
    assert "/boot/efi/EFI/BOOT/BOOTX64.EFI" in hybrid.script   # the removable path any UEFI firmware boots


def test_hybrid_boot_script_writes_the_esp_grub_cfg_by_root_uuid(tmp_path):
    """The %post run for real on a fake root (paths rewritten under tmp_path)."""
    script = render_scripts(load_config(), RPMS)["post-hybrid-boot.sh"].replace("/boot/efi", f"{tmp_path}/boot/efi")
    script = script.replace("/etc/fstab", f"{tmp_path}/fstab")
    (tmp_path / "fstab").write_text("UUID=1234-ABCD /boot/efi vfat umask=0077 0 2\n"
                                    "UUID=0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff / xfs defaults 0 0\n")
    for efi in ("EFI/BOOT/BOOTX64.EFI", "EFI/fedora/grubx64.efi"):
        (tmp_path / "boot/efi" / efi).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "boot/efi" / efi).write_bytes(b"MZ")
    subprocess.run(["bash", "-c", script], check=True)
    cfg = (tmp_path / "boot/efi/EFI/fedora/grub.cfg").read_text()
    assert cfg.splitlines() == ["search --no-floppy --fs-uuid --set=dev 0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff",
                                "set prefix=($dev)/boot/grub2", "export $prefix", "configfile $prefix/grub.cfg"]
    (tmp_path / "boot/efi/EFI/BOOT/BOOTX64.EFI").unlink()
    failed = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert failed.returncode == 1 and "BOOTX64.EFI is missing" in failed.stderr
