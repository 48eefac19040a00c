"""`ca-appliance status`: what an admin needs at a glance, read from the files setup wrote."""
import json
import shutil

from . import cajson, database, pki, system
from .errors import UserError


def collect(layout, use_system=True):
    """The status as an ordered list of (label, value)."""
    if not layout.is_configured():
        raise UserError(f"status: no CA is configured under {layout.prefix} (no {layout.ca_json}); "
                        "run `ca-appliance setup`")
    config = json.loads(layout.ca_json.read_text())
    state = json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}
    root = pki.load_certificate(config["root"])
    intermediate = pki.load_certificate(config["crt"])
    ca = {"address": config["address"], "dns_names": config["dnsNames"]}
    provisioners = ", ".join(f"{p['name']} ({p['type']})" for p in config["authority"].get("provisioners", []))
    if use_system and layout.is_system:
        service = system.service_state()
    else:
        service = "not checked (--prefix: not this system's service)"
    configured = state.get("answers_source", "unknown")
    if state.get("configured_at"):
        configured += f", {state['configured_at']}"
    root_key = "offline (not on this appliance)" if not (layout.secrets_dir / "root_ca_key").exists() \
        else f"{layout.secrets_dir / 'root_ca_key'} (encrypted)"
    step_cli = shutil.which("step")
    return [
        ("service", service),
        ("CA URL", cajson.ca_url(ca)),
        ("root fingerprint (SHA-256)", pki.fingerprint(root)),
        ("ACME directory", cajson.acme_directory_url(ca)),
        ("intermediate expires", pki.not_after(intermediate).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("provisioners", provisioners),
        ("SSH CA", "on" if config.get("ssh") else "off"),
        ("database", database_status(config)),
        ("root key", root_key),
        ("configured by", configured),
        ("step CLI", step_cli if step_cli else
         "not installed (the CA does not need it; clients use ACME or the root above)"),
    ]


def database_status(config):
    """The database step-ca uses and, for a shared one, whether it takes our credentials now."""
    db = database.from_ca_json(config)
    if not database.is_shared(db):
        return database.describe(db)
    try:
        database.check_reachable(db, timeout=3)
    except database.Unreachable as error:
        return f"{database.describe(db)}; NOT reachable: {error}"
    return f"{database.describe(db)}; reachable"


def render(rows):
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in rows)
