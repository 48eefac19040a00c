"""Turn validated answers into a configured CA: all or nothing.

Everything is generated in memory, written to staged trees beside the real ones, then renamed
into place (replace.CAReplacement, shared with restore). A failure, Ctrl-C or power cut before
that point leaves the previous state exactly as it was; an offline root key is delivered before
it. The system steps (hostname, network, admin keys, sshd, firewall, trust store, service) come
after, each idempotent; the completion marker is written last, so a cut first boot reruns them.
"""
import datetime
import json
import os
import secrets
import string
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from . import answers as answers_rules
from . import (
    backup,
    banner,
    cajson,
    clientpage,
    database,
    jose,
    markers,
    pki,
    replace,
    showsecret,
    sshd,
    system,
    timing,
)
from .errors import StepFailed, UserError
from .staging import checkpoint, fsync_dir, make_dir, write_file

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


def ca_json_mode(db):
    """ca.json holds a shared database's DSN (its password): then it is a secret like password.txt."""
    return 0o400 if database.is_shared(db) else 0o644


def check_database(db):
    """A shared database must take our credentials before anything is written (exit 2 otherwise);
    returns how many tables it holds (see database.check_reachable)."""
    try:
        return database.check_reachable(db)
    except database.Unreachable as error:
        raise UserError(f"answers error: ca.database: {error}; nothing was changed") from None


def _write_step_tree(root, ca, material, config, defaults, password, keep_root_key):
    """STEPPATH's contents under `root` (a staged directory); secrets 0600 in a 0700 dir, password 0400."""
    config_dir = make_dir(root / "config", 0o755)
    certs_dir = make_dir(root / "certs", 0o755)
    secrets_dir = make_dir(root / "secrets", 0o700)
    write_file(config_dir / "ca.json", json.dumps(config, indent=2) + "\n",
               ca_json_mode(ca.get("database") or database.DEFAULT))
    write_file(config_dir / "defaults.json", json.dumps(defaults, indent=2) + "\n", 0o644)
    write_file(certs_dir / "root_ca.crt", material.root_cert_pem, 0o644)
    write_file(certs_dir / "intermediate_ca.crt", material.intermediate_cert_pem, 0o644)
    if material.root_crl_der:
        write_file(certs_dir / cajson.ROOT_CRL_FILE, material.root_crl_der, 0o644)
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


def sshd_dropin(admin_user):
    """Key-only SSH for the admin alone (the same drop-in provision lays at build time)."""
    return sshd.dropin_text(admin_user)


def _secret_channel(out, use_system):
    """Where a secret may be shown: this terminal, or the VGA console tty1 when output goes to a log
    (the journal); None when neither exists. Never /dev/console (a serial port a hypervisor may
    log), a pipe or a file (showsecret)."""
    return showsecret.operator_terminal(out, use_system)


def check_root_key_out(path):
    """--root-key-out must name a new file in an existing, writable directory (checked before any work)."""
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise UserError(f"setup: --root-key-out {str(path)!r} is a directory; name a new file in it")
    if target.exists():
        raise UserError(f"setup: --root-key-out {str(path)!r} exists; name a new file (a key is never overwritten)")
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK | os.X_OK):
        raise UserError(f"setup: --root-key-out {str(path)!r}: {target.parent} is not a writable directory")
    return target


def _deliver_root_key(material, passphrase, root_key_out, channel, out):
    """Before anything is committed: the offline root key to its file (fsynced) or the console, and
    its passphrase to the console. Never to `out` when that is a log."""
    if root_key_out is not None:
        try:
            write_file(root_key_out, material.root_key_pem, 0o600)
            fsync_dir(root_key_out.parent)
        except OSError as error:
            root_key_out.unlink(missing_ok=True)
            raise UserError(f"setup: --root-key-out {str(root_key_out)!r}: cannot be written "
                            f"({error.strerror}); nothing was changed") from None
        where, text = f"written to {root_key_out}", ""
    else:
        where = "below"
        text = ("Copy it now and keep it offline; it is not stored on the appliance and will not be shown again:\n"
                + material.root_key_pem.decode("ascii") + "\n")
    channel.write(f"\nRoot key passphrase (its own, not the CA password; shown once): {passphrase}\n"
                  f"Root private key (encrypted with that passphrase) {where}.\n" + text)
    channel.flush()
    if channel is not out:
        print("The offline root key's passphrase" + ("" if root_key_out else " and the key itself")
              + f" were shown on {showsecret.describe(channel, out)}, not in this output"
              + (f"; the key was written to {root_key_out}" if root_key_out else "") + ".", file=out)
    checkpoint("root key delivered")


def _state(answers, source, ca, material):
    return {
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
        "database": {key: value for key, value in (ca.get("database") or database.DEFAULT).items()
                     if key != "dsn"},  # never the DSN: it holds a password
        # What the system steps need when a cut first boot reruns them (no secrets).
        "system": {"hostname": answers["hostname"], "network": answers["network"], "admin": answers["admin"],
                   "ca": {key: ca[key] for key in ("name", "address", "dns_names")}},
    }


