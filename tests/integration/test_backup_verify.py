"""Restore drills (issue 25): `ca-appliance backup --verify` and the watch's drill, through the real CLI
on real archives (written by `backup` and `setup --force`), while the real step-ca keeps serving.

The bad archives are real ones altered as a damaged disk, a careless hand or an attacker who knows
the passphrase would: a member changed after the manifest was written, a password.txt that no
longer opens the keys, a flipped byte in the sealed stream, the wrong passphrase.
"""
import gzip
import hashlib
import io
import json
import os
import ssl
import tarfile
import time
import urllib.request

import pytest
from ca_appliance import backup as guest_backup
from ca_helpers import PASSWORD, run_cli

PASSPHRASE = "drill-passphrase-for-tests"
MANIFEST = "ca-appliance-backup.json"


def tree_digest(root):
    """Every path under root with its bytes and mode: equal before and after means nothing was touched."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode() + oct(path.lstat().st_mode).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def healthy(ca):
    context = ssl.create_default_context(cafile=str(ca.root))
    with urllib.request.urlopen(f"{ca.url}/health", context=context, timeout=5) as response:
        return json.loads(response.read()) == {"status": "ok"}


def members_of(data):
    """{name: bytes or None (a directory)} of a .tar.gz, in order."""
    result = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            result[member.name] = tar.extractfile(member).read() if member.isfile() else None
    return result


def tar_gz(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def drill_env(tmp_path):
    """TMPDIR of the drill's own: it must be empty again afterwards."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return tmp, {**os.environ, "TMPDIR": str(tmp)}


@pytest.fixture
def backed_up(make_ca, serve, tmp_path):
    """A CA with a sealed backup written by the CLI (step-ca stopped for it, as the appliance does),
    then served again."""
    ca = make_ca()
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    archive = tmp_path / "ca.backup"
    run_cli("backup", "--out", archive, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase_file)
    server = serve(ca)
    return ca, server, archive, passphrase_file


def verify(archive, *extra, env=None):
    return run_cli("backup", "--verify", archive, *extra, check=False, env=env)


def test_a_good_archive_passes_without_touching_the_serving_ca(backed_up, drill_env):
    ca, server, archive, passphrase_file = backed_up
    tmp, env = drill_env
    before, pid = tree_digest(ca.prefix), server.process.pid
    assert healthy(ca)
    result = verify(archive, "--passphrase-file", passphrase_file, env=env)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(f"Restore drill passed: {archive}: good: sealed (format 2, authenticated)")
    assert "members match the manifest's SHA-256" in line
    # intermediate, root, SSH host and user keys, and the JWK provisioner's key
    assert "5 keys (key files and provisioner keys) opened with the archived CA password" in line
    assert PASSPHRASE not in result.stdout + result.stderr and PASSWORD not in result.stdout + result.stderr
    assert server.process.poll() is None and server.process.pid == pid and healthy(ca)
    assert tree_digest(ca.prefix) == before
    assert list(tmp.iterdir()) == []   # its temporary directory is gone


def test_the_wrong_passphrase_is_one_line(backed_up, tmp_path, drill_env):
    _, _, archive, _ = backed_up
    tmp, env = drill_env
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-drill-passphrase\n")
    result = verify(archive, "--passphrase-file", wrong, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ca-appliance: backup --verify: {archive}: the passphrase does not open this backup (or the file was altered)"]
    assert "not-the-drill-passphrase" not in result.stderr and list(tmp.iterdir()) == []
    no_passphrase = verify(archive, env=env)   # stdin is no terminal: nobody to ask
    assert no_passphrase.returncode == 2 and "give its passphrase" in no_passphrase.stderr


def test_a_flipped_byte_in_the_sealed_stream_is_refused(backed_up, tmp_path):
    _, _, archive, passphrase_file = backed_up
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(bytes(data))
    result = verify(damaged, "--passphrase-file", passphrase_file)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "altered" in result.stderr or "damaged" in result.stderr


def test_a_member_changed_after_the_manifest_is_named(backed_up, tmp_path):
    """Re-sealed with the right passphrase: only the manifest's digests can tell."""
    _, _, archive, passphrase_file = backed_up
    members = members_of(guest_backup.unseal(archive.read_bytes(), PASSPHRASE, archive))
    name = "etc/step-ca/config/defaults.json"
    members[name] = members[name].replace(b'"ca-url"', b'"ca-url" ')
    tampered = tmp_path / "tampered.backup"
    tampered.write_bytes(guest_backup.seal(tar_gz(members), PASSPHRASE))
    result = verify(tampered, "--passphrase-file", passphrase_file)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        f"ca-appliance: backup --verify: {tampered}: member '{name}' does not match the manifest's SHA-256 "
        "(altered or damaged)"]


