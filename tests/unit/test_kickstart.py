"""The rendered kickstart: valid for pykickstart's F45 handler and for the ksvalidator command,
each config key where it belongs, the %post shell clean under shellcheck, and `invoke render`
end to end."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pykickstart import constants

from image.bases.fedora.kickstart import (
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
from image.config import PROJECT_ROOT, load_config
from image.disk import protective_mbr_boot_flag
from image.errors import StepFailed

VENV_BIN = Path(sys.executable).parent
KEY_1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBh8NDgcIkBjCGWFxOB7duXJj8Z73tQx0xFqg0fEgmM4 admin@laptop"
# a real RSA key with a comment a shell would expand
KEY_2 = ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCsZ/DIECIJGjR5oL49Jb+yl9p7z5tGAx6LH3s4Xujp/LCkqU6KUYKP577T+3Ym"
         "TzTCiwa+sveiWpYEMdmhLSauaYmrWn2mfeWvFNNiNUXpMiTyjkmfptQeyKqX9lRu/jw5lkTQyX7TMGvuDziDyi80fwWfX8gXkkOD"
         "m/v477BLfTFAAaBbRsOlTDKxGKhbcKqHhzvgnHTD4X0pXzwv3i65AJmB3nQ+WWq2xosqOM5r3PKrq57kDYxz1S777LT2RTgIN9zd"
         "YVzaMv9zNE+wBsHWF4+4dQ990mLsNp/XNy2WoeRt4TlWoFQThCscQmFfxEFuhpNz80TxOTy8jgaBkosP"
         " bob's \"work\" key $HOME")
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
    assert handler.firewall.services == ["ssh"]   # the CA's port: provision's zone and setup, not here
    assert handler.firewall.ports == []
    assert handler.rootpw.lock is True
    assert handler.displaymode.displayMode == constants.DISPLAY_MODE_TEXT
    assert handler.reboot.action == constants.KS_SHUTDOWN
    assert "\npoweroff\n" in text              # pykickstart reads poweroff and shutdown alike
    assert handler.firstboot.firstboot == constants.FIRSTBOOT_SKIP
    assert handler.bootloader.appendLine == "panic=10 console=tty0 console=ttyS0,115200n8"
    assert handler.url.url == "https://dl.fedoraproject.org/pub/fedora/linux/releases/45/Server/x86_64/os/"
    assert [r.baseurl for r in handler.repo.repoList] == [
        "https://dl.fedoraproject.org/pub/fedora/linux/updates/45/Everything/x86_64/",
        "https://dl.fedoraproject.org/pub/fedora/linux/releases/45/Everything/x86_64/os/"]
    assert handler.packages.environment == "server-product-environment"
    assert set(EXTRA_PACKAGES) <= set(handler.packages.packageList)
    assert {"python3-cryptography", "python3-pyyaml", "NetworkManager", "firewalld", "chrony",
            "qemu-guest-agent", "open-vm-tools", "cloud-utils-growpart"} <= set(handler.packages.packageList)
    assert handler.user.userList == [] and handler.sshkey.sshUserList == []   # provision makes the admin


def test_each_config_key_lands_where_it_belongs(tmp_path):
    cfg = custom_config(tmp_path)
    text = render_kickstart(cfg, RPMS)
    handler = parsed(text)
    # fedora.release and fedora.mirror: the tree, the updates repo and the Everything repo
    assert handler.url.url == "http://mirror.lab.example/fedora/linux/releases/45/Server/x86_64/os/"
    repos = {r.name: r.baseurl for r in handler.repo.repoList}
    assert repos == {
        "ca-appliance-updates": "http://mirror.lab.example/fedora/linux/updates/45/Everything/x86_64/",
        "ca-appliance-everything": "http://mirror.lab.example/fedora/linux/releases/45/Everything/x86_64/os/"}
    # admin.*: no user, key or hash in the kickstart; provision applies them from the payload
    assert handler.user.userList == [] and handler.sshkey.sshUserList == []
    assert "opsadmin" not in text and HASH not in text and KEY_1 not in text
    # image.name and image.version: the header says what the kickstart is for
    assert "lab-ca 2.3.4" in text.splitlines()[0]
    # the admin's sudoers rule is provision's (from the payload), never the kickstart's
    assert "NOPASSWD" not in text


def test_no_password_anywhere_in_the_kickstart(tmp_path):
    text = render_kickstart(custom_config(tmp_path), RPMS)
    assert "--plaintext" not in text and "--password" not in text and HASH not in text
    assert parsed(text).rootpw.lock is True


def test_other_fedora_release_uses_its_own_tree_and_syntax(tmp_path):
    cfg = custom_config(tmp_path, fedora={"release": 44, "mirror": "https://mirror.example/pub/fedora/linux"})
    handler = parsed(render_kickstart(cfg, RPMS), "F44")
    assert "/releases/44/Server/x86_64/os/" in handler.url.url
    assert kickstart_syntax(44) == "F44"
    assert kickstart_syntax(99).startswith("F")  # the newest pykickstart knows


def test_post_installs_rpms_or_the_local_binary():
    rpm_text = render_kickstart(load_config(), RPMS)
    assert 'rpm --upgrade --replacepkgs --nosignature "$staging"/step-ca.rpm' in rpm_text
    assert 'rpm --upgrade --replacepkgs --nosignature "$staging"/step-cli.rpm' in rpm_text
    bin_text = render_kickstart(load_config(), BINARY)
    assert 'install -D -m 0755 -o root -g root "$staging"/step-ca /usr/bin/step-ca' in bin_text
    assert "step-cli" not in bin_text


# every %post's first lines after `set -euo pipefail`: its output goes to the serial console too
CONSOLE_LINES = [
    "console=/dev/ttyS0",
    'if { true >"$console"; } 2>/dev/null; then',
    "exec > >(tee -p >(sed -u -e '/^ca-appliance: /!s/^/ca-appliance: /' >\"$console\")) 2>&1",
    "fi",
]


def chrooted_post(text):
    """The chrooted %post that installs the payload, the last chrooted one (the first adds the UEFI GRUB
    config): provision removes Anaconda's copies of the chrooted scripts, so it must come last."""
    chrooted = [s for s in parsed(text).scripts if s.type == constants.KS_SCRIPT_POST and s.inChroot]
    assert len(chrooted) == 2 and "hybrid boot" in chrooted[0].script
    return chrooted[1]


