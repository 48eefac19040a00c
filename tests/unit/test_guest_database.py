"""ca.database: the DSN rules, the drivers read from a step-ca binary, ca.json's db block, and the
password never showing in an error or a description."""
import socket
import threading
from pathlib import Path

import pytest

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"

from ca_appliance import cajson, database  # noqa: E402
from ca_appliance.answers import AnswersError, load_defaults, validate  # noqa: E402
from ca_appliance.layout import Layout  # noqa: E402

SECRET = "s3cret-Pass@word"
DSN = f"stepca:{SECRET}@tcp(db.lab.example:3306)/"
MYSQL = ("badger", "mysql")


def test_default_is_the_embedded_badger_database():
    assert validate({}, load_defaults())["ca"]["database"] == {"type": "badger"}
    # every key of ca.database is listed in defaults.yaml (the answers' list of known keys)
    assert set(load_defaults()["ca"]["database"]) == {"type", "dsn", "database"}
    mysql = validate({"ca": {"database": {"type": "mysql", "dsn": DSN}}}, load_defaults())["ca"]["database"]
    assert mysql == {"type": "mysql", "dsn": DSN, "database": "stepca"}
    assert database.validate(None, MYSQL) == {"type": "badger"}
    assert database.validate("badger", MYSQL) == {"type": "badger"}


@pytest.mark.parametrize("dsn, normalized", [
    (DSN, DSN),
    (f"stepca:{SECRET}@tcp(db.lab.example:3306)", DSN),  # the trailing '/' step-ca needs is added
    ("stepca:pw@tcp(10.0.0.5)/", "stepca:pw@tcp(10.0.0.5:3306)/"),
    ("stepca:pw@tcp([fd00::5]:3307)/", "stepca:pw@tcp([fd00::5]:3307)/"),
    ("stepca@unix(/run/mysqld/mysqld.sock)/", "stepca@unix(/run/mysqld/mysqld.sock)/"),
    ("stepca:p/a@ss@tcp(h:1)/", "stepca:p/a@ss@tcp(h:1)/"),  # go-sql-driver splits at the last '@'
])
def test_mysql_dsn_is_accepted_and_normalized(dsn, normalized):
    result = database.validate({"type": "mysql", "dsn": dsn, "database": "stepca"}, MYSQL)
    assert result == {"type": "mysql", "dsn": normalized, "database": "stepca"}


@pytest.mark.parametrize("dsn", [
    f"stepca:{SECRET}@db.lab.example:3306",           # no tcp(...)
    f"stepca:{SECRET}@tcp(db:3306)/stepca",           # step-ca appends the name itself
    f"stepca:{SECRET}@tcp(db:3306)/?tls=true",        # nor parameters
    f"mysql://stepca:{SECRET}@db:3306/",              # a URL, not a go-sql-driver DSN
    f"stepca:{SECRET}@tcp(db:99999)/",
    f":{SECRET}@tcp(db:3306)/",                       # no user
    f"stepca:{SECRET}@unix(relative.sock)/",
    f"stepca:{SECRET}\n@tcp(db:3306)/",
    None, 42,
])
def test_a_bad_dsn_is_one_line_that_never_shows_the_password(dsn):
    with pytest.raises(AnswersError) as caught:
        database.validate({"type": "mysql", "dsn": dsn, "database": "stepca"}, MYSQL)
    message = str(caught.value)
    # the value shows as <hidden> (quoted or not, as AnswersError formats values)
    assert message.startswith("answers error: ca.database.dsn: ") and "<hidden>" in message
    assert "is not a MySQL DSN" in message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize("raw, key", [
    ({"type": "mysql", "dsn": DSN, "database": "step-ca"}, "ca.database.database"),
    ({"type": "mysql", "dsn": DSN, "database": "x; DROP DATABASE y"}, "ca.database.database"),
    ({"type": "mongodb", "dsn": DSN}, "ca.database.type"),
    ({"type": "mysql", "dsn": DSN, "password": SECRET}, "ca.database.password"),
    ({"type": "badger", "dsn": DSN}, "ca.database.dsn"),
    (["mysql"], "ca.database"),
])
def test_other_bad_database_answers_name_their_key(raw, key):
    with pytest.raises(AnswersError) as caught:
        database.validate(raw, MYSQL)
    assert caught.value.key == key
    assert SECRET not in str(caught.value)


