"""The backup archive reader (archive.py, backup.restore) against hostile archives, in process: limits,
names, duplicates, links, KDF parameters, a passphrase for a plain archive, and Hypothesis fuzzing
of whole files and of archives mutated from a real one. Every refusal is a UserError of one line
without the passphrase, and leaves the prefix exactly as it was (no staged leftovers either).
Examples per property: CA_TEST_FUZZ_EXAMPLES (make check 200, make test 1000: FUZZ_EXAMPLES in the Makefile)."""
import base64
import copy
import gzip
import hashlib
import io
import json
import os
import pwd
import tarfile
from pathlib import Path

import pytest
from ca_appliance import answers, apply, archive, backup, renew, system
from ca_appliance.errors import UserError
from ca_appliance.layout import OWNERSHIP, Layout, ownership_of
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("CA_TEST_FUZZ_EXAMPLES", "200"))
PASSPHRASE = "fuzz-backup-passphrase-Zq7"
STEP_UID = 4242


def validated():
    ca = {"name": "Archive CA", "dns_names": ["ca.lab.example"], "address": ":443", "provisioner": "a@lab.example",
          "password": "Vx7-kq2R-mw9P-tz4L-hb3N", "ssh": False}
    return answers.validate({"hostname": "ca.lab.example", "ca": ca}, answers.load_defaults())


