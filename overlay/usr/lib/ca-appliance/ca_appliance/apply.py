"""Turn validated answers into a configured CA: all or nothing.

Everything is generated in memory, written to staged trees beside the real ones, then renamed
into place. A failure or Ctrl-C before that point leaves the previous state exactly as it was;
the system steps (hostname, network, firewall, trust store, service) come after, each naming
itself when it fails.
"""
import datetime
import json
import secrets
import string
import sys

from cryptography.hazmat.primitives.asymmetric import ec

from . import backup, cajson, jose, pki, system, timing
from .errors import StepFailed, UserError
from .staging import Staging, make_dir, write_file

# 32 characters from 64 symbols: 192 bits; no quotes, spaces or backslashes to trip a shell or a console.
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_"
PASSWORD_LENGTH = 32
STATE_VERSION = 1


def generate_password():
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def check_constraints_cover_dns_names(ca):
    """The CA's own TLS certificate must satisfy the intermediate's name constraints."""
    permitted = ca["name_constraints"]
    for name in ca["dns_names"]:
        if not pki.name_permitted(name, permitted["dns"], permitted["ip"]):
            raise UserError(f"answers error: ca.dns_names: {name!r} is outside ca.name_constraints "
                            f"(dns {permitted['dns']}, ip {permitted['ip']}); add it there or remove it")


def firewalld_service_xml(port):
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<service>\n  <short>step-ca</short>\n'
        "  <description>The appliance's certificate authority (step-ca): ACME, JWK, X5C and SSH "
        "provisioners over HTTPS. Written by ca-appliance setup with the configured port.</description>\n"
        f'  <port protocol="tcp" port="{port}"/>\n</service>\n'
    )


def issue_text(ca, root_fingerprint):
    return (
        f"Certificate authority: {ca['name']}\n"
        f"  ACME directory:   {cajson.acme_directory_url(ca)}\n"
        f"  Root fingerprint: {root_fingerprint}\n"
        "  (ca-appliance status for more)\n\n"
    )


def _write_step_tree(root, ca, material, config, defaults, password, keep_root_key):
    """STEPPATH's contents under `root` (a staged directory); secrets 0600 in a 0700 dir, password 0400."""
    config_dir = make_dir(root / "config", 0o755)
    certs_dir = make_dir(root / "certs", 0o755)
    secrets_dir = make_dir(root / "secrets", 0o700)
    write_file(config_dir / "ca.json", json.dumps(config, indent=2) + "\n", 0o644)
    write_file(config_dir / "defaults.json", json.dumps(defaults, indent=2) + "\n", 0o644)
    write_file(certs_dir / "root_ca.crt", material.root_cert_pem, 0o644)
    write_file(certs_dir / "intermediate_ca.crt", material.intermediate_cert_pem, 0o644)
    write_file(secrets_dir / "intermediate_ca_key", material.intermediate_key_pem, 0o600)
    if keep_root_key:
        write_file(secrets_dir / "root_ca_key", material.root_key_pem, 0o600)
    if ca["ssh"]:
        write_file(certs_dir / "ssh_host_ca_key.pub", material.ssh_host_pub, 0o644)
        write_file(certs_dir / "ssh_user_ca_key.pub", material.ssh_user_pub, 0o644)
        write_file(secrets_dir / "ssh_host_ca_key", material.ssh_host_key_pem, 0o600)
        write_file(secrets_dir / "ssh_user_ca_key", material.ssh_user_key_pem, 0o600)
    write_file(root / "password.txt", password, 0o400)
    root.chmod(0o755)


def _show_root_key(material, root_key_out, out):
    if root_key_out:
        path = root_key_out
        write_file(path, material.root_key_pem, 0o600)
        print(f"Root private key (encrypted with the CA password) written to {path}: "
              "move it off the appliance; it is not kept here.", file=out)
        return
    print("Root private key (encrypted with the CA password). Copy it now and keep it offline;\n"
          "it is not stored on the appliance and will not be shown again:", file=out)
    print(material.root_key_pem.decode("ascii"), file=out)


