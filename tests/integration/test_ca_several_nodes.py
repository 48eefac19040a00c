"""Several appliances serving one CA over a shared database: a real MariaDB or PostgreSQL 15 on
loopback (started and stopped here; every test runs on both), two step-ca nodes made by
`ca-appliance setup` and `ca-appliance join`, and two ACME clients (certbot, acme-tiny) going
through a round-robin TCP proxy in front of them.
"""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from ca_helpers import CA, answers_for, free_port, openssl_verify, run_cli
from cluster_helpers import RoundRobinProxy, database_server
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from helpers.wizard import answer, bake, finish, start_setup, walk

from image.soak.clients import ChallengeServer

VENV_BIN = Path(sys.executable).parent
DB_PASSWORD = "db-Secret-0f-the-test-42"
DB_USER, DB_NAME = "stepca_node", "stepca"
NAME = "localhost"


KINDS = ["mysql", "postgresql"]
REFUSED_LOGIN = {"mysql": "Access denied for user", "postgresql": "password authentication failed for user"}


@pytest.fixture(scope="module", params=KINDS)
def dbserver(request, tmp_path_factory):
    """MariaDB or PostgreSQL 15 on loopback, for the whole module; stopped after it, also on failure."""
    with database_server(request.param, tmp_path_factory.mktemp(request.param)) as server:
        server.add_step_user(DB_USER, DB_PASSWORD)   # each test its own database: stepca, stepca_join, ...
        yield server

BACKUP_PASSPHRASE = "several-nodes-backup-passphrase"   # backups are always encrypted


def passphrase_file(tmp_path):
    path = tmp_path / "backup-passphrase"
    path.write_text(BACKUP_PASSPHRASE + "\n")
    return path


def manifest_of(archive):
    """The manifest inside an encrypted (format 2) backup, opened as restore opens it."""
    from ca_appliance import backup
    plain = backup.unseal(archive.read_bytes(), BACKUP_PASSPHRASE, str(archive))
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        return json.load(tar.extractfile("ca-appliance-backup.json"))



def shared_db(server, password=DB_PASSWORD, name=DB_NAME):
    return {"type": server.kind, "dsn": server.dsn(DB_USER, password), "database": name}


def assert_refused_and_nothing_written(result, prefix, expected):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    expected = (expected,) if isinstance(expected, str) else expected
    assert len(lines) == 1 and all(part in lines[0] for part in expected), result.stderr
    assert DB_PASSWORD not in result.stdout + result.stderr
    assert not prefix.exists() or not any(prefix.rglob("*")), sorted(prefix.rglob("*"))


@pytest.mark.parametrize("database, expected", [
    ({"type": "mysql", "dsn": f"stepca:{DB_PASSWORD}@127.0.0.1:3306", "database": DB_NAME},
     ("ca.database.dsn:", "<hidden>", "is not a MySQL DSN")),
    ({"type": "mysql", "dsn": f"stepca:{DB_PASSWORD}@tcp(127.0.0.1:3306)/stepca?tls=mine", "database": DB_NAME},
     ("ca.database.dsn:", "<hidden>", "is not a MySQL DSN", "tls must be true, false, skip-verify or preferred")),
    ({"type": "mysql", "dsn": f"stepca:{DB_PASSWORD}@tcp(127.0.0.1:3306)/", "database": "step-ca; DROP"},
     "ca.database.database"),
    ({"type": "postgresql", "dsn": f"host=127.0.0.1 user=u password={DB_PASSWORD}", "database": DB_NAME},
     ("ca.database.dsn:", "<hidden>", "is not a PostgreSQL DSN", "must be a URL")),
    ({"type": "postgresql", "dsn": f"postgresql://u:{DB_PASSWORD}@127.0.0.1:5432/other", "database": DB_NAME},
     ("ca.database.dsn:", "<hidden>", "names another database than ca.database.database")),
    ({"type": "mysql", "dsn": f"stepca:{DB_PASSWORD}@tcp(127.0.0.1:{free_port()})/", "database": DB_NAME},
     "cannot connect to the MySQL server at tcp(127.0.0.1:"),
    ({"type": "postgresql", "dsn": f"postgresql://stepca:{DB_PASSWORD}@127.0.0.1:{free_port()}/", "database": DB_NAME},
     "cannot connect to the PostgreSQL server at tcp(127.0.0.1:"),
])
def test_setup_refuses_a_bad_or_unreachable_database_in_one_line_writing_nothing(tmp_path, database, expected):
    prefix = tmp_path / "ca"
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(answers_for(free_port(), database=database)))
    result = run_cli("setup", "--answers", answers, "--prefix", prefix, "--no-system", check=False)
    assert_refused_and_nothing_written(result, prefix, expected)