def make_ca(prefix, step_account=True):
    prefix.mkdir(parents=True)
    if step_account:   # the tree's own account database: owners come from it (layout.accounts)
        (prefix / "etc").mkdir()
        (prefix / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nstep:x:{STEP_UID}:{STEP_UID}::/:/bin/false\n")
        (prefix / "etc/group").write_text(f"root:x:0:\nstep:x:{STEP_UID}:\n")
    layout = Layout(prefix)
    apply.setup(validated(), "test", layout, use_system=False, out=io.StringIO())
    return layout


def snapshot(root):
    """Every path under root: type, mode, owner, content digest."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            path = Path(directory) / name
            info = os.lstat(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
            found[str(path.relative_to(root))] = (info.st_mode, info.st_uid, digest)
    return found


def tar_gz(members):
    """A .tar.gz of (TarInfo, bytes or None) in order, as written (no normalisation)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def members_of(layout):
    """The members of a real format 1 backup of layout, as (TarInfo, bytes or None)."""
    plain = Path(str(layout.prefix) + "-plain.tar.gz")
    if not plain.exists():
        backup.write_archive(layout, plain)
    result = []
    with tarfile.open(plain) as tar:
        for info in tar.getmembers():
            result.append((info, tar.extractfile(info).read() if info.isfile() else None))
    return result


def file_info(name, **fields):
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def refused(layout, path, *, passphrase=None, allow_unencrypted=False, expect=None):
    """Restore must refuse with one line (UserError), the passphrase never in it, nothing changed."""
    before = snapshot(layout.prefix)
    with pytest.raises(UserError) as error:
        backup.restore(layout, path, use_system=False, passphrase=passphrase, allow_unencrypted=allow_unencrypted)
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    assert PASSPHRASE not in message
    if expect:
        assert expect in message, message
    assert snapshot(layout.prefix) == before
    return message


def fingerprint_installed(layout):
    cert = x509.load_pem_x509_certificate(layout.root_cert.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("archive") / "root")


# ---- the ownership table ----


def test_the_table_keeps_the_root_key_roots_and_every_secret_closed():
    assert ownership_of("etc/step-ca/secrets/root_ca_key", False) == ("root", 0o600)
    assert ownership_of("etc/step-ca/secrets/intermediate_ca_key", False) == ("step", 0o600)
    assert ownership_of("etc/step-ca/secrets", True) == ("step", 0o700)
    assert ownership_of("etc/step-ca/password.txt", False) == ("step", 0o400)
    assert ownership_of("etc/step-ca/config/ca.json", False) == ("step", 0o644)
    assert ownership_of("etc/step-ca/config/ca.json", False, holds_secret=True) == ("step", 0o400)
    assert ownership_of("var/lib/step-ca", True) == ("step", 0o750)
    assert ownership_of("var/lib/step-ca/db/000001.vlog", False) == ("step", 0o600)
    assert ownership_of("etc/ca-appliance/state.json", False) == ("root", 0o644)
    assert ownership_of("etc/passwd", False) is None
    for entry in OWNERSHIP:   # nothing the table names is writable by group or others, nor setuid
        for mode in (entry.file_mode, entry.dir_mode, entry.secret_mode):
            assert mode is None or mode & 0o7022 == 0, entry.path


def owners_and_modes_follow_the_table(layout):
    for top in (layout.steppath, layout.data_dir, layout.state_file):
        for path in [top, *(top.rglob("*") if top.is_dir() else [])]:
            info = os.lstat(path)
            relative = path.relative_to(layout.prefix)
            owner, mode = ownership_of(relative, path.is_dir(), holds_secret=False)
            if relative.as_posix() == "etc/step-ca/config/ca.json":
                mode = info.st_mode & 0o777 if info.st_mode & 0o777 in (0o644, 0o400) else mode
            assert (info.st_uid, info.st_mode & 0o7777) == ({"root": 0, "step": STEP_UID}[owner], mode), relative


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")
def test_renew_intermediate_keeps_the_root_key_roots_when_the_tree_goes_to_step(tmp_path, monkeypatch):
    # issue 21 item 1: renew.py chowned the whole copied tree, root key included, to user step.
    layout = make_ca(tmp_path / "root", step_account=False)
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(system, "ensure_step_user", lambda: nobody)   # the appliance's step, without useradd
    monkeypatch.setattr(system, "service_state", lambda: "inactive")
    monkeypatch.setattr(Layout, "is_system", property(lambda self: True))  # the appliance's own code path
    monkeypatch.setattr(system, "restore_selinux_labels", lambda *paths: None)
    renew.renew_intermediate(layout, use_system=True)
    key = layout.root_key.stat()
    assert (key.st_uid, key.st_gid, key.st_mode & 0o777) == (0, 0, 0o600)
    assert (layout.secrets_dir / "intermediate_ca_key").stat().st_uid == nobody.pw_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")
def test_setup_restore_and_renewal_give_every_path_the_tables_owner_and_mode(tmp_path):
    layout = make_ca(tmp_path / "root")
    owners_and_modes_follow_the_table(layout)
    plain = tmp_path / "plain.tar.gz"
    backup.write_archive(layout, plain)
    for path in layout.secrets_dir.iterdir():   # what a careless hand or an old version left
        os.chown(path, STEP_UID, STEP_UID)
        path.chmod(0o644)
    backup.restore(layout, plain, use_system=False)
    owners_and_modes_follow_the_table(layout)
    renew.renew_intermediate(layout, use_system=False)
    owners_and_modes_follow_the_table(layout)


# ---- names, duplicates, links ----


def test_duplicate_members_are_refused_even_when_spelt_apart(ca, tmp_path):
    # issue 21 item 2: the fingerprint read the first root_ca.crt, the extraction wrote the last.
    other = make_ca(tmp_path / "other", step_account=False)
    foreign_root = other.root_cert.read_bytes()
    for spelling in ("etc/step-ca/certs/root_ca.crt", "./etc/step-ca/certs/root_ca.crt",
                     "etc/step-ca//certs/root_ca.crt", "etc/step-ca/certs/./root_ca.crt"):
        path = tmp_path / "dup.tar.gz"
        path.write_bytes(tar_gz([*members_of(ca), (file_info(spelling), foreign_root)]))
        refused(ca, path, expect="two members named 'etc/step-ca/certs/root_ca.crt'")


@pytest.mark.parametrize("info, data, expect", [
    (file_info("etc/step-ca/../step-ca/certs/x"), b"x", "'..'"),
    (file_info("/etc/step-ca/certs/x"), b"x", "absolute"),
    (file_info("etc/step-ca/certs/link", type=tarfile.SYMTYPE, linkname="/etc/shadow"), None, "no links"),
    (file_info("etc/step-ca/certs/hard", type=tarfile.LNKTYPE, linkname="etc/step-ca/password.txt"), None,
     "no links"),
    (file_info("etc/step-ca/certs/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None, "devices"),
    (file_info("etc/step-ca/certs/fifo", type=tarfile.FIFOTYPE), None, "FIFOs"),
    (file_info("etc/step-ca/certs/a\nb"), b"x", "control characters"),
    (file_info("etc/passwd"), b"root::0:0::/:/bin/sh\n", "only files under"),
    (file_info("etc/step-ca/config/ca.json/inner"), b"x", "a file and a directory"),
])
def test_hostile_members_are_refused_before_anything_is_installed(ca, tmp_path, info, data, expect):
    path = tmp_path / "hostile.tar.gz"
    path.write_bytes(tar_gz([*members_of(ca), (info, data)]))
    refused(ca, path, expect=expect)


def test_a_ca_json_naming_another_root_is_refused(ca, tmp_path):
    members = []
    for info, data in members_of(ca):
        if info.name.endswith("config/ca.json"):
            config = json.loads(data)
            config["root"] = "/etc/ssl/certs/ca-certificates.crt"
            data = json.dumps(config).encode()
        members.append((info, data))
    path = tmp_path / "other-root.tar.gz"
    path.write_bytes(tar_gz(members))
    refused(ca, path, expect="names another root")


def test_a_restored_database_name_must_be_a_plain_identifier(ca, tmp_path):
    # issue 21 item 11: the name goes into `CREATE DATABASE <name>` unquoted (join's check, step-ca's query)
    members = []
    for info, data in members_of(ca):
        if info.name.endswith("config/ca.json"):
            config = json.loads(data)
            config["db"] = {"type": "mysql", "dataSource": "u:secret-pw@tcp(db.lab.example:3306)/",
                            "database": "x; DROP DATABASE mysql"}
            data = json.dumps(config).encode()
        members.append((info, data))
    path = tmp_path / "sql.tar.gz"
    path.write_bytes(tar_gz(members))
    message = refused(ca, path, expect="db.database")
    assert "secret-pw" not in message


# ---- limits and the sealed header ----


def test_a_gzip_bomb_stops_at_the_unpacked_limit(ca, tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", 4 * 2 ** 20)
    zeros = b"\0" * (16 * 2 ** 20)
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(tar_gz([*members_of(ca), (file_info("var/lib/step-ca/db/big"), zeros)]))
    assert path.stat().st_size < 2 ** 20
    refused(ca, path, expect="unpacks to more than 4 MiB, the most a CA archive may")


def test_a_flipped_byte_anywhere_in_a_sealed_archive_is_one_line(ca, tmp_path):
    """AES-GCM's tag is checked at the end, so a flipped ciphertext byte first reaches gzip and tar as a
    flipped plaintext byte: wherever it lands, one line (a fresh-clone CI run saw zlib's `incorrect
    data check` escape as a traceback)."""
    sealed = backup.seal(tar_gz(members_of(ca)), PASSPHRASE)
    body_start = sealed.index(b"\n") + 1
    path = tmp_path / "flipped.bak"
    for position in range(body_start, len(sealed), max(1, (len(sealed) - body_start) // 24)):
        data = bytearray(sealed)
        data[position] ^= 0x01
        path.write_bytes(bytes(data))
        message = refused(ca, path, passphrase=PASSPHRASE)
        assert "altered" in message or "damaged" in message, (position, message)


def test_a_restore_that_would_fill_the_disk_says_so_and_how_much_is_free(ca, tmp_path, monkeypatch):
    """The real free space of tmp_path's file system, with a reserve larger than it: no room at all."""
    free = archive.free_bytes(tmp_path)
    monkeypatch.setattr(archive, "DISK_RESERVE", free + 2 ** 30)
    path = tmp_path / "ok.tar.gz"
    path.write_bytes(tar_gz(members_of(ca)))
    message = refused(ca, path, expect="needs more space than")
    assert "MiB free, of which" in message and "free space and run it again" in message


def test_member_count_and_size_limits(ca, tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 30)
    path = tmp_path / "many.tar.gz"
    path.write_bytes(tar_gz([*members_of(ca), *[(file_info(f"var/lib/step-ca/db/f{i}"), b"") for i in range(40)]]))
    refused(ca, path, expect="more than 30 members")
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 2 ** 20)
    path.write_bytes(tar_gz([*members_of(ca), (file_info("var/lib/step-ca/db/big"), b"x" * (2 ** 20 + 1))]))
    refused(ca, path, expect="larger than 1 MiB")


def test_an_oversized_pax_header_is_refused_before_it_is_read(ca, tmp_path):
    info = file_info("etc/step-ca/certs/long")
    info.pax_headers = {"comment": "x" * (archive.MAX_EXTENDED_HEADER + 1)}
    path = tmp_path / "pax.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members_of(ca):
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        tar.addfile(info, io.BytesIO(b""))
    path.write_bytes(buffer.getvalue())
    refused(ca, path, expect="extended header")


def sealed_with(header_fields, body=b"\0" * 64):
    header = {"format": 2, "kdf": "scrypt", "n": 2 ** 4, "r": 8, "p": 1, "cipher": "AES-256-GCM",
              "salt": base64.b64encode(b"s" * 16).decode(), "nonce": base64.b64encode(b"n" * 12).decode()}
    header.update(header_fields)
    return archive.MAGIC + json.dumps(header).encode() + b"\n" + body


@pytest.mark.parametrize("fields, expect", [
    ({"n": 2 ** 20}, "scrypt n 1048576"),    # 1 GiB of scrypt memory before any authentication
    ({"n": 2 ** 18}, "scrypt n"),
    ({"n": 3}, "scrypt n 3 (a power of two"),   # issue 21 item 9: was a traceback
    ({"n": 1000}, "a power of two"),
    ({"r": 32}, "scrypt r 32"),
    ({"p": 16}, "p 16"),
    ({"n": "16"}, "must be integers"),
    ({"nonce": base64.b64encode(b"n" * 200).decode()}, "nonce"),
    ({"salt": "***"}, "base64"),
    ({"extra": 1}, "keys must be"),
])
def test_a_sealed_header_asks_for_no_more_than_the_writer_uses(ca, tmp_path, fields, expect):
    path = tmp_path / "sealed.bak"
    path.write_bytes(sealed_with(fields))
    refused(ca, path, passphrase=PASSPHRASE, expect=expect)


def test_a_passphrase_for_a_plain_archive_needs_allow_unencrypted(ca, tmp_path):
    # issue 21 item 2: a plain (unauthenticated) archive was restored silently although a passphrase was given
    path = tmp_path / "plain.tar.gz"
    path.write_bytes(tar_gz(members_of(ca)))
    refused(ca, path, passphrase=PASSPHRASE, expect="--allow-unencrypted")
    assert backup.restore(ca, path, use_system=False, passphrase=PASSPHRASE, allow_unencrypted=True) \
        == fingerprint_installed(ca)


def test_a_wrong_passphrase_says_so_and_a_sealed_archive_round_trips(ca, tmp_path):
    sealed = tmp_path / "sealed.bak"
    backup.write_archive(ca, sealed, passphrase=PASSPHRASE)
    refused(ca, sealed, passphrase="not-" + PASSPHRASE, expect="passphrase does not open")
    refused(ca, sealed, expect="give its passphrase")
    blob = sealed.read_bytes()
    sealed.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))   # the tag
    refused(ca, sealed, passphrase=PASSPHRASE, expect="does not open")
    sealed.write_bytes(blob + b"\0")
    refused(ca, sealed, passphrase=PASSPHRASE)
    sealed.write_bytes(blob)
    assert backup.restore(ca, sealed, use_system=False, passphrase=PASSPHRASE) == fingerprint_installed(ca)


def test_write_file_never_follows_a_symlink(tmp_path):
    from ca_appliance.staging import write_file
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "root-key.pem"
    link.symlink_to(victim)
    write_file(link, "secret", 0o600)
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "secret" and link.stat().st_mode & 0o777 == 0o600


# ---- fuzzing ----

FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=4096), sealed=st.booleans())
def test_any_bytes_are_refused_in_one_line(ca, tmp_path, data, sealed):
    path = tmp_path / "any.bak"
    path.write_bytes((archive.MAGIC if sealed else b"") + data)
    refused(ca, path, passphrase=PASSPHRASE if sealed else None)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_any_gzip_stream_is_refused_in_one_line(ca, tmp_path, data):
    path = tmp_path / "any.tar.gz"
    path.write_bytes(gzip.compress(data))
    refused(ca, path)


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["format", "kdf", "n", "r", "p", "cipher", "salt", "nonce", "x"]),
                              st.one_of(st.integers(-2, 2 ** 22), st.text(max_size=30), st.none(), st.booleans(),
                                        st.floats(allow_nan=True), st.lists(st.integers(), max_size=2)),
                              max_size=4),
       body=st.binary(max_size=256))
