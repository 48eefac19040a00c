"""sshd is key-only from the first boot: `ca-appliance provision` lays the drop-in on both bases (run
for real on the Debian- and Fedora-layout test roots of test_guest_provision), so the image never
boots with the distribution's password logins, even before first-boot setup; setup writes the same."""
import os

import pytest
from ca_appliance import apply, sshd
from ca_appliance.layout import Layout
from test_guest_provision import debian_tree, fedora_tree, lay_payload, needs_real_tools, run_provision

KEY_ONLY = ["PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no",
            "AllowUsers opsadmin"]


@pytest.mark.parametrize("base, make_tree, stand_ins", [
    ("debian", debian_tree, ["update-initramfs"]),
    ("fedora", fedora_tree, ["dracut", "restorecon"]),
])
def test_provision_lays_the_key_only_sshd_drop_in(tmp_path, base, make_tree, stand_ins):
    needs_real_tools()
    root = tmp_path / f"{base}-root"
    make_tree(root)
    lay_payload(root, tmp_path)
    result = run_provision(root, base, stand_ins, tmp_path / "recorded.txt")
    assert result.returncode == 0, result.stdout + result.stderr
    dropin = root / sshd.DROPIN
    lines = [line for line in dropin.read_text().splitlines() if not line.startswith("#")]
    assert lines == KEY_ONLY
    assert os.stat(dropin).st_mode & 0o777 == 0o644 and os.stat(dropin).st_uid == 0
    assert "sshd: key-only" in result.stdout


def test_setup_writes_the_same_drop_in_where_provision_lays_it(tmp_path):
    assert Layout(tmp_path).sshd_dropin == tmp_path / sshd.DROPIN
    setup_lines = [line for line in apply.sshd_dropin("opsadmin").splitlines() if not line.startswith("#")]
    assert setup_lines == KEY_ONLY
