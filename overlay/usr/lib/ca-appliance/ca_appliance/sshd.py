"""The appliance's sshd drop-in: SSH is key-only and for the appliance's admin alone.

Laid by `ca-appliance provision` when the image is built (both bases), so sshd never runs with the
distribution's defaults (password logins, root) even before first-boot setup; setup writes it again
for the admin its answers name. 10-: sshd takes the first value it reads, before a 50-*.conf.
"""

DROPIN = "etc/ssh/sshd_config.d/10-ca-appliance.conf"


def dropin_text(admin_user, written_by="ca-appliance setup"):
    """Key-only SSH for the admin alone: the admin's password (if any) is for the console."""
    return (f"# Written by {written_by}: SSH is key-only and for the appliance's admin alone.\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
            f"AllowUsers {admin_user}\n")