def test_any_sealed_header_is_refused_in_one_line(ca, tmp_path, fields, body):
    assume(not (isinstance(fields.get("n"), int) and 2 ** 12 < fields.get("n", 0) <= 2 ** 17))  # time, not safety
    path = tmp_path / "header.bak"
    path.write_bytes(sealed_with(fields, body))
    refused(ca, path, passphrase=PASSPHRASE)


NAMES = st.sampled_from([
    "etc/step-ca/certs/root_ca.crt", "./etc/step-ca/certs/root_ca.crt", "etc/step-ca/certs/../certs/root_ca.crt",
    "/etc/step-ca/certs/root_ca.crt", "etc/step-ca/config/ca.json", "etc/step-ca//config/ca.json",
    "etc/step-ca/secrets/root_ca_key", "etc/step-ca", "var/lib/step-ca", "etc/ca-appliance/state.json",
    "ca-appliance-backup.json", "./ca-appliance-backup.json", "etc/shadow", "var/lib/step-ca/db/x", "",
    ".", "etc/step-ca/certs/root_ca.crt/x", "etc/step-ca/password.txt", "etc/step-ca/\x1b[2J",
])
TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"V", b"x"])


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(["add", "drop", "rename", "retype", "resize"]), NAMES, TYPES,
                                  st.binary(max_size=64), st.integers(0, 100)), min_size=1, max_size=4))