def test_keys_that_do_not_open_with_the_archived_password_are_each_named(backed_up, tmp_path):
    _, _, archive, passphrase_file = backed_up
    members = members_of(guest_backup.unseal(archive.read_bytes(), PASSPHRASE, archive))
    members["etc/step-ca/password.txt"] = b"some-other-password-entirely\n"
    manifest = json.loads(members[MANIFEST])
    manifest["digests"]["etc/step-ca/password.txt"] = hashlib.sha256(members["etc/step-ca/password.txt"]).hexdigest()
    members[MANIFEST] = json.dumps(manifest).encode()
    bad = tmp_path / "other-password.backup"
    bad.write_bytes(guest_backup.seal(tar_gz(members), PASSPHRASE))
    result = verify(bad, "--passphrase-file", passphrase_file)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    keys = ("intermediate_ca_key", "root_ca_key", "ssh_host_ca_key", "ssh_user_ca_key")
    assert [line.split(": ", 3)[3] for line in lines] == [
        *(f"key etc/step-ca/secrets/{key} does not open with the archived CA password (etc/step-ca/password.txt)"
          for key in keys),
        "the encrypted key of provisioner 'admin@test.example' in ca.json does not open with the archived CA "
        "password (wrong password or altered key)"]
    assert "some-other-password-entirely" not in result.stderr


def test_the_watch_drills_the_newest_archive_in_var_backups(make_ca):
    ca = make_ca()
    ca.setup("--force")   # leaves the previous CA, plain (format 1), in var/backups/ca-appliance
    [saved] = (ca.prefix / "var/backups/ca-appliance").iterdir()
    watched = run_cli("watch", "--prefix", ca.prefix, "--no-system").stdout
    assert f"ca-appliance watch: restore drill: {saved}: good: plain (format 1)" in watched
    assert "match the manifest's SHA-256" in watched

    data = members_of(saved.read_bytes())
    data["etc/step-ca/certs/intermediate_ca.crt"] += b"\n"
    saved.write_bytes(tar_gz(data))
    watched = run_cli("watch", "--prefix", ca.prefix, "--no-system").stdout
    assert ("warning: the newest backup fails its restore drill: backup --verify: "
            f"{saved}: member 'etc/step-ca/certs/intermediate_ca.crt' does not match") in watched

    old = time.time() - 40 * 86400
    os.utime(saved, (old, old))
    watched = run_cli("watch", "--prefix", ca.prefix, "--no-system").stdout
    assert f"warning: the newest backup in {saved.parent} is 40 days old" in watched


def test_no_archive_no_drill_and_no_warning(make_ca):
    ca = make_ca()
    watched = run_cli("watch", "--prefix", ca.prefix, "--no-system").stdout
    assert "restore drill" not in watched and "backup" not in watched


def test_an_archive_from_before_digests_still_passes_with_a_note(make_ca, tmp_path):
    ca = make_ca()
    ca.setup("--force")
    [saved] = (ca.prefix / "var/backups/ca-appliance").iterdir()
    data = members_of(saved.read_bytes())
    manifest = json.loads(data[MANIFEST])
    del manifest["digests"]
    data[MANIFEST] = json.dumps(manifest).encode()
    old = tmp_path / "old-format.tar.gz"
    old.write_bytes(gzip.compress(gzip.decompress(tar_gz(data))))
    result = verify(old)
    assert result.returncode == 0, result.stderr
    assert "an archive from before digests: not checked against a list" in result.stdout
