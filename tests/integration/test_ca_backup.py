"""`ca-appliance backup` and `restore`: the same CA comes back, root and issued-certificate records alike."""
import io
import stat
import tarfile

from ca_helpers import run_cli
from test_ca_acme import NAME, certbot, certbot_certonly


def test_backup_then_restore_keeps_the_root_and_the_issued_certificates(make_ca, serve, tmp_path, port_80_free):
    ca = make_ca()
    server = serve(ca)
    issued = certbot_certonly(ca, tmp_path)
    assert issued.returncode == 0, issued.stdout + issued.stderr
    server.stop()  # the appliance's backup stops step-ca itself; here it is the test's process

    archive = tmp_path / "ca-backup.tar.gz"
    run_cli("backup", "--out", archive, "--prefix", ca.prefix, "--no-system")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "etc/step-ca/secrets/intermediate_ca_key" in names and "etc/step-ca/password.txt" in names
    assert any(name.startswith("var/lib/step-ca/db/") for name in names)
    fingerprint_before = run_cli("status", "--prefix", ca.prefix).stdout

    ca.setup("--force")  # a different CA in its place: new root, empty database
    assert run_cli("status", "--prefix", ca.prefix).stdout != fingerprint_before

    restored = run_cli("restore", archive, "--prefix", ca.prefix, "--no-system").stdout
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
