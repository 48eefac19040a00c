"""Where the appliance keeps its files, all under an optional prefix (tests use a temp dir).

The step-ca layout is `step ca init`'s with STEPPATH=/etc/step-ca; the database lives in
/var/lib/step-ca so /etc stays small and backups can treat config and data apart.
"""
import json
import os
import stat
from pathlib import Path, PurePosixPath

STEP_USER = "step"
SERVICE = "step-ca.service"
ROOT_USER = "root"


class Owned:
    """Who owns a path of the CA and with which mode. `tree`: also every path below it (the most
    specific entry wins). `secret_mode`: the file's mode when it holds a secret (ca.json with a DSN)."""

    def __init__(self, path, owner, file_mode, dir_mode=None, tree=False, secret_mode=None):
        self.path, self.owner, self.file_mode, self.dir_mode = PurePosixPath(path), owner, file_mode, dir_mode
        self.tree, self.secret_mode = tree, secret_mode

    def matches(self, relative):
        return relative == self.path or (self.tree and self.path in relative.parents)


# Ownership and mode are a property of the path, set here and nowhere else (issue 21): setup,
# restore, join, renew-intermediate and the upgrade's restore apply this table to everything they
# write (apply_ownership). Paths are relative to the prefix; group = owner. step-ca (user step)
# reads its tree but never the root key, which stays root's.
OWNERSHIP = (
    Owned("etc/step-ca", STEP_USER, 0o644, 0o755, tree=True),
    Owned("etc/step-ca/config/ca.json", STEP_USER, 0o644, secret_mode=0o400),  # 0400: it holds a database DSN
    Owned("etc/step-ca/password.txt", STEP_USER, 0o400),
    Owned("etc/step-ca/secrets", STEP_USER, 0o600, 0o700, tree=True),
    Owned("etc/step-ca/secrets/root_ca_key", ROOT_USER, 0o600),
    Owned("var/lib/step-ca", STEP_USER, 0o600, 0o700, tree=True),
    Owned("var/lib/step-ca", STEP_USER, None, 0o750),   # the top only: the unit's home, group-readable
    Owned("etc/ca-appliance/state.json", ROOT_USER, 0o644),
    Owned("var/backups/ca-appliance", ROOT_USER, 0o600, 0o700, tree=True),
)


def ownership_of(relative, is_dir, holds_secret=False):
    """(owner, mode) of a path relative to the prefix, from OWNERSHIP; None for a path it does not name."""
    relative = PurePosixPath(str(relative).lstrip("/"))
    found = [entry for entry in OWNERSHIP if entry.matches(relative)
             and (entry.dir_mode if is_dir else entry.file_mode) is not None]
    if not found:
        return None
    # most specific: the longest path, and at the same path the entry for this very path over a tree's
    entry = max(found, key=lambda e: (len(e.path.parts), not e.tree or relative != e.path))
    if is_dir:
        return entry.owner, entry.dir_mode
    return entry.owner, (entry.secret_mode if holds_secret and entry.secret_mode else entry.file_mode)


def _ids_from_files(passwd, group):
    """{user name: (uid, gid of the group of the same name)} from passwd/group files; {} when missing."""
    ids = {}
    try:
        groups = {line.split(":")[0]: int(line.split(":")[2]) for line in group.read_text().splitlines()
                  if line.count(":") >= 3}
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] in groups:
                ids[fields[0]] = (int(fields[2]), groups[fields[0]])
    except (OSError, ValueError):
        return {}
    return ids