def test_postgresql_only_where_the_step_ca_has_the_driver():
    raw = {"type": "postgresql", "dsn": f"postgresql://stepca:{SECRET}@db:5432/", "database": "stepca"}
    with pytest.raises(AnswersError, match="not supported by .* step-ca .it was built with: badger, mysql"):
        database.validate(raw, MYSQL)
    assert database.validate(raw, ("badger", "mysql", "postgresql"))["type"] == "postgresql"


def test_supported_types_are_read_from_the_binary(tmp_path):
    plain, both = tmp_path / "plain", tmp_path / "both"
    plain.write_bytes(b"\0" * 100 + b"github.com/smallstep/nosql/badger/v2.(*DB).Open" + b"\0" * 100)
    # the marker straddles the scanner's chunk boundary
    both.write_bytes(b"\0" * ((1 << 22) - 10) + b"github.com/smallstep/nosql/mysql.(*DB).Open\0"
                     + b"github.com/smallstep/nosql/postgresql.(*DB).Open")
    assert database.supported_types(plain) == ("badger",)
    assert database.supported_types(both) == ("badger", "mysql", "postgresql")
    assert database.supported_types(tmp_path / "missing") == database.FALLBACK_TYPES


def test_supported_types_of_the_pinned_step_ca_include_mysql_and_postgresql():
    from image.stepbuild import cached_pinned_binary

    binary = cached_pinned_binary("step_ca")
    if binary is None:
        pytest.skip("the pinned step-ca is not built yet (invoke step-from-source builds it)")
    assert database.supported_types(binary) == ("badger", "mysql", "postgresql")


def test_redact_and_describe_never_show_the_password():
    shared = database.validate({"type": "mysql", "dsn": DSN, "database": "stepca"}, MYSQL)
    assert database.redact(DSN) == "stepca:***@tcp(db.lab.example:3306)/"
    assert database.redact(f"junk {SECRET}") == "<hidden>"
    assert database.describe(shared) == "mysql: database stepca on tcp(db.lab.example:3306) as user stepca (shared)"
    assert database.describe({"type": "badger"}).startswith("badger")


def test_ca_json_db_block_follows_the_answer(tmp_path):
    layout = Layout(tmp_path)
    ca = validate({}, load_defaults())["ca"]
    block = cajson.ca_json(ca, layout, b"PEM", {}, "jwe")["db"]
    assert block == {"type": "badgerv2", "dataSource": str(layout.db_dir), "badgerFileLoadingMode": ""}
    ca["database"] = {"type": "mysql", "dsn": DSN, "database": "stepca"}
    assert cajson.ca_json(ca, layout, b"PEM", {}, "jwe")["db"] == {"type": "mysql", "dataSource": DSN,
                                                                  "database": "stepca"}
    assert database.from_ca_json({"db": {"type": "mysql", "dataSource": DSN, "database": "stepca"}}) == ca["database"]


def test_join_answer():
    defaults = load_defaults()
    assert validate({"join": {"backup": " /root/node1.tar.gz "}}, defaults)["join"] == {"backup": "/root/node1.tar.gz",
                                                                                          "passphrase": None}
    with pytest.raises(AnswersError, match="join"):
        validate({"join": "/root/node1.tar.gz"}, defaults)