def setup(answers, source, layout, *, use_system=True, force=False, root_key_out=None, out=sys.stdout):
    """Create the CA described by validated `answers` under `layout`; returns the state recorded."""
    ca = answers["ca"]
    replace.recover(layout)
    if layout.is_configured() and not force:
        raise UserError(f"setup: a CA is already configured ({layout.ca_json}); "
                        "run `ca-appliance setup --force` to replace it (a timestamped backup is written first)")
    check_constraints_cover_dns_names(ca)
    answers_rules.refuse_own_chain(ca.get("x5c_roots"), answers_rules.own_chain(layout))  # the CA --force replaces
    db = ca.get("database") or database.DEFAULT
    if check_database(db) and not force:  # another CA's state: this appliance should join it instead
        raise UserError(f"answers error: ca.database: {database.describe(db)} already holds a CA's state; "
                        "to add this appliance to that CA run `ca-appliance join --from BACKUP`, for a new CA "
                        "name an empty database (setup --force uses it anyway); nothing was changed")
    keep_root_key = ca["root_key"] == "keep"
    channel = None
    if not keep_root_key:
        root_key_out = check_root_key_out(root_key_out)
        channel = _secret_channel(out, use_system)
        if channel is None:
            raise UserError("setup: ca.root_key: offline shows the root key's passphrase only on a terminal or "
                            "the VGA console (tty1), and this run has neither; run setup on a console")
    generated = ca["password"] is None
    password = generate_password() if generated else ca["password"]
    root_passphrase = None if keep_root_key else generate_password()

    print("Generating root and intermediate certificates...", file=out, flush=True)
    # The key files' and the provisioner key's PBKDF2 dominate this step: they run side by side.
    with timing.timed("generate CA keys and certificates, seal them and the provisioner key"):
        provisioner_key = ec.generate_private_key(ec.SECP256R1())
        material, encrypted_provisioner_key = pki.in_parallel(
            lambda: pki.create_ca(
                ca["name"], password, key_type=ca["key_type"], root_years=ca["root_years"],
                intermediate_years=ca["intermediate_years"], permitted_dns=ca["name_constraints"]["dns"],
                permitted_ip=ca["name_constraints"]["ip"], ssh=ca["ssh"], root_password=root_passphrase,
                root_crl_url=cajson.root_crl_url(ca, clientpage.enabled(layout.prefix))),
            lambda: jose.encrypted_private_jwk(provisioner_key, password))
        answers_rules.refuse_own_chain(ca.get("x5c_roots"), [material.root_cert_pem, material.intermediate_cert_pem])
        config = cajson.ca_json(ca, layout, material.root_cert_pem, jose.public_jwk(provisioner_key),
                                encrypted_provisioner_key)
    defaults = cajson.defaults_json(ca, layout, material.root_fingerprint)
    state = _state(answers, source, ca, material)
    checkpoint("generated")
    if not keep_root_key:
        # Durable (or in front of a person) before the swap: a failure later can no longer lose it.
        try:
            _deliver_root_key(material, root_passphrase, root_key_out, channel, out)
        finally:
            if channel is not out:
                channel.close()

    step_user = system.ensure_step_user() if use_system else None
    with replace.CAReplacement(layout, "setup", use_system=use_system, step_user=step_user) as replacing:
        if layout.is_configured():
            replacing.step = "back up the previous CA"
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            saved = backup.write_archive(layout, layout.backup_dir / f"ca-appliance-{stamp}.tar.gz")
            print(f"Previous CA saved to {saved}", file=out)
        replacing.step = "stage files"
        step_tree = replacing.stage(layout.steppath)
        _write_step_tree(step_tree, ca, material, config, defaults, password, keep_root_key)
        data_tree = replacing.stage(layout.data_dir)
        data_tree.chmod(0o750)
        if not database.is_shared(db):
            make_dir(data_tree / "db", 0o700)
        checkpoint("staged")
        replacing.commit(json.dumps(state, indent=2) + "\n", reset_complete=True)
    checkpoint("committed")
    # `invoke verify` cuts the power when it sees this line on the console (markers.json)
    print(f"{markers.COMMITTED} (hostname, network, admin keys, sshd, firewall, trust store, step-ca).",
          file=out, flush=True)
    finish(layout, state["system"], use_system=use_system, restart=replacing.was_running, out=out)
    _report(ca, material, password if generated else None, layout, out, use_system)
    return state


def resumable(layout):
    """The saved system inputs when a committed CA's setup did not finish (a cut first boot), else None."""
    if not layout.is_configured() or layout.setup_complete.exists() or not layout.state_file.exists():
        return None
    try:
        return json.loads(layout.state_file.read_text()).get("system")
    except ValueError:
        return None


