"""System steps of setup that can run on the build host for real: /etc/hosts text, admin keys."""
import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest
from ca_appliance import system

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF2pOt2K2QRFWGUOR45v0pfO5z0KpWOzxkTWPjkXuPOl a@laptop"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbQ3oVxjA5bKXqXm5N9Jh3vCw8kq3uX0h1d2s4d5f6g b@laptop"


def test_hostname_resolves_locally_and_other_lines_stay():
    before = "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost\n"
    after = system.hosts_with_hostname(before, "ca.lab.example")
    assert after.splitlines() == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost",
                                  "127.0.1.1\tca.lab.example ca"]
    assert system.hosts_with_hostname(None, "ca.lab.example").splitlines()[0] == "127.0.0.1\tlocalhost"


@pytest.fixture
def admin_account(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("creating a real account to receive the keys needs root")
    name = f"t{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    subprocess.run(["useradd", "--home-dir", str(home), "--create-home", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def test_admin_keys_are_added_once_with_ssh_modes(admin_account):
    authorized = Path(admin_account.pw_dir) / ".ssh/authorized_keys"
    assert system.install_admin_keys(admin_account.pw_name, [KEY_A]) is None
    assert system.install_admin_keys(admin_account.pw_name, [KEY_A, KEY_B]) is None
    assert authorized.read_text().splitlines() == [KEY_A, KEY_B]
    assert authorized.stat().st_mode & 0o777 == 0o600 and authorized.parent.stat().st_mode & 0o777 == 0o700
    assert (authorized.stat().st_uid, authorized.parent.stat().st_uid) == (admin_account.pw_uid,) * 2


def test_missing_admin_account_is_a_note_not_a_failure():
    assert "does not exist" in system.install_admin_keys("no-such-user-here", [KEY_A])
    assert system.install_admin_keys("no-such-user-here", []) is None