def _one_shot_server(reply):
    """A TCP server that sends `reply` to the first connection and closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        conn.sendall(reply)
        conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def test_reachability_reports_a_server_that_is_not_mysql_or_refuses_us():
    port = _one_shot_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(database.Unreachable, match="does not speak the MySQL protocol|closed the connection"):
        database.check_reachable({"type": "mysql", "dsn": f"u:{SECRET}@tcp(127.0.0.1:{port})/", "database": "d"})
    error = b"\xffj\x04Host '127.0.0.1' is not allowed to connect"
    port = _one_shot_server(len(error).to_bytes(3, "little") + b"\0" + error)
    with pytest.raises(database.Unreachable) as caught:
        database.check_reachable({"type": "mysql", "dsn": f"u:{SECRET}@tcp(127.0.0.1:{port})/", "database": "d"})
    assert "is not allowed to connect (error 1130)" in str(caught.value) and SECRET not in str(caught.value)


def test_scrambles_match_the_documented_algorithms():
    import hashlib
    salt = bytes(range(20))
    stage1 = hashlib.sha1(b"pw").digest()
    expected = bytes(a ^ b for a, b in zip(stage1, hashlib.sha1(salt + hashlib.sha1(stage1).digest()).digest(),
                                           strict=True))
    assert database._scramble("mysql_native_password", b"pw", salt) == expected
    assert len(database._scramble("caching_sha2_password", b"pw", salt)) == 32
    assert database._scramble("mysql_native_password", b"", salt) == b""


def test_postgresql_is_described_without_its_password_and_checked_for_an_answering_port():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    db = {"type": "postgresql", "dsn": f"postgresql://stepca:{SECRET}@127.0.0.1:{port}/", "database": "stepca"}
    assert database.describe(db) == f"postgresql: database stepca on tcp(127.0.0.1:{port}) as user stepca (shared)"
    with pytest.raises(database.Unreachable, match=f"cannot connect to the PostgreSQL server at 127.0.0.1:{port}"):
        database.check_reachable(db, timeout=2)


# ---- the login against a scripted server that checks the client's proofs the way MySQL 8 does ----


class ScriptedMySQL:
    """One connection: greeting with `plugin`; verifies the client's proof for PASSWORD; then `mode`:
    'ok', 'fast' (caching_sha2 fast auth), 'full' (caching_sha2 full auth over RSA), 'switch'
    (greets with caching_sha2, switches to mysql_native_password). Records what it checked."""

    NONCE = bytes(range(65, 85))  # 20 printable bytes, as servers send
    TABLES = b"7"

    def __init__(self, plugin, mode, password):
        self.plugin, self.mode, self.password = plugin, mode, password.encode()
        self.checked = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, conn, seq, payload):
        conn.sendall(len(payload).to_bytes(3, "little") + bytes([seq]) + payload)

    def _recv(self, conn):
        header = b""
        while len(header) < 4:
            header += conn.recv(4 - len(header))
        length, body = int.from_bytes(header[:3], "little"), b""
        while len(body) < length:
            body += conn.recv(length - len(body))
        return header[3], body

    def _expected(self, plugin):
        import hashlib
        if plugin == "mysql_native_password":
            stage1 = hashlib.sha1(self.password).digest()
            other = hashlib.sha1(self.NONCE + hashlib.sha1(stage1).digest()).digest()
        else:
            stage1 = hashlib.sha256(self.password).digest()
            other = hashlib.sha256(hashlib.sha256(stage1).digest() + self.NONCE).digest()
        return bytes(a ^ b for a, b in zip(stage1, other, strict=True))

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            caps = 0x1 | 0x200 | 0x2000 | 0x8000 | 0x80000
            greeting = (b"\x0a8.0.36-scripted\0" + (7).to_bytes(4, "little") + self.NONCE[:8] + b"\0"
                        + (caps & 0xFFFF).to_bytes(2, "little") + bytes([45]) + (2).to_bytes(2, "little")
                        + (caps >> 16).to_bytes(2, "little") + bytes([21]) + b"\0" * 10
                        + self.NONCE[8:] + b"\0" + self.plugin.encode() + b"\0")
            self._send(conn, 0, greeting)
            seq, response = self._recv(conn)
            user_end = response.index(b"\0", 32)
            proof = response[user_end + 2:user_end + 2 + response[user_end + 1]]
            if self.mode == "switch":
                self._send(conn, seq + 1, b"\xfemysql_native_password\0" + self.NONCE + b"\0")
                seq, proof = self._recv(conn)
                ok = proof == self._expected("mysql_native_password")
            elif self.mode == "full":
                from cryptography.hazmat.primitives import hashes, serialization
                from cryptography.hazmat.primitives.asymmetric import padding, rsa
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                self._send(conn, seq + 1, b"\x01\x04")
                seq, request = self._recv(conn)
                assert request == b"\x02"
                pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
                self._send(conn, seq + 1, b"\x01" + pem)
                seq, sealed = self._recv(conn)
                plain = key.decrypt(sealed, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),
                                                         label=None))
                mask = (self.NONCE * 4)[:len(plain)]
                ok = bytes(a ^ b for a, b in zip(plain, mask, strict=True)) == self.password + b"\0"
            else:
                ok = proof == self._expected(self.plugin)
                if ok and self.mode == "fast":
                    self._send(conn, seq + 1, b"\x01\x03")
                    seq += 1
            self.checked.append(ok)
            if not ok:
                self._send(conn, seq + 1, b"\xff\x15\x04#28000Access denied for user 'stepca'@'127.0.0.1'")
                return
            self._send(conn, seq + 1, b"\x00\x00\x00\x02\x00\x00\x00")
            for _ in range(2):  # CREATE DATABASE, USE
                _seq, query = self._recv(conn)
                self.checked.append(query[1:].decode())
                self._send(conn, 1, b"\x00\x01\x00\x02\x00\x00\x00")
            _seq, query = self._recv(conn)  # the table count: a one-column, one-row result set
            self.checked.append(query[1:].decode())
            column = b"".join(bytes([len(part)]) + part for part in (b"def", b"", b"", b"", b"COUNT(*)", b""))
            column += b"\x0c\x3f\x00\x15\x00\x00\x00\x08\x81\x00\x00\x00\x00"
            eof = b"\xfe\x00\x00\x02\x00"
            for number, payload in enumerate([b"\x01", column, eof, bytes([len(self.TABLES)]) + self.TABLES, eof]):
                self._send(conn, number + 1, payload)


@pytest.mark.parametrize("plugin, mode", [
    ("mysql_native_password", "ok"),
    ("caching_sha2_password", "fast"),
    ("caching_sha2_password", "full"),
    ("caching_sha2_password", "switch"),
])
def test_login_proofs_are_what_the_server_computes(plugin, mode):
    server = ScriptedMySQL(plugin, mode, SECRET)
    tables = database.check_reachable({"type": "mysql", "dsn": f"stepca:{SECRET}@tcp(127.0.0.1:{server.port})/",
                                       "database": "stepca"}, timeout=10)
    server.thread.join(timeout=10)
    assert server.checked[:3] == [True, "CREATE DATABASE IF NOT EXISTS stepca", "USE stepca"]
    assert server.checked[3].startswith("SELECT COUNT(*) FROM information_schema.tables") and tables == 7


def test_a_wrong_password_is_refused_without_showing_it():
    server = ScriptedMySQL("caching_sha2_password", "fast", SECRET)
    with pytest.raises(database.Unreachable) as caught:
        database.check_reachable({"type": "mysql", "dsn": f"stepca:wrong-{SECRET}@tcp(127.0.0.1:{server.port})/",
                                  "database": "stepca"}, timeout=10)
    assert "refused the login: Access denied for user 'stepca'@'127.0.0.1' (error 1045)" in str(caught.value)
    assert SECRET not in str(caught.value) and server.checked == [False]


def test_status_shows_the_database_and_whether_it_answers_never_the_password():
    from ca_appliance import status

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    shared = {"db": {"type": "mysql", "dataSource": f"stepca:{SECRET}@tcp(127.0.0.1:{port})/", "database": "stepca"}}
    line = status.database_status(shared)
    assert line.startswith(f"mysql: database stepca on tcp(127.0.0.1:{port}) as user stepca (shared); NOT reachable: "
                           f"cannot connect")
    assert SECRET not in line
    badger = {"db": {"type": "badgerv2", "dataSource": "/var/lib/step-ca/db"}}
    assert status.database_status(badger).startswith("badger")


def test_the_image_defaults_keep_badger_and_a_database_in_the_build_config_is_refused():
    from image.config import load_config
    from image.errors import UserError
    from image.payload import guest_defaults

    # The build writes the guest's defaults.yaml from the overlay's: ca.database stays, never a DSN.
    baked = guest_defaults(load_config(overrides={"image": {"base": "debian"}}))
    assert baked["ca"]["database"] == {"type": "badger", "dsn": None, "database": None}
    # A DSN is a secret: the build config has no key for it (it is answered on the appliance).
    with pytest.raises(UserError, match="ca.database: .*is not a build setting") as caught:
        load_config(overrides={"ca": {"database": {"type": "mysql", "dsn": DSN}}})
    assert SECRET not in str(caught.value)