def test_setup_refuses_credentials_the_server_rejects(tmp_path, dbserver):
    prefix = tmp_path / "ca"
    answers = tmp_path / "answers.yaml"
    answers.write_text(yaml.safe_dump(answers_for(free_port(), database=shared_db(dbserver, password="wrong-pw-1"))))
    result = run_cli("setup", "--answers", answers, "--prefix", prefix, "--no-system", check=False)
    assert_refused_and_nothing_written(result, prefix, REFUSED_LOGIN[dbserver.kind])


# ---- two nodes, one CA ----


def certbot(url, root, workdir, *args):
    env = dict(os.environ, REQUESTS_CA_BUNDLE=str(root))
    dirs = ["--config-dir", workdir / "config", "--work-dir", workdir / "work", "--logs-dir", workdir / "logs"]
    result = subprocess.run([str(VENV_BIN / "certbot"), *args, "-n", *map(str, dirs),
                             "--server", f"{url}/acme/acme/directory"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"certbot {args[0]}:\n{result.stdout}{result.stderr}"
    return result


def certbot_certonly(url, root, workdir, *extra):
    return certbot(url, root, workdir, "certonly", "--standalone", "-d", NAME, "--http-01-address", "127.0.0.1",
                   "--http-01-port", "80", *extra)


def acme_tiny(url, root, workdir, account_key, challenges):
    """acme-tiny: urllib opens a new connection per request, so the proxy alternates nodes within one order."""
    domain_key, csr = workdir / "domain.key", workdir / "domain.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(domain_key), "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}",
                    "-out", str(csr)], check=True, capture_output=True)
    env = dict(os.environ, SSL_CERT_FILE=str(root))
    result = subprocess.run([str(VENV_BIN / "acme-tiny"), "--account-key", str(account_key), "--csr", str(csr),
                             "--acme-dir", str(challenges), "--directory-url", f"{url}/acme/acme/directory",
                             "--disable-check"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"acme-tiny:\n{result.stderr}"
    return x509.load_pem_x509_certificate(result.stdout.encode())


def certbot_leaf(workdir):
    return x509.load_pem_x509_certificate((workdir / "config/live" / NAME / "cert.pem").read_bytes())


@pytest.fixture
def challenge_dir(tmp_path, port_80_free):
    """acme-tiny's webroot, served on 127.0.0.1:80 only while acme-tiny runs (certbot needs the port too)."""
    challenges = tmp_path / "webroot/.well-known/acme-challenge"
    challenges.mkdir(parents=True)
    return challenges


@pytest.mark.slow
def test_two_nodes_from_setup_and_join_serve_one_ca_through_a_round_robin_proxy(
        dbserver, serve, tmp_path, challenge_dir):
    port1, port2 = free_port(), free_port()
    node1 = CA(tmp_path / "node1", port1, answers_for(port1, database=shared_db(dbserver)))
    setup = node1.setup()
    assert DB_PASSWORD not in setup.stdout + setup.stderr
    assert f"database {DB_NAME} on tcp(127.0.0.1:{dbserver.port}) as user {DB_USER} (shared)" in setup.stdout
    assert node1.ca_json.stat().st_mode & 0o777 == 0o400  # it holds the DSN
    assert node1.config["db"] == {"type": dbserver.kind, "dataSource": dbserver.dsn(DB_USER, DB_PASSWORD),
                                  "database": DB_NAME}
    assert DB_PASSWORD not in (node1.prefix / "etc/ca-appliance/state.json").read_text()
    assert not (node1.prefix / "var/lib/step-ca/db").exists()
    server1 = serve(node1)

    # The second node: from a backup of the first (taken while it serves: nothing local to quiesce).
    archive = tmp_path / "node1-backup.tar.gz"
    run_cli("backup", "--prefix", node1.prefix, "--no-system", "--out", archive,
            "--passphrase-file", passphrase_file(tmp_path))
    manifest = manifest_of(archive)
    assert manifest["database"] == {"type": dbserver.kind, "database": DB_NAME, "included": False}
    joined = run_cli("join", "--from", archive, "--prefix", tmp_path / "node2", "--no-system",
                     "--passphrase-file", passphrase_file(tmp_path), "--address", f"127.0.0.1:{port2}")
    assert DB_PASSWORD not in joined.stdout + joined.stderr
    node2 = CA(tmp_path / "node2", port2, node1.answers)
    assert node2.ca_json.stat().st_mode & 0o777 == 0o400
    assert node2.config["address"] == f"127.0.0.1:{port2}"
    assert node2.config["authority"] == node1.config["authority"]  # the same provisioners, keys included
    assert node2.root.read_bytes() == node1.root.read_bytes()
    server2 = serve(node2)
    # The database now holds this CA's state: a new CA set up on it is refused (join is the way in).
    other = tmp_path / "other"
    (tmp_path / "other-answers.yaml").write_text(yaml.safe_dump(answers_for(free_port(), database=shared_db(dbserver))))
    refused = run_cli("setup", "--answers", tmp_path / "other-answers.yaml", "--prefix", other, "--no-system",
                      check=False)
    assert_refused_and_nothing_written(refused, other, "already holds a CA's state")
    status = run_cli("status", "--prefix", node2.prefix).stdout
    assert f"database {DB_NAME} on tcp(127.0.0.1:{dbserver.port})" in status and "; reachable" in status
    assert DB_PASSWORD not in status

    proxy = RoundRobinProxy([port1, port2]).start()
    try:
        url, root = f"https://{NAME}:{proxy.port}", node1.root
        # certbot: an account, then a certificate.
        bot = tmp_path / "certbot"
        certbot(url, root, bot, "register", "--agree-tos", "--register-unsafely-without-email")
        certbot_certonly(url, root, bot)
        first = certbot_leaf(bot)
        # acme-tiny: every request on a new connection, so nonces and orders made on one node are
        # used on the other within one order.
        account_key = tmp_path / "acme-tiny-account.key"
        subprocess.run(["openssl", "genrsa", "-out", str(account_key), "2048"], check=True, capture_output=True)
        with ChallengeServer(challenge_dir.parent.parent):
            tiny_first = acme_tiny(url, root, tmp_path, account_key, challenge_dir)
        assert proxy.served[port1] > 0 and proxy.served[port2] > 0, proxy.served

        # Node 1 dies (SIGKILL, no goodbye): issuance goes on through node 2.
        server1.process.send_signal(signal.SIGKILL)
        server1.process.wait()
        before = dict(proxy.served)
        certbot_certonly(url, root, bot, "--force-renewal")  # the account made before
        second = certbot_leaf(bot)
        with ChallengeServer(challenge_dir.parent.parent):
            tiny_second = acme_tiny(url, root, tmp_path, account_key, challenge_dir)
        assert proxy.served[port1] == before[port1] and proxy.served[port2] > before[port2]

        # Node 1 comes back and node 2 goes away: nothing issued or registered meanwhile is lost.
        server1.stop()
        server1.start()
        server2.stop()
        certbot_certonly(url, root, bot, "--force-renewal")
        third = certbot_leaf(bot)
        with ChallengeServer(challenge_dir.parent.parent):
            tiny_third = acme_tiny(url, root, tmp_path, account_key, challenge_dir)
    finally:
        proxy.stop()

    leaves = [first, tiny_first, second, tiny_second, third, tiny_third]
    assert len({leaf.serial_number for leaf in leaves}) == 6
    for index, leaf in enumerate(leaves):
        path = tmp_path / f"leaf{index}.pem"
        path.write_bytes(leaf.public_bytes(Encoding.PEM))
        verified = openssl_verify(node1.root, node1.intermediate, path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # Both ACME accounts were created once and used on both nodes; every certificate is in the database.
    assert dbserver.count_rows(DB_NAME, "acme_accounts") == 2
    assert dbserver.count_rows(DB_NAME, "x509_certs") >= len(leaves)
    # step-ca's own logs (the journal, on the appliance) never show the database password either
    for server in (server1, server2):
        assert DB_PASSWORD not in server.log_text()
        assert "Serving HTTPS" in server.log_text()


# ---- join: from the unattended answers, and what it refuses ----


def test_unattended_answers_join_a_node_and_restore_keeps_the_database_out(tmp_path, dbserver):
    port1, port2 = free_port(), free_port()
    node1 = CA(tmp_path / "node1", port1, answers_for(port1, database=shared_db(dbserver, name="stepca_join")))
    node1.setup()
    archive = tmp_path / "node1.tar.gz"
    run_cli("backup", "--prefix", node1.prefix, "--no-system", "--out", archive,
            "--passphrase-file", passphrase_file(tmp_path))
    answers = tmp_path / "node2-answers.yaml"
    answers.write_text(yaml.safe_dump({"hostname": "ca2.test.example",
                                       "join": {"backup": archive.name, "passphrase": BACKUP_PASSPHRASE},
                                       "ca": {"address": f"127.0.0.1:{port2}"}}))
    joined = run_cli("setup", "--answers", answers, "--prefix", tmp_path / "node2", "--no-system")
    assert "is now a node of the CA" in joined.stdout and DB_PASSWORD not in joined.stdout + joined.stderr
    node2 = CA(tmp_path / "node2", port2, node1.answers)
    assert node2.config["address"] == f"127.0.0.1:{port2}"
    assert node2.config["db"] == node1.config["db"]
    state = json.loads((node2.prefix / "etc/ca-appliance/state.json").read_text())
    assert state["hostname"] == "ca2.test.example"
    assert state["database"] == {"type": dbserver.kind, "database": "stepca_join"}
    # A restore on a shared-database node says the database was not in the backup.
    restored = run_cli("restore", archive, "--prefix", node2.prefix, "--no-system",
                       "--passphrase-file", passphrase_file(tmp_path))
    assert "the database was not in the backup and was not changed" in restored.stdout
    assert DB_PASSWORD not in restored.stdout + restored.stderr


def test_join_refuses_a_backup_of_a_badger_ca_and_an_unreachable_database(tmp_path, make_ca, dbserver):
    badger = make_ca()
    archive = tmp_path / "badger.tar.gz"
    run_cli("backup", "--prefix", badger.prefix, "--no-system", "--out", archive,
            "--passphrase-file", passphrase_file(tmp_path))
    assert manifest_of(archive)["database"]["included"] is True
    target = tmp_path / "node"
    result = run_cli("join", "--from", archive, "--prefix", target, "--no-system",
                     "--passphrase-file", passphrase_file(tmp_path), check=False)
    assert_refused_and_nothing_written(result, target, "embedded badger database")

    port = free_port()
    shared = CA(tmp_path / "shared", port, answers_for(port, database=shared_db(dbserver, name="stepca_refuse")))
    shared.setup()
    run_cli("backup", "--prefix", shared.prefix, "--no-system", "--out", archive,
            "--passphrase-file", passphrase_file(tmp_path))
    answers = tmp_path / "join.yaml"
    answers.write_text(yaml.safe_dump({"ca": {"database": shared_db(dbserver, password="not-the-password")}}))
    result = run_cli("join", "--from", archive, "--answers", answers, "--prefix", target, "--no-system",
                     "--passphrase-file", passphrase_file(tmp_path), check=False)
    assert_refused_and_nothing_written(result, target, REFUSED_LOGIN[dbserver.kind])


def test_wizard_after_a_bad_unattended_database_falls_back_to_badger_without_showing_the_password(tmp_path):
    prefix = tmp_path / "root"
    bake(prefix, {"hostname": "baked.lab.example", "ca": {
        "name": "Baked CA", "provisioner": "ops@lab.example",
        "database": {"type": "mysql", "dsn": f"stepca:{DB_PASSWORD}@db.lab.example", "database": DB_NAME}}})
    child = start_setup(prefix)
    child.logfile_read = seen = io.StringIO()  # everything the console showed
    child.expect_exact("The unattended answers could not be used:")
    child.expect_exact("ca.database.dsn:")
    child.expect_exact("is not a MySQL DSN")
    walk(child, {"dns_names": "baked.lab.example"},
         shown={"hostname": "baked.lab.example", "name": "Baked CA", "provisioner": "ops@lab.example"})
    child.expect_exact("Using the default for ca.database")
    child.expect_exact("Database:")
    child.expect_exact("badger (embedded")
    answer(child, "Apply? [Y/n]: ", "")
    child.expect_exact("Your CA is ready.")
    assert finish(child) == 0
    assert "Your CA is ready." in seen.getvalue() and DB_PASSWORD not in seen.getvalue()
    assert json.loads((prefix / "etc/step-ca/config/ca.json").read_text())["db"]["type"] == "badgerv2"


# ---- a ca.json with a DSN that does not parse (restored, joined, or edited by hand) ----

BAD_DB = {"type": "mysql", "dataSource": f"stepca:{DB_PASSWORD}@db.lab.example:3306", "database": DB_NAME}


def test_status_and_join_refuse_an_unparseable_dsn_in_ca_json_in_one_line(tmp_path, make_ca):
    ca = make_ca()
    config = json.loads(ca.ca_json.read_text())
    config["db"] = BAD_DB
    ca.ca_json.write_text(json.dumps(config))
    status = run_cli("status", "--prefix", ca.prefix, check=False)
    assert status.returncode == 2, status.stdout + status.stderr
    lines = status.stderr.strip().splitlines()
    assert len(lines) == 1 and "db.dataSource: <hidden> is not a MySQL DSN" in lines[0], status.stderr
    assert DB_PASSWORD not in status.stdout + status.stderr

    # A backup whose ca.json holds such a DSN (made by hand: `backup` itself refuses to write one).
    from ca_appliance import backup
    config["db"] = {"type": "badgerv2", "dataSource": str(ca.prefix / "var/lib/step-ca/db")}
    ca.ca_json.write_text(json.dumps(config))
    archive = tmp_path / "bad-dsn.tar.gz"
    run_cli("backup", "--prefix", ca.prefix, "--no-system", "--out", archive,
            "--passphrase-file", passphrase_file(tmp_path))
    plain = backup.unseal(archive.read_bytes(), BACKUP_PASSPHRASE, str(archive))
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(plain)) as old, tarfile.open(fileobj=out, mode="w:gz") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("config/ca.json"):
                data = json.dumps(dict(json.loads(data), db=BAD_DB)).encode()
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    archive.write_bytes(backup.seal(out.getvalue(), BACKUP_PASSPHRASE))
    target = tmp_path / "node"
    result = run_cli("join", "--from", archive, "--prefix", target, "--no-system",
                     "--passphrase-file", passphrase_file(tmp_path), check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "db.dataSource: <hidden> is not a MySQL DSN" in lines[0], result.stderr
    assert DB_PASSWORD not in result.stdout + result.stderr
    # no file written (the empty etc/ var/lib/ restore's staging leaves is join's to clean up)
    assert not target.exists() or not any(path.is_file() for path in target.rglob("*")), sorted(target.rglob("*"))
