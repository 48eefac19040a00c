"""Day two in the built Debian image (read-only): security updates on by default and wired to
restart step-ca, the daily watch units in place, the guest modules the CLI needs."""
import os
import subprocess

import pytest

pytestmark = pytest.mark.slow


def test_security_updates_are_installed_and_configured(image_root, manifest):
    packages = dict(p.split(" ", 1) for p in manifest["packages"])
    assert "unattended-upgrades" in packages
    periodic = (image_root / "etc/apt/apt.conf.d/20auto-upgrades").read_text()
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    only = (image_root / "etc/apt/apt.conf.d/52ca-appliance-security-only").read_text()
    assert "#clear Unattended-Upgrade::Origins-Pattern;" in only and "label=Debian-Security" in only
    dropin = image_root / "etc/systemd/system/apt-daily-upgrade.service.d/ca-appliance.conf"
    assert "ExecStartPost=-/usr/bin/ca-appliance restart-if-stale" in dropin.read_text()


@pytest.mark.parametrize("unit", ["apt-daily.timer", "apt-daily-upgrade.timer"])
def test_the_update_timers_are_enabled(image_root, unit):
    result = subprocess.run(["systemctl", f"--root={image_root}", "is-enabled", unit], capture_output=True, text=True)
    assert result.stdout.strip() == "enabled", f"{unit}: {result.stdout.strip()} {result.stderr.strip()}"


def test_watch_units_and_guest_modules_are_in_the_image(image_root):
    for unit in ("ca-appliance-watch.service", "ca-appliance-watch.timer"):
        assert (image_root / "etc/systemd/system" / unit).is_file(), unit
    lib = image_root / "usr/lib/ca-appliance/ca_appliance"
    for module in ("renew.py", "watch.py", "banner.py", "status.py", "stepca.py", "updates.py"):
        assert (lib / module).is_file(), module


def test_the_guest_program_is_byte_compiled_for_the_images_own_python(image_root):
    """No boot compiles the guest program: every module has a checked-hash .pyc for the python3 the
    image runs it with (provision compiles in the chroot, under that python)."""
    python = os.readlink(image_root / "usr/bin/python3")            # e.g. python3.13
    tag = "cpython-" + python.removeprefix("python").replace(".", "")
    lib = image_root / "usr/lib/ca-appliance/ca_appliance"
    for module in lib.glob("*.py"):
        pyc = (lib / "__pycache__" / f"{module.stem}.{tag}.pyc").read_bytes()
        assert int.from_bytes(pyc[4:8], "little") == 0b11, module.name
