"""Upgrades: the way from appliance version N to N+1 is `ca-appliance backup` on N, a new image,
and a restore at its first boot instead of a new CA.

A first boot restores when
- the answers (file, credential, CASEED volume, OVF) say `restore: FILE` or
  `restore: {archive: FILE, passphrase: ...}`; a relative FILE is looked up beside the answers
  file, else on the volume labelled CASEED (`ca-appliance.yaml` and the archive side by side);
- or, in the console wizard, when archives are found (in /var/backups/ca-appliance or on the
  CASEED volume) and the person picks one.
The restored CA keeps its root, intermediate, provisioners and database (ACME accounts, issued
certificates); the answers' network and admin keys still apply, and the hostname comes from the
backup. Backups of every format backup.py reads are accepted (format 1: plain tar.gz).
"""
import datetime
import shutil
import tempfile
from pathlib import Path

from . import backup, banner, cajson, system
from .answers import AnswersError
from .staging import write_file

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".backup", ".bak", ".cabackup")


RESTORE_KEYS = ("archive", "passphrase", "allow_unencrypted")


def restore_request(raw):
    """{'archive': str, 'passphrase': str or None, 'allow_unencrypted': bool} from raw answers'
    `restore`, or None. Only the archive's name is ever shown in a message (never the mapping: it
    may hold the passphrase), and an unknown key is named, never its value."""
    value = raw.get("restore") if isinstance(raw, dict) else None
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = {"archive": value}
    allowed = "must name a backup archive: restore: FILE or restore: {archive: FILE, passphrase: ...}"
    if not isinstance(value, dict):
        raise AnswersError("restore", "<hidden>", allowed)
    unknown = sorted(str(key) for key in value if key not in RESTORE_KEYS)
    if unknown:
        raise AnswersError(f"restore.{unknown[0]}", "<hidden>", f"is not a restore key ({', '.join(RESTORE_KEYS)})")
    if not isinstance(value.get("archive"), str) or not value["archive"].strip():
        raise AnswersError("restore.archive", "<hidden>" if value.get("archive") is not None else "<empty>", allowed)
    passphrase = value.get("passphrase")
    if passphrase is not None and not isinstance(passphrase, str):
        raise AnswersError("restore.passphrase", "<hidden>", "must be a string")
    allow_unencrypted = value.get("allow_unencrypted", False)
    if not isinstance(allow_unencrypted, bool):
        raise AnswersError("restore.allow_unencrypted", allow_unencrypted, "must be true or false")
    return {"archive": value["archive"].strip(), "passphrase": passphrase, "allow_unencrypted": allow_unencrypted}


def _seed_archives(prefix, names=None):
    """Archives on the CASEED volume, copied to a private temp dir: {name: path}. Empty when none."""
    if prefix is not None and Path(prefix).resolve() != Path("/"):
        return {}  # a test tree has no block devices of its own
    from . import sources
    found = {}
    for device in sources._block_devices_with("LABEL", sources.SEED_LABEL):
        try:
            with sources._mounted_read_only(device, "caseed") as mountpoint:
                for path in sorted(Path(mountpoint).iterdir()):
                    wanted = path.name in names if names else path.name.endswith(ARCHIVE_SUFFIXES)
                    if path.is_file() and wanted and path.name not in found:
                        found[path.name] = _private_copy(path)
        except Exception:  # noqa: BLE001 - an unreadable volume just offers nothing
            continue
    return found


def _private_copy(path):
    directory = Path(tempfile.mkdtemp(prefix="ca-appliance-restore-"))
    target = directory / path.name
    write_file(target, Path(path).read_bytes(), 0o600)
    return target


def locate(request, base_dir=None, prefix=None):
    """The archive a restore request names, as a readable local path; AnswersError when not found."""
    name = Path(request["archive"])
    candidates = [name] if name.is_absolute() else [Path(base_dir) / name] if base_dir else []
    for path in candidates:
        if path.is_file():
            return path
    if not name.is_absolute():
        seeded = _seed_archives(prefix, names={name.name})
        if name.name in seeded:
            return seeded[name.name]
    raise AnswersError("restore", request["archive"], "no such backup archive (beside the answers file, "
                                                      "or on the CASEED volume)")