class Layout:
    def __init__(self, prefix=None):
        self.prefix = Path(prefix).resolve() if prefix else Path("/")

    def path(self, absolute):
        """The absolute system path `absolute` as it is under this layout's prefix."""
        return self.prefix / str(absolute).lstrip("/")

    @property
    def is_system(self):
        return self.prefix == Path("/")

    # step-ca's own tree (STEPPATH) and data
    @property
    def steppath(self):
        return self.path("/etc/step-ca")

    @property
    def config_dir(self):
        return self.steppath / "config"

    @property
    def ca_json(self):
        return self.config_dir / "ca.json"

    @property
    def defaults_json(self):
        return self.config_dir / "defaults.json"

    @property
    def certs_dir(self):
        return self.steppath / "certs"

    @property
    def secrets_dir(self):
        return self.steppath / "secrets"

    @property
    def password_file(self):
        return self.steppath / "password.txt"

    @property
    def root_cert(self):
        return self.certs_dir / "root_ca.crt"

    @property
    def intermediate_cert(self):
        return self.certs_dir / "intermediate_ca.crt"

    @property
    def data_dir(self):
        return self.path("/var/lib/step-ca")

    @property
    def db_dir(self):
        return self.data_dir / "db"

    # the appliance's own state
    @property
    def state_dir(self):
        return self.path("/etc/ca-appliance")

    @property
    def state_file(self):
        return self.state_dir / "state.json"

    @property
    def baked_answers(self):
        """Answers baked into the image at build time; removed once a setup has completed."""
        return self.path("/etc/ca-appliance/answers.yaml")

    @property
    def setup_complete(self):
        """Written last by setup, after every system step: the first-boot unit runs until it exists."""
        return self.state_dir / "setup-complete"

    @property
    def replace_journal(self):
        """Present only while the CA's trees are being swapped: a crash leaves it for recovery."""
        return self.state_dir / "replace-journal.json"

    @property
    def root_key(self):
        return self.secrets_dir / "root_ca_key"

    @property
    def sshd_dropin(self):
        return self.path("/etc/ssh/sshd_config.d/10-ca-appliance.conf")

    @property
    def backup_dir(self):
        return self.path("/var/backups/ca-appliance")

    # system integration files
    @property
    def firewalld_service(self):
        return self.path("/etc/firewalld/services/step-ca.xml")

    @property
    def issue_file(self):
        return self.path("/etc/issue.d/ca-appliance.issue")

    def is_configured(self):
        return self.ca_json.exists()

    def accounts(self, step_user=None):
        """{owner name: (uid, gid)} for the owners OWNERSHIP names, from this tree's own account database
        (the system's on /, the prefix's etc/passwd and etc/group under a prefix): an owner it does not
        know is left out (its paths keep the owner that wrote them). `step_user`: a pwd entry to use."""
        ids = {ROOT_USER: (0, 0)}
        if step_user is not None:
            ids[STEP_USER] = (step_user.pw_uid, step_user.pw_gid)
        elif self.is_system:
            import grp
            import pwd
            try:
                ids[STEP_USER] = (pwd.getpwnam(STEP_USER).pw_uid, grp.getgrnam(STEP_USER).gr_gid)
            except KeyError:
                pass
        else:
            found = _ids_from_files(self.path("/etc/passwd"), self.path("/etc/group")).get(STEP_USER)
            if found is not None:
                ids[STEP_USER] = found
        return ids

    def apply_ownership(self, path, final=None, accounts=None):
        """Give `path` (and everything below it) the owner and mode OWNERSHIP names for `final` (where it
        will be: a staged tree's target; default `path` itself). Owners only when running as root and the
        owner is known (accounts()); never through a symlink. Paths the table does not name are left alone."""
        path = Path(path)
        if not os.path.lexists(path):
            return
        final = Path(final) if final is not None else path
        accounts = self.accounts() if accounts is None else accounts
        for current, target in _walk(path, final):
            info = os.lstat(current)
            if stat.S_ISLNK(info.st_mode):
                continue
            is_dir = stat.S_ISDIR(info.st_mode)
            try:
                relative = target.relative_to(self.prefix)
            except ValueError:
                continue
            owned = ownership_of(relative, is_dir, holds_secret=not is_dir and _holds_dsn(current, relative))
            if owned is None:
                continue
            owner, mode = owned
            if os.geteuid() == 0 and owner in accounts:
                os.lchown(current, *accounts[owner])
            os.chmod(current, mode)  # after chown: chown clears setuid bits, and mode has none anyway


def _walk(path, final):
    """(path, where it ends up) for `path` and, when it is a directory, everything below it."""
    yield path, final
    if path.is_dir() and not path.is_symlink():
        for directory, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                current = Path(directory) / name
                yield current, final / current.relative_to(path)


def _holds_dsn(path, relative):
    """ca.json naming a shared database holds its DSN (user and password)."""
    if relative != PurePosixPath("etc/step-ca/config/ca.json"):
        return False
    try:
        block = json.loads(Path(path).read_text(encoding="utf-8")).get("db") or {}
    except (OSError, ValueError, AttributeError):
        return True   # unreadable: the stricter mode
    return isinstance(block, dict) and block.get("type") not in (None, "badger", "badgerv2", "badgerV2")
