"""`ca-appliance status`: what an admin needs at a glance, read from the files setup wrote.

`--json` gives monitoring the same facts; the exit status follows the Nagios plugin convention
(0 ok, 1 warning, 2 critical: see watch.py), so `ca-appliance status` can be a check command.
"""
import datetime
import json
import shutil

from . import buildinfo, cajson, clock, database, pki, stepca, system, watch
from .errors import UserError

TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def facts(layout, use_system=True, check_health=None, now=None):
    """Everything status reports, as a JSON-ready dict. Health is checked on the system's own CA,
    or under --prefix only when asked (check_health=True)."""
    if not layout.is_configured():
        raise UserError(f"status: no CA is configured under {layout.prefix} (no {layout.ca_json}); "
                        "run `ca-appliance setup`")
    now = now or datetime.datetime.now(datetime.UTC)
    if check_health is None:
        check_health = use_system and layout.is_system
    config = json.loads(layout.ca_json.read_text())
    state = json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}
    info = buildinfo.load(layout.prefix)
    root = pki.load_certificate(config["root"])
    intermediate = pki.load_certificate(config["crt"])
    ca = {"address": config["address"], "dns_names": config["dnsNames"]}
    installed = stepca.installed_version()
    test_reason = buildinfo.test_image_reason(info, installed)
    clock_state = watch.clock_state()   # the real clock, never `now` (a test's)
    # the clock's findings on the appliance itself (under --prefix the clock is the test host's)
    found = watch.findings(layout, check_health, now=now,
                           clock_state=clock_state if use_system and layout.is_system else None)
    if test_reason:  # a test image is never "ok": monitoring sees a warning (exit 1)
        found = [watch.Finding(watch.WARNING, f"{buildinfo.TEST_IMAGE_MARK}: {test_reason}"), *found]
    health_problems = [f.message for f in found if f.message.startswith("step-ca is not healthy")]
    root_key = layout.secrets_dir / "root_ca_key"
    version = installed or info.get("step_ca_version")
    hostname = state.get("hostname")
    return {
        "state": watch.LEVEL_NAMES[watch.level(found)],
        "exit_code": watch.level(found),
        "findings": [{"level": watch.LEVEL_NAMES[f.level], "message": f.message} for f in found],
        "service": system.service_state() if use_system and layout.is_system else None,
        "clock": clock_state,
        "health": ("not checked" if not check_health else health_problems[0] if health_problems else "ok"),
        "ca_url": cajson.ca_url(ca),
        "acme_directory": cajson.acme_directory_url(ca),
        "roots_url": cajson.ca_url(ca) + "/roots.pem",
        "health_url": cajson.ca_url(ca) + "/health",
        "crl_url": (config.get("crl") or {}).get("idpURL") or (cajson.ca_url(ca) + "/crl")
        if (config.get("crl") or {}).get("enabled") else None,
        "crl": crl_status(config, now) if check_health and (config.get("crl") or {}).get("enabled") else None,
        "client_page_url": f"http://{hostname}/" if info.get("client_page") and hostname else None,
        "root_fingerprint": pki.fingerprint(root),
        "root": _cert_facts(root, now),
        "intermediate": _cert_facts(intermediate, now),
        "provisioners": [{"name": p["name"], "type": p["type"]}
                         for p in config["authority"].get("provisioners", [])],
        "ssh_ca": bool(config.get("ssh")),
        "database": database_status(config),
        "root_key": "on-appliance" if root_key.exists() else "offline",
        "step_ca_version": version,
        "step_cli": shutil.which("step"),
        "test_image": test_reason is not None,
        "test_image_reason": test_reason,
        "appliance": {"name": info.get("name"), "version": info.get("version"), "base": info.get("base")},
        "configured_by": state.get("answers_source"),
        "configured_at": state.get("configured_at"),
        "intermediate_renewed_at": state.get("intermediate_renewed_at"),
    }


def crl_status(config, now):
    """The CRL step-ca serves: when it was issued, until when it is valid, its age and entries."""
    crl, problem = stepca.crl(config, config["root"])
    if crl is None:
        return {"error": problem}
    last, following = pki.crl_updates(crl)
    return {"last_update": last.strftime(TIME_FORMAT),
            "next_update": following.strftime(TIME_FORMAT) if following else None,
            "age_seconds": int((now - last).total_seconds()),
            "revoked": len(crl)}


def _cert_facts(cert, now):
    return {"subject": cert.subject.rfc4514_string(), "not_after": pki.not_after(cert).strftime(TIME_FORMAT),
            "days_left": watch.days_left(cert, now)}


def rows(info, layout):
    """The human view: an ordered list of (label, value)."""
    configured = info["configured_by"] or "unknown"
    if info["configured_at"]:
        configured += f", {info['configured_at']}"
    result = []
    if info["test_image"]:
        result.append(("TEST IMAGE", "not for production" + (f" ({info['test_image_reason']})"
                                                             if info["test_image_reason"] else "")))
    result += [
        ("state", info["state"].upper()),
        *[(finding["level"], finding["message"]) for finding in info["findings"]
          if not finding["message"].startswith(buildinfo.TEST_IMAGE_MARK)],  # the first row says it
        ("service", info["service"] or "not checked (--prefix: not this system's service)"),
        ("health", info["health"]),
        ("clock", clock.summary(info["clock"])),
        ("CA URL", info["ca_url"]),
        ("root fingerprint (SHA-256)", info["root_fingerprint"]),
        ("ACME directory", info["acme_directory"]),
        ("intermediate expires", f"{info['intermediate']['not_after']} ({info['intermediate']['days_left']} days)"),
        ("root expires", f"{info['root']['not_after']} ({info['root']['days_left']} days)"),
        ("provisioners", ", ".join(f"{p['name']} ({p['type']})" for p in info["provisioners"])),
        ("SSH CA", "on" if info["ssh_ca"] else "off"),
        ("database", info["database"]),
        ("root key", f"{layout.secrets_dir / 'root_ca_key'} (encrypted)" if info["root_key"] == "on-appliance"
         else "offline (not on this appliance)"),
        ("step-ca version", info["step_ca_version"] or "unknown"),
        ("configured by", configured),
        ("step CLI", info["step_cli"] or
         "not installed (the CA does not need it; clients use ACME or the root above)"),
    ]
    if info["client_page_url"]:
        result.append(("client page", info["client_page_url"]))
    if info["crl_url"]:
        result.append(("CRL", info["crl_url"]))
    return result


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