def offered_archives(layout):
    """What the wizard offers: archives in the backup directory, then on the CASEED volume."""
    local = sorted(p for p in layout.backup_dir.glob("*") if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES)) \
        if layout.backup_dir.is_dir() else []
    return local + list(_seed_archives(None if layout.is_system else layout.prefix).values())


def ask_restore(layout, console_input, output, getpass):
    """In the wizard: offer the archives found; a restore request, or None for a new CA."""
    archives = offered_archives(layout)
    if not archives:
        return None
    print("\nBackups of a CA were found. Upgrading from an older appliance? Restore one instead of "
          "creating a new CA:", file=output)
    for number, path in enumerate(archives, 1):
        print(f"  {number}) {path}", file=output)
    while True:
        answer = console_input(f"Restore which backup (1-{len(archives)}), or Enter for a new CA? [new] ").strip()
        if answer in ("", "new", "n"):
            return None
        if answer.isdigit() and 1 <= int(answer) <= len(archives):
            chosen = archives[int(answer) - 1]
            passphrase = None
            if _is_encrypted(chosen):
                passphrase = getpass("Passphrase of this backup: ")
            return {"archive": str(chosen), "passphrase": passphrase, "path": chosen}
        print(f"  please answer a number from 1 to {len(archives)}, or press Enter", file=output)


def _is_encrypted(path):
    with open(path, "rb") as handle:
        return handle.read(2) != b"\x1f\x8b"  # format 1 is gzip; anything else is a sealed format


def restore_at_first_boot(layout, archive, *, passphrase=None, answers=None, use_system=True, out=None,
                          allow_unencrypted=False):
    """Restore the CA from `archive`, then what setup does around a CA: firewall, hostname, network,
    admin keys, trust store, service, banner. Returns the restored root fingerprint."""
    import json

    from . import apply
    if layout.is_configured():  # setup --force over a CA: keep it, as setup does
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        saved = backup.backup(layout, layout.backup_dir / f"ca-appliance-{stamp}.tar.gz", use_system=use_system)
        print(f"Previous CA saved to {saved}", file=out)
    fingerprint = backup.restore(layout, archive, use_system=use_system, passphrase=passphrase or None,
                                 allow_unencrypted=allow_unencrypted)
    config = json.loads(layout.ca_json.read_text())
    state = json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}
    write_file(layout.firewalld_service, apply.firewalld_service_xml(cajson.listen_port(config["address"])), 0o644)
    banner.write(layout)
    layout.apply_ownership(layout.backup_dir)   # the previous CA's archive: root's, 0600 in a 0700 directory
    if use_system and layout.is_system:
        system.restore_selinux_labels(layout.firewalld_service, layout.issue_file)
        if state.get("hostname"):
            system.set_hostname(state["hostname"])
        if answers:
            system.configure_network(answers["network"])
            for note in (system.configure_chrony(answers["network"].get("ntp")),   # the restored CA keeps time too
                         system.install_admin_keys(answers["admin"]["user"], answers["admin"]["ssh_authorized_keys"])):
                if note:
                    print(f"note: {note}", file=out)
        apply.serve_restored_ca(layout, out)
    apply.mark_complete(layout)   # last: the first-boot unit is done once this exists
    directory = cajson.acme_directory_url({"address": config["address"], "dns_names": config["dnsNames"]})
    print(f"\nRestored the CA from {archive}.\n  Root fingerprint:  {fingerprint}\n  ACME directory:    {directory}",
          file=out)
    return fingerprint


def cleanup(path):
    """Remove a private copy made from the CASEED volume (never the operator's own file)."""
    path = Path(path)
    if path.parent.name.startswith("ca-appliance-restore-") and path.parent.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(path.parent, ignore_errors=True)