def setup(answers, source, layout, *, use_system=True, force=False, root_key_out=None, out=sys.stdout):
    """Create the CA described by validated `answers` under `layout`; returns the state recorded."""
    ca = answers["ca"]
    if layout.is_configured() and not force:
        raise UserError(f"setup: a CA is already configured ({layout.ca_json}); "
                        "run `ca-appliance setup --force` to replace it (a timestamped backup is written first)")
    check_constraints_cover_dns_names(ca)
    generated = ca["password"] is None
    password = generate_password() if generated else ca["password"]

    print("Generating root and intermediate certificates...", file=out, flush=True)
    with timing.timed("generate CA keys and certificates"):
        material = pki.create_ca(
            ca["name"], password, key_type=ca["key_type"], root_years=ca["root_years"],
            intermediate_years=ca["intermediate_years"], permitted_dns=ca["name_constraints"]["dns"],
            permitted_ip=ca["name_constraints"]["ip"], ssh=ca["ssh"])
    with timing.timed("provisioner key (PBKDF2)"):
        provisioner_key = ec.generate_private_key(ec.SECP256R1())
        config = cajson.ca_json(ca, layout, material.root_cert_pem, jose.public_jwk(provisioner_key),
                                jose.encrypted_private_jwk(provisioner_key, password))
    defaults = cajson.defaults_json(ca, layout, material.root_fingerprint)
    keep_root_key = ca["root_key"] == "keep"
    state = {
        "version": STATE_VERSION,
        "configured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "answers_source": source,
        "hostname": answers["hostname"],
        "ca_url": cajson.ca_url(ca),
        "acme_directory": cajson.acme_directory_url(ca),
        "root_fingerprint": material.root_fingerprint,
        "root_key": ca["root_key"],
        "key_type": ca["key_type"],
        "ssh": ca["ssh"],
    }

    step_user = system.ensure_step_user() if use_system else None
    was_running = False
    staging = Staging()
    current = "stop step-ca"
    try:
        if use_system:
            was_running = system.stop_service() if layout.is_configured() else False
        if layout.is_configured():
            current = "back up the previous CA"
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            saved = backup.write_archive(layout, layout.backup_dir / f"ca-appliance-{stamp}.tar.gz")
            print(f"Previous CA saved to {saved}", file=out)
        current = "stage files"
        step_tree = staging.stage_dir(layout.steppath)
        _write_step_tree(step_tree, ca, material, config, defaults, password, keep_root_key)
        data_tree = staging.stage_dir(layout.data_dir)
        data_tree.chmod(0o750)
        make_dir(data_tree / "db", 0o700)
        if step_user is not None:
            current = "give the files to user step"
            system.chown_tree(step_tree, step_user)
            system.chown_tree(data_tree, step_user)
        current = "move files into place"
        staging.swap()
        staging.replace_file(layout.state_file, json.dumps(state, indent=2) + "\n", 0o644)
        staging.commit()
    except KeyboardInterrupt:
        staging.rollback()
        _restart_previous(use_system, was_running)
        raise
    except (OSError, StepFailed) as error:
        staging.rollback()
        _restart_previous(use_system, was_running)
        detail = error.detail if isinstance(error, StepFailed) else str(error)
        raise StepFailed(f"setup ({current})", f"{detail}; the previous state was left as it was") from None

    if not keep_root_key:
        _show_root_key(material, root_key_out, out)
    write_file(layout.firewalld_service, firewalld_service_xml(cajson.listen_port(ca["address"])), 0o644)
    write_file(layout.issue_file, issue_text(ca, material.root_fingerprint), 0o644)
    if use_system:
        _system_steps(answers, layout, restart=was_running, out=out)
    _report(ca, material, password if generated else None, layout, out, use_system)
    return state


def _restart_previous(use_system, was_running):
    if use_system and was_running:
        try:
            system.start_service()
        except StepFailed:
            pass  # the failure being reported matters more


def _system_steps(answers, layout, restart, out):
    system.restore_selinux_labels(layout.steppath, layout.data_dir, layout.state_dir, layout.firewalld_service,
                                  layout.issue_file)
    system.set_hostname(answers["hostname"])
    system.configure_network(answers["network"])
    admin = answers["admin"]
    for note in (system.install_admin_keys(admin["user"], admin["ssh_authorized_keys"]), system.open_firewall()):
        if note:
            print(f"note: {note}", file=out)
    system.install_trust_anchor(layout.root_cert)
    system.start_service(restart=restart)
    system.refresh_console_issue()


def _report(ca, material, generated_password, layout, out, use_system):
    print(f"\nYour CA is ready.\n"
          f"  Root certificate:  {layout.root_cert}\n"
          f"  Root fingerprint:  {material.root_fingerprint}\n"
          f"  CA URL:            {cajson.ca_url(ca)}\n"
          f"  ACME directory:    {cajson.acme_directory_url(ca)}\n"
          f"  Provisioner:       {ca['provisioner']} (JWK)", file=out)
    if generated_password:
        # Shown once, on the console only: it is in password.txt (0400, user step) and nowhere else.
        _show_on_console(f"\n  CA password (generated; shown once, write it down): {generated_password}\n",
                         out, use_system)
    out.flush()


def _show_on_console(text, out, use_system):
    """Print a secret where a person reads it: the terminal, or /dev/console when output goes to a log."""
    if use_system and not out.isatty():
        try:
            with open("/dev/console", "w") as console:
                console.write(text + "\n")
            print("  (the generated CA password was shown on the system console, not in this output)", file=out)
            return
        except OSError:
            pass
    print(text, file=out)
