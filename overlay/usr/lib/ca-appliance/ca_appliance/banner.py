"""The console login banner (/etc/issue.d/ca-appliance.issue): how to reach and trust the CA,
and what needs attention. Written by setup, and refreshed by the daily watch and by
renew-intermediate, always from the files on disk (ca.json, state.json, build.json).
"""
import json

from cryptography.x509.oid import NameOID

from . import buildinfo, cajson, pki
from .staging import write_file


def _ca_of(config):
    return {"address": config["address"], "dns_names": config["dnsNames"]}


def render(layout, findings=None):
    """The banner text; `findings` (watch.Finding) from the last watch, else the expiry checks alone."""
    from . import watch  # watch writes the banner: import here, not at module load
    config = json.loads(layout.ca_json.read_text())
    state = json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}
    info = buildinfo.load(layout.prefix)
    root = pki.load_certificate(config["root"])
    if findings is None:
        findings = watch.expiry_findings(root, pki.load_certificate(config["crt"]))
    ca_name = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    lines = []
    if info.get("test_only"):
        lines.append("*** TEST IMAGE - not for production ***"
                     + (f" ({info['test_only_reason']})" if info.get("test_only_reason") else ""))
    lines += [
        f"Certificate authority: {ca_name[0].value if ca_name else 'step-ca'}",
        f"  ACME directory:   {cajson.acme_directory_url(_ca_of(config))}",
        f"  Root fingerprint: {pki.fingerprint(root)}",
    ]
    if info.get("client_page") and state.get("hostname"):
        lines.append(f"  Client setup:     http://{state['hostname']}/")
    for finding in findings:
        lines.append(f"  {watch.LEVEL_NAMES[finding.level].upper()}: {finding.message}")
    lines.append("  (ca-appliance status for more)")
    # agetty expands backslash escapes in issue files: show a literal backslash as written
    return "\n".join(line.replace("\\", "\\\\") for line in lines) + "\n\n"


def write(layout, findings=None):
    write_file(layout.issue_file, render(layout, findings), 0o644)
    return layout.issue_file
