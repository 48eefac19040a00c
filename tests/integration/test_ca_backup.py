"""`ca-appliance backup` and `restore`: the same CA comes back, root and issued-certificate records alike."""
import io
import stat
import tarfile

from ca_helpers import PASSWORD, run_cli
from test_ca_acme import NAME, certbot, certbot_certonly

BACKUP_PASSPHRASE = "backup-passphrase-for-tests"


def test_backup_then_restore_keeps_the_root_and_the_issued_certificates(make_ca, serve, tmp_path, port_80_free):
    ca = make_ca()
    server = serve(ca)
    issued = certbot_certonly(ca, tmp_path)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    server.stop()  # the appliance's backup stops step-ca itself; here it is the test's process

    archive = tmp_path / "ca-backup.tar.gz"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(BACKUP_PASSPHRASE + "\n")
    run_cli("backup", "--out", archive, "--prefix", ca.prefix, "--no-system", "--passphrase-file", passphrase)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    sealed = archive.read_bytes()
    assert sealed.startswith(b"CA-APPLIANCE-BACKUP\n")  # format 2: no tar, no password.txt in the clear
    assert PASSWORD.encode() not in sealed and b"password.txt" not in sealed
    fingerprint_before = run_cli("status", "--prefix", ca.prefix).stdout

    ca.setup("--force")  # a different CA in its place: new root, empty database
    assert run_cli("status", "--prefix", ca.prefix).stdout != fingerprint_before

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-backup-passphrase\n")
    for extra in ((), ("--passphrase-file", wrong)):
        refused = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system", *extra, check=False)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "passphrase" in refused.stderr and BACKUP_PASSPHRASE not in refused.stderr
    assert run_cli("status", "--prefix", ca.prefix).stdout != fingerprint_before
    restored = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system",
                       "--passphrase-file", passphrase).stdout
    status = run_cli("status", "--prefix", ca.prefix).stdout
    fingerprint = next(line for line in fingerprint_before.splitlines() if line.startswith("root fingerprint"))
    assert fingerprint in status
    assert fingerprint.split()[-1] in restored

    serve(ca)
    # ACME revocation looks the certificate up in step-ca's database: it only works if the record came back.
    revoked = certbot(ca, tmp_path, "revoke", "--cert-path", tmp_path / "config/live" / NAME / "cert.pem",
                      "--no-delete-after-revoke")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr


def test_restore_refuses_an_archive_with_foreign_paths(make_ca, tmp_path):
    ca = make_ca()
    before = ca.root.read_bytes()
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"root::0:0::/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/step-ca/../../etc/passwd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    result = run_cli("restore", evil, "--prefix", ca.prefix, "--no-system", check=False)
    assert result.returncode == 2
    assert "unexpected member" in result.stderr
    assert ca.root.read_bytes() == before
    assert not (ca.prefix / "etc/passwd").exists()


def test_backup_without_a_ca_says_so(tmp_path):
    result = run_cli("backup", "--out", tmp_path / "b.tar.gz", "--prefix", tmp_path / "empty", "--no-system",
                     check=False)
    assert result.returncode == 2
    assert "no CA is configured" in result.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def format1_archive(ca, path, extra=()):
    """A format 1 backup (a plain .tar.gz, as earlier versions wrote), plus `extra` (TarInfo, bytes) members."""
    import json
    with tarfile.open(path, "w:gz") as tar:
        manifest = json.dumps({"format": 1, "created": "2026-01-01T00:00:00+00:00", "prefix": str(ca.prefix),
                               "root_fingerprint": "0" * 64}).encode()  # a lie: restore must not repeat it
        info = tarfile.TarInfo("ca-appliance-backup.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for top in ("etc/step-ca", "var/lib/step-ca"):
            tar.add(ca.prefix / top, arcname=top)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))


def test_restore_reads_format_1_and_normalises_modes(make_ca, tmp_path):
    ca = make_ca()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    fingerprint = x509.load_pem_x509_certificate(ca.root.read_bytes()).fingerprint(hashes.SHA256()).hex()
    # as earlier versions wrote it: an X5C provisioner trusting the CA's own root (the ACME-to-any-name hole)
    import base64
    import json
    config = ca.config
    config["authority"]["provisioners"].append({"type": "X5C", "name": "x5c",
                                                "roots": base64.b64encode(ca.root.read_bytes()).decode()})
    ca.ca_json.write_text(json.dumps(config))
    evil = tarfile.TarInfo("etc/step-ca/config/helper")
    evil.mode, evil.size = 0o6777, 4
    loose = tarfile.TarInfo("etc/step-ca/secrets/extra_key")
    loose.mode, loose.size = 0o666, 4
    archive = tmp_path / "old.tar.gz"
    format1_archive(ca, archive, [(evil, b"#!/x"), (loose, b"key!")])
    ca.setup("--force")
    restored = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system").stdout
    assert fingerprint in restored and "0" * 64 not in restored  # computed from the restored root
    assert stat.S_IMODE((ca.steppath / "config/helper").stat().st_mode) == 0o644  # no setuid, no write for others
    assert stat.S_IMODE((ca.steppath / "secrets/extra_key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ca.steppath / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE(ca.password_file.stat().st_mode) == 0o400
    assert "X5C" not in [p["type"] for p in ca.config["authority"]["provisioners"]]