def commands_of(script):
    """The script's command lines: no comments, no blank lines."""
    return [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_chrooted_post_installs_the_rpms_and_payload_then_runs_provision_and_little_else():
    install = chrooted_post(render_kickstart(load_config(), RPMS))
    assert install.errorOnFail is True
    lines = commands_of(install.script)
    assert lines == [
        "set -euo pipefail",
        *CONSOLE_LINES,
        "staging=/var/tmp/ca-appliance-install",
        'echo "ca-appliance: installing step-ca.rpm"',
        'rpm --upgrade --replacepkgs --nosignature "$staging"/step-ca.rpm',
        'echo "ca-appliance: installing step-cli.rpm"',
        'rpm --upgrade --replacepkgs --nosignature "$staging"/step-cli.rpm',
        "test -x /usr/bin/step-ca",
        'echo "ca-appliance: unpacking the payload, then provisioning"',
        f'tar --extract --gzip --file="$staging"/{PAYLOAD_NAME} --directory=/ --numeric-owner --no-overwrite-dir '
        "--keep-directory-symlink",
        "/usr/bin/ca-appliance provision --base fedora",
        'rm -rf "$staging"',
        'echo "ca-appliance: payload installed and provisioned"',
    ]


def test_defect_1_rpm_signature_enforcement_the_rpms_install_without_a_signature_check_and_say_why():
    """Fedora 45 enforces signatures (%_pkgverify_level all); smallstep's key is in no keyring: without
    --nosignature the rpm command fails in a --erroronfail %post and Anaconda aborts."""
    script = chrooted_post(render_kickstart(load_config(), RPMS)).script
    rpm_lines = [line for line in commands_of(script) if line.startswith("rpm ")]
    assert rpm_lines and all("--nosignature" in line for line in rpm_lines)
    assert "checksums.txt" in script and "sha256 pin" in script   # the comment says what replaces it


def test_defect_3_repo_ids_are_our_own_not_anacondas_updates():
    handler = parsed(render_kickstart(load_config(), RPMS))
    names = [r.name for r in handler.repo.repoList]
    assert "updates" not in names and "fedora" not in names
    assert all(n.startswith("ca-appliance-") for n in names)


def test_defect_4_everything_repo_for_packages_in_no_server_group_and_no_unused_jwcrypto():
    handler = parsed(render_kickstart(load_config(), RPMS))
    baseurls = [r.baseurl for r in handler.repo.repoList]
    assert any(u.endswith("/releases/45/Everything/x86_64/os/") for u in baseurls)
    for package in ("cloud-utils-growpart", "qemu-guest-agent", "open-vm-tools"):
        assert package in handler.packages.packageList
    # python3-jwcrypto goes in only when a guest module imports it
    guest = PROJECT_ROOT / "overlay/usr/lib/ca-appliance/ca_appliance"
    imports_it = any(re.search(r"^\s*(import|from)\s+jwcrypto", f.read_text(), re.M) for f in guest.glob("*.py"))
    assert ("python3-jwcrypto" in EXTRA_PACKAGES) == imports_it


def test_the_database_drivers_the_guest_imports_are_in_both_bases():
    """database.DRIVERS names, per database type, the module the guest imports and its package on
    each base: both images carry every one, so a shared database works on either."""
    from ca_appliance import database

    from image.bases import debian
    for module, debian_package, fedora_package in database.DRIVERS.values():
        assert fedora_package in EXTRA_PACKAGES, module
        assert debian_package in debian.PACKAGES, module


def test_defect_5_alternatives_is_installed_for_the_step_cli_rpm():
    handler = parsed(render_kickstart(load_config(), RPMS))
    assert "alternatives" in handler.packages.packageList
    # and provision fails the install when step_cli is enabled but /usr/bin/step is missing:
    # tests/unit/test_guest_provision.py::test_step_cli_enabled_without_usr_bin_step_fails


def test_defect_6_the_kickstart_opens_ssh_only_and_closes_cockpit():
    handler = parsed(render_kickstart(load_config(), RPMS))
    assert handler.firewall.enabled is True
    assert handler.firewall.services == ["ssh"] and handler.firewall.remove_services == ["cockpit"]
    assert handler.firewall.ports == []
    # the appliance's own default zone (ssh, step-ca) is provision's, on both bases:
    # tests/unit/test_guest_provision.py


def test_post_scripts_do_what_the_image_needs():
    handler = parsed(render_kickstart(load_config(), RPMS))
    scripts = [s for s in handler.scripts if s.type == constants.KS_SCRIPT_POST]
    copy, hybrid_boot, install, pmbr, report = scripts
    assert copy.inChroot is False and copy.errorOnFail is True
    assert f"/dev/disk/by-label/{OEMDRV_LABEL}" in copy.script
    assert f"cp \"$source_dir\"/{PAYLOAD_NAME} \"$staging/\"" in copy.script
    assert install.inChroot is True and install.errorOnFail is True
    assert report.inChroot is False and "org.ca-appliance.install-result.0" in report.script
    assert pmbr.inChroot is False and pmbr.errorOnFail is True and "disk_set pmbr_boot off" in pmbr.script
    assert hybrid_boot.inChroot is True
    for script in scripts:   # each one copies its output to the serial console
        assert commands_of(script.script)[1:1 + len(CONSOLE_LINES)] == CONSOLE_LINES


def test_rendered_shell_passes_shellcheck(tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (host-packages.txt lists it)")
    for artifacts in (RPMS, BINARY):
        scripts = render_scripts(custom_config(tmp_path), artifacts)
        assert set(scripts) == {"post-copy-payload.sh", "post-install.sh", "post-report.sh", "post-hybrid-boot.sh",
                                "post-pmbr.sh"}
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
    templates = broken_template_dir(tmp_path, "{{ tree_url | shquote }}", "{{ tree_uri | shquote }}")
    with pytest.raises(StepFailed, match="'tree_uri' is undefined"):
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


def run_as_anaconda(script: str, console: Path) -> tuple[int, str]:
    """Run a rendered %post as Anaconda 45.21 does (pyanaconda/core/util.py _run_program: stdout a pipe,
    stderr into it, read to the end with communicate()), its serial console replaced by a file: a test
    must never write to the host's /dev/ttyS0."""
    assert "console=/dev/ttyS0\n" in script
    script = script.replace("console=/dev/ttyS0\n", f"console={console}\n")
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out.decode()


def test_post_output_reaches_anacondas_log_whole_and_the_serial_console_prefixed(tmp_path):
    console = tmp_path / "ttyS0"
    console.touch()
    report = render_scripts(load_config(), RPMS)["post-report.sh"]
    console_block = report.split("set -euo pipefail\n")[1].split("sysroot=")[0]
    script = ("set -euo pipefail\n" + console_block
              + 'echo "ca-appliance: step one"\necho "    an indented detail"\nls /nonexistent-path\necho never\n')
    rc, out = run_as_anaconda(script, console)
    assert rc == 2                                       # the failing command's status: --erroronfail sees it
    assert out.splitlines() == ["ca-appliance: step one", "    an indented detail",
                                "ls: cannot access '/nonexistent-path': No such file or directory"]
    assert console.read_text().splitlines() == [
        "ca-appliance: step one", "ca-appliance:     an indented detail",
        "ca-appliance: ls: cannot access '/nonexistent-path': No such file or directory"]
    # a console that cannot be opened (installing by hand without a serial port): nothing is copied
    rc, out = run_as_anaconda(script, tmp_path / "no-such-dir" / "ttyS0")
    assert rc == 2 and out.splitlines()[0] == "ca-appliance: step one"


def test_the_progress_lines_of_the_chrooted_install_step_reach_the_console(tmp_path):
    """The install %post up to its first command, run for real: the build shows its step lines live."""
    script = render_scripts(load_config(), RPMS)["post-install.sh"]
    head = script.split("rpm --upgrade")[0]
    console = tmp_path / "ttyS0"
    console.touch()
    rc, out = run_as_anaconda(head, console)
    assert rc == 0 and console.read_text() == out == "ca-appliance: installing step-ca.rpm\n"


def test_hybrid_boot_script_writes_the_esp_grub_cfg_by_root_uuid(tmp_path):
    """The %post run for real on a fake root (paths rewritten under tmp_path)."""
    script = render_scripts(load_config(), RPMS)["post-hybrid-boot.sh"].replace("/boot/efi", f"{tmp_path}/boot/efi")
    script = script.replace("/etc/fstab", f"{tmp_path}/fstab")
    (tmp_path / "ttyS0").write_text("")
    (tmp_path / "fstab").write_text("UUID=1234-ABCD /boot/efi vfat umask=0077 0 2\n"
                                    "UUID=0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff / xfs defaults 0 0\n")
    for efi in ("EFI/BOOT/BOOTX64.EFI", "EFI/fedora/grubx64.efi"):
        (tmp_path / "boot/efi" / efi).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "boot/efi" / efi).write_bytes(b"MZ")
    rc, out = run_as_anaconda(script, tmp_path / "ttyS0")
    assert rc == 0, out
    cfg = (tmp_path / "boot/efi/EFI/fedora/grub.cfg").read_text()
    assert cfg.splitlines() == ["search --no-floppy --fs-uuid --set=dev 0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff",
                                "set prefix=($dev)/boot/grub2", "export $prefix", "configfile $prefix/grub.cfg"]
    (tmp_path / "boot/efi/EFI/BOOT/BOOTX64.EFI").unlink()
    (tmp_path / "ttyS0").write_text("")
    rc, out = run_as_anaconda(script, tmp_path / "ttyS0")
    assert rc == 1 and "BOOTX64.EFI is missing" in out      # in Anaconda's log, for its error dialog
    assert "ca-appliance: hybrid boot: " in (tmp_path / "ttyS0").read_text()   # and live on the console


def gpt_disk(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["sfdisk", "--quiet", str(path)], input="label: gpt\nstart=2048, type=linux\n", text=True,
                   check=True, capture_output=True)
    return path


def test_the_rendered_kickstart_clears_the_protective_mbr_boot_flag(tmp_path):
    """The pmbr %post, taken from the rendered kickstart and run for real on a disk image whose
    protective MBR is marked bootable, as blivet leaves it (the device path rewritten to the file)."""
    if shutil.which("parted") is None:
        pytest.fail("parted is not installed (host-packages.txt lists it)")
    (pmbr,) = [s for s in parsed(render_kickstart(load_config(), RPMS)).scripts if "pmbr_boot" in s.script]
    assert pmbr.type == constants.KS_SCRIPT_POST and not pmbr.inChroot and pmbr.errorOnFail
    raw = gpt_disk(tmp_path / "vda.raw")
    subprocess.run(["parted", "--script", str(raw), "disk_set", "pmbr_boot", "on"], check=True)
    assert protective_mbr_boot_flag(raw) is True
    console = tmp_path / "ttyS0"
    console.touch()
    rc, out = run_as_anaconda(pmbr.script.replace("disk=/dev/vda\n", f"disk={raw}\n"), console)
    assert rc == 0, out
    assert protective_mbr_boot_flag(raw) is False
    assert console.read_text() == f"ca-appliance: protective MBR of {raw}: boot flag clear\n"


def test_the_pmbr_post_fails_the_install_when_the_flag_is_still_set(tmp_path):
    """Its own check of the first sector: a parted that changed nothing fails the (--erroronfail) %post."""
    script = render_scripts(load_config(), RPMS)["post-pmbr.sh"]
    raw = gpt_disk(tmp_path / "vda.raw")
    subprocess.run(["parted", "--script", str(raw), "disk_set", "pmbr_boot", "on"], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "parted").write_text("#!/bin/sh\nexit 0\n")   # a parted that does nothing
    (bin_dir / "parted").chmod(0o755)
    script = f'PATH={bin_dir}:"$PATH"\n' + script.replace("disk=/dev/vda\n", f"disk={raw}\n")
    rc, out = run_as_anaconda(script, tmp_path / "ttyS0")
    assert rc == 1
    assert out == f"ca-appliance: the protective MBR of {raw} is still marked bootable (boot indicator 80)\n"