def test_mutated_real_archives_are_refused_or_install_what_they_report(ca, tmp_path, changes):
    members = [(copy.copy(info), data) for info, data in members_of(ca)]
    for operation, name, kind, data, index in changes:
        position = index % len(members) if members else 0
        if operation == "add":
            members.insert(position, (file_info(name, type=kind), data if kind in tarfile.REGULAR_TYPES else None))
        elif operation == "drop" and members:
            members.pop(position)
        elif operation == "rename" and members:
            members[position][0].name = name
        elif operation == "retype" and members:
            info, old = members[position]
            info.type = kind
            members[position] = (info, old if kind in tarfile.REGULAR_TYPES else None)
        elif operation == "resize" and members and members[position][1] is not None:
            members[position] = (members[position][0], data)
    path = tmp_path / "mutated.tar.gz"
    try:
        path.write_bytes(tar_gz(members))
    except (ValueError, tarfile.TarError, UnicodeError):
        assume(False)   # tarfile itself will not write it
    before = snapshot(ca.prefix)
    try:
        reported = backup.restore(ca, path, use_system=False)
    except UserError as error:
        message = str(error)
        assert len(message.splitlines()) == 1 and PASSPHRASE not in message
        assert snapshot(ca.prefix) == before
        return
    assert reported == fingerprint_installed(ca)   # what it reports is what it installed
    key = ca.root_key
    if key.exists():
        assert (key.stat().st_uid, key.stat().st_mode & 0o077) == (0, 0)
    assert not list(ca.prefix.glob("etc/.step-ca.*")) and not list(ca.prefix.glob("var/lib/.step-ca.*"))
    # the next example starts from a CA like the first
    backup.restore(ca, Path(str(ca.prefix) + "-plain.tar.gz"), use_system=False)


@pytest.mark.parametrize("how", ["a directory", "a file below it"])
def test_a_directory_where_the_root_key_belongs_is_refused(ca, tmp_path, how):
    """Found by the fuzzer (1000 examples): an archive whose secrets/root_ca_key is a directory (or holds
    a file, so it becomes one) was restored, and the directory took the secrets tree's owner, step."""
    members = []
    for info, data in members_of(ca):
        if info.name == "etc/step-ca/secrets/root_ca_key":
            if how == "a directory":
                info.type, data = tarfile.DIRTYPE, None
            else:
                members.append((file_info("etc/step-ca/secrets/root_ca_key/inside"), b"x"))
                continue
        members.append((info, data))
    path = tmp_path / "odd.tar.gz"
    path.write_bytes(tar_gz(members))
    refused(ca, path, expect="etc/step-ca/secrets/root_ca_key")
