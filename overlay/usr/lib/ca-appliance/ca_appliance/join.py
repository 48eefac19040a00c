"""`ca-appliance join`: make this appliance another node of an existing CA.

A node of a CA on a shared database (ca.database: mysql) is its PKI (root, intermediate, keys,
password, provisioners: all in a `ca-appliance backup`) plus a pointer to the database, where
step-ca keeps everything that changes (ACME accounts, orders, nonces, issued certificates).
So joining is: check the backup is of such a CA and that its database takes our credentials,
restore the backup (all or nothing), then make the few node-specific changes (listen address,
and the DSN when this node reaches the server differently).
"""
import datetime
import json
import os
import sys

from cryptography.x509.oid import NameOID

from . import apply, backup, banner, cajson, database, pki
from .errors import UserError
from .staging import write_file


def join(layout, archive, *, answers=None, address=None, use_system=True, out=sys.stdout, passphrase=None,
         allow_unencrypted=False):
    """Become a node of the CA `archive` backs up; returns the root fingerprint.

    answers: validated answers (hostname, network, admin, ca.address, and ca.database when it
    names a shared database) or None: keep the backup's address and database, touch no system
    setting but the firewall, trust store and service.
    passphrase: of an encrypted (format 2) backup; allow_unencrypted: accept a plain one even so.
    The archive is read once (backup.restore); its ca.json is checked (a shared database, its name
    a plain identifier, the database reachable) before anything is swapped in."""
    if layout.is_configured():
        raise UserError(f"join: a CA is already configured ({layout.ca_json}); a node joins from a fresh "
                        "appliance (or restore the backup with `ca-appliance restore` to replace this CA)")
    if not os.path.isfile(archive):
        raise UserError(f"join: {archive}: no such file; give a `ca-appliance backup` of a node of the CA to join")
    chosen = {}

    def check(config, manifest):   # the staged ca.json, read from the bytes that will be installed
        db = database.from_ca_json(config)
        if answers is not None and database.is_shared(answers["ca"]["database"]):
            db = answers["ca"]["database"]
        if not database.is_shared(db):
            raise UserError(f"join: {archive}: is a backup of a CA with the embedded badger database; only a CA "
                            "on a shared database (ca.database type mysql) can have several nodes")
        apply.check_database(db)
        chosen["db"], chosen["created"] = db, manifest.get("created")
        chosen["address"] = address if address is not None else (
            answers["ca"]["address"] if answers is not None else config["address"])

    fingerprint = backup.restore(layout, archive, use_system=use_system, passphrase=passphrase,
                                 allow_unencrypted=allow_unencrypted, before_commit=check, command="join")
    db, address = chosen["db"], chosen["address"]
    config = json.loads(layout.ca_json.read_text())
    config["address"] = address
    config["db"] = database.ca_json_block(db, layout.db_dir)
    write_file(layout.ca_json, json.dumps(config, indent=2) + "\n", 0o400)
    layout.apply_ownership(layout.ca_json)   # the table's owner and mode (0400: it holds the DSN)
    state = json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}
    state.update({
        "answers_source": f"join ({os.path.abspath(archive)})",
        "joined_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "joined_from_backup_of": chosen["created"],
        "database": {key: value for key, value in db.items() if key != "dsn"},
    })
    if answers is not None:
        state["hostname"] = answers["hostname"]
    write_file(layout.state_file, json.dumps(state, indent=2) + "\n", 0o644)
    layout.apply_ownership(layout.state_file)

    root = pki.load_certificate(layout.root_cert)
    names = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ca = {"name": names[0].value.removesuffix(" Root CA") if names else "CA", "address": address,
          "dns_names": config["dnsNames"]}
    write_file(layout.firewalld_service, apply.firewalld_service_xml(cajson.listen_port(address)), 0o644)
    banner.write(layout)
    if use_system:
        if answers is not None:
            apply._system_steps(answers, layout, restart=True, out=out)
        else:
            apply.serve_restored_ca(layout, out)
    apply.mark_complete(layout)   # last: the first-boot unit is done once this exists
    print(f"This appliance is now a node of the CA with root fingerprint {fingerprint}.\n"
          f"  CA URL:    {cajson.ca_url(ca)}\n"
          f"  Database:  {database.describe(db)}", file=out)
    return fingerprint