def finish(layout, saved, *, use_system=True, restart=False, out=sys.stdout):
    """Everything after the commit, each step idempotent, then the completion marker LAST.
    A failure here leaves no marker: the first-boot unit (or `ca-appliance setup`) reruns it."""
    ca = saved["ca"]
    try:
        write_file(layout.firewalld_service, firewalld_service_xml(cajson.listen_port(ca["address"])), 0o644)
        banner.write(layout)
        clientpage.publish(layout)   # the onboarding page, from the CA on disk (idempotent)
        write_file(layout.sshd_dropin, sshd_dropin(saved["admin"]["user"]), 0o644)
        checkpoint("files written")
        if use_system:
            _system_steps(saved, layout, restart=restart, out=out)
        mark_complete(layout)
    except OSError as error:
        raise StepFailed("setup (finish the system steps)",
                         f"{error}; the CA is in place, rerun `ca-appliance setup` (or reboot) to finish") from None
    except StepFailed as error:
        raise StepFailed(error.step, f"{error.detail}; the CA is in place, rerun `ca-appliance setup` "
                                     "(or reboot) to finish", log=error.log) from None


def mark_complete(layout):
    """The completion marker (durable): the first-boot unit stops running once it exists. Written
    last by setup; a first-boot restore must write it too once its own steps are done.

    Everything before it reaches the disk first (sync): the system steps write files themselves (the
    admin's authorized_keys) and through tools that do not fsync (hostnamectl, nmcli, firewall-cmd,
    update-ca-certificates). A power cut seconds after 'Your CA is ready' once left the marker on
    disk and authorized_keys empty: the first boot never ran again and the admin was locked out."""
    os.sync()
    write_file(layout.setup_complete, datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds") + "\n", 0o644)
    fsync_dir(layout.setup_complete.parent)
    # Baked answers served their one first boot: they must not linger for a later reader (or a backup).
    layout.baked_answers.unlink(missing_ok=True)


def serve_restored_ca(layout, out):
    """After a restore or a join without the admin's answers: open the firewall, trust the root,
    (re)start step-ca and refresh the consoles."""
    note = system.open_firewall()
    if note:
        print(f"note: {note}", file=out)
    system.install_trust_anchor(layout.root_cert)
    system.start_service(restart=True)
    system.refresh_console_issue()


def _system_steps(saved, layout, restart, out):
    system.restore_selinux_labels(layout.steppath, layout.data_dir, layout.state_dir, layout.firewalld_service,
                                  layout.issue_file, layout.sshd_dropin)
    system.set_hostname(saved["hostname"])
    checkpoint("hostname set")
    system.configure_network(saved["network"])
    checkpoint("network configured")
    admin = saved["admin"]
    # chrony: setup configured it before the clock check already (no change, no restart); a join and a
    # resumed setup get network.ntp here
    for note in (system.configure_chrony(saved["network"].get("ntp")),
                 system.install_admin_keys(admin["user"], admin["ssh_authorized_keys"]), system.reload_sshd(),
                 system.open_firewall()):
        if note:
            print(f"note: {note}", file=out)
    checkpoint("admin keys and firewall")
    system.install_trust_anchor(layout.root_cert)
    checkpoint("trust store")
    system.start_service(restart=restart)
    checkpoint("step-ca started")
    system.refresh_console_issue()


def _report(ca, material, generated_password, layout, out, use_system):
    print(f"\nYour CA is ready.\n"
          f"  Root certificate:  {layout.root_cert}\n"
          f"  Root fingerprint:  {material.root_fingerprint}\n"
          f"  CA URL:            {cajson.ca_url(ca)}\n"
          f"  ACME directory:    {cajson.acme_directory_url(ca)}\n"
          f"  Provisioner:       {ca['provisioner']} (JWK)\n"
          f"  Database:          {database.describe(ca.get('database') or database.DEFAULT)}", file=out)
    if generated_password:
        # Shown once, on the console only: it is in password.txt (0400, user step) and nowhere else.
        _show_on_console(f"\n  CA password (generated; shown once, write it down): {generated_password}\n",
                         out, use_system, layout.password_file)
    out.flush()


def _show_on_console(text, out, use_system, kept_in):
    """Show a secret once where the operator reads it (showsecret: this terminal, else the VGA
    console); `out`, when it is a log, only says where it was shown and where it is kept."""
    channel = showsecret.operator_terminal(out, use_system)
    if channel is out:
        print(text, file=out)
        return
    if channel is not None:
        with channel:
            channel.write(text + "\n")
    shown = f"was shown on {showsecret.describe(channel, out)} and " if channel is not None else ""
    print(f"  (the generated CA password {shown}is kept in {kept_in}, readable by root: "
          f"`sudo cat {kept_in}`; it is not printed here)", file=out)
