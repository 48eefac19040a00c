"""The login banners: the console's (/etc/issue.d/ca-appliance.issue, before login) and the SSH
login's (/etc/motd.d/ca-appliance, pam_motd on both bases): how to reach and trust the CA, and
what needs attention, a test image first. Written by setup, and refreshed by the daily watch and
by renew-intermediate, always from the files on disk (ca.json, state.json, build.json).
"""
import json

from cryptography.x509.oid import NameOID

from . import buildinfo, cajson, markers, pki, stepca
from .findings import LEVEL_NAMES, expiry_findings
from .staging import make_dir, write_file


def _ca_of(config):
    return {"address": config["address"], "dns_names": config["dnsNames"]}


MOTD_FILE = "/etc/motd.d/ca-appliance"


def render(layout, findings=None, for_issue=True):
    """The banner text; `findings` (findings.Finding) from the last watch, else the expiry checks alone.
    for_issue: escaped for agetty (an issue file); else plain (the motd)."""
    config = json.loads(layout.ca_json.read_text())
    state = json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}
    info = buildinfo.load(layout.prefix)
    root = pki.load_certificate(config["root"])
    if findings is None:
        findings = expiry_findings(root, pki.load_certificate(config["crt"]))
    ca_name = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    lines = []
    test_reason = buildinfo.test_image_reason(info, stepca.installed_version())
    if test_reason:
        lines.append(f"*** {buildinfo.TEST_IMAGE_MARK} *** ({test_reason})")
    lines += [
        f"Certificate authority: {ca_name[0].value if ca_name else 'step-ca'}",
        f"  {markers.ACME_DIRECTORY:<17} {cajson.acme_directory_url(_ca_of(config))}",
        f"  {markers.ROOT_FINGERPRINT:<17} {pki.fingerprint(root)}",
    ]
    if info.get("client_page") and state.get("hostname"):
        lines.append(f"  Client setup:     http://{state['hostname']}/")
    for finding in findings:
        if finding.message.startswith(buildinfo.TEST_IMAGE_MARK):
            continue  # the first line says it
        lines.append(f"  {LEVEL_NAMES[finding.level].upper()}: {finding.message}")
    lines.append("  (ca-appliance status for more)")
    if not for_issue:
        return "\n".join(lines) + "\n\n"
    # agetty expands backslash escapes in issue files: show a literal backslash as written
    return "\n".join(line.replace("\\", "\\\\") for line in lines) + "\n\n"


def write(layout, findings=None):
    """Both banners from the same facts; returns the console's issue file."""
    write_file(layout.issue_file, render(layout, findings), 0o644)
    motd = layout.path(MOTD_FILE)
    make_dir(motd.parent, 0o755)  # whatever setup's umask: pam_motd shows it at every SSH login
    write_file(motd, render(layout, findings, for_issue=False), 0o644)
    return layout.issue_file
