"""Where step-ca keeps its state: the embedded badger database (the default) or a shared
MySQL/MariaDB server, so that several appliances can serve one CA.

The DSN holds the database password: it is a secret like the CA password. Nothing here puts it
in a message: errors show "<hidden>" or the DSN with its password replaced (redact()).
The reachability check speaks just enough of the MySQL client protocol (handshake,
mysql_native_password or caching_sha2_password, one query) with the standard library.
"""
import functools
import hashlib
import re
import socket
import struct
from pathlib import Path

TYPES = ("badger", "mysql", "postgresql")
DEFAULT = {"type": "badger"}
DEFAULT_MYSQL_PORT = 3306
DEFAULT_DATABASE = "stepca"
# step-ca runs `CREATE DATABASE IF NOT EXISTS <name>` unquoted: a plain identifier only.
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_USER = re.compile(r"^[^:@/()\s]{1,80}$")
# Where the installed step-ca is looked for (the unit finds it in the same order).
STEP_CA_PATHS = ("/usr/local/bin/step-ca", "/usr/bin/step-ca")
# The nosql drivers a step-ca binary carries show as Go package paths in its symbol table.
_DRIVER_PACKAGES = {"mysql": b"github.com/smallstep/nosql/mysql",
                    "postgresql": b"github.com/smallstep/nosql/postgresql"}
# What every step-ca since 0.15 carries (0.19 from Debian's sources included), when no binary is found.
FALLBACK_TYPES = ("badger", "mysql")
CONNECT_TIMEOUT = 5.0


class Unreachable(Exception):
    """The database server cannot be reached or refuses us; the text never holds the password."""


# ---- which drivers the installed step-ca has ----


def find_step_ca(prefix=None):
    """The step-ca binary under PREFIX (or /), or None."""
    root = Path(prefix) if prefix else Path("/")
    for path in STEP_CA_PATHS:
        candidate = root / path.lstrip("/")
        if candidate.is_file():
            return candidate
    return None


def supported_types(binary=None):
    """The database types the step-ca binary was built with (read from the binary itself)."""
    if binary is None or not Path(binary).is_file():
        return FALLBACK_TYPES
    found = ["badger"]
    chunk_size, overlap = 1 << 22, 64
    pending = dict(_DRIVER_PACKAGES)
    with open(binary, "rb") as handle:
        tail = b""
        while pending:
            chunk = handle.read(chunk_size)
            if not chunk:
                break
            window = tail + chunk
            for kind, marker in list(pending.items()):
                if marker in window:
                    found.append(kind)
                    del pending[kind]
            tail = window[-overlap:]
    return tuple(kind for kind in TYPES if kind in found)


def installed_types():
    """supported_types() of the installed step-ca, read once per binary version."""
    binary = find_step_ca()
    if binary is None:
        return FALLBACK_TYPES
    stat = binary.stat()
    return _cached_types(str(binary), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _cached_types(path, _mtime, _size):
    return supported_types(path)


# ---- the DSN ----


def parse_dsn(dsn):
    """{'user', 'password', 'net', 'address'} from a go-sql-driver DSN 'user:password@tcp(host:port)/',
    or None when it is not one. The part after the last '/' must be empty: step-ca appends the
    database name to the DSN itself."""
    if not isinstance(dsn, str) or "\n" in dsn or "\r" in dsn:
        return None
    text = dsn.strip()
    if text.endswith(")"):
        text += "/"
    slash = text.rfind("/")
    if slash < 0 or text[slash + 1:]:
        return None
    head = text[:slash]
    at = head.rfind("@")
    if at < 0:
        return None
    credentials, location = head[:at], head[at + 1:]
    match = re.fullmatch(r"(tcp|unix)\((.+)\)", location)
    if not match:
        return None
    user, _, password = credentials.partition(":")
    if not _USER.match(user):
        return None
    net, address = match.groups()
    if net == "tcp":
        host, port = _split_host_port(address)
        if host is None:
            return None
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    elif not address.startswith("/"):
        return None
    return {"user": user, "password": password, "net": net, "address": address,
            "dsn": f"{credentials}@{net}({address})/"}


def _split_host_port(address):
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (str(DEFAULT_MYSQL_PORT) if not rest else None)
    elif address.count(":") == 1:
        host, port = address.split(":")
    elif ":" not in address:
        host, port = address, str(DEFAULT_MYSQL_PORT)
    else:
        return None, None
    if not host or port is None or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None, None
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        return None, None
    return host, int(port)


def redact(dsn):
    """The DSN with its password replaced: what may be shown and logged."""
    parsed = parse_dsn(dsn)
    if parsed is None:
        return "<hidden>"
    secret = ":***" if parsed["password"] else ""
    return f"{parsed['user']}{secret}@{parsed['net']}({parsed['address']})/"


def describe(db):
    """One line for status, reports and logs; never the password."""
    if db.get("type", "badger") == "badger":
        return "badger (embedded, on this appliance)"
    parsed = parse_dsn(db["dsn"]) or _url_parts(db["dsn"])
    return (f"{db['type']}: database {db['database']} on {parsed['net']}({parsed['address']}) "
            f"as user {parsed['user']} (shared)")


def _url_parts(dsn):
    """user, net and address of a URL DSN (PostgreSQL) for describe(); never its password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(dsn)
        return {"user": parts.username or "?", "net": "tcp", "address": f"{parts.hostname}:{parts.port or 5432}"}
    except ValueError:
        return {"user": "?", "net": "?", "address": "?"}


def is_shared(db):
    return db.get("type", "badger") != "badger"


# ---- answers ----


def validate(raw, supported=None, key="ca.database"):
    """The normalized ca.database answer: {'type': 'badger'} or {'type', 'dsn', 'database'}.
    `supported`: the types allowed (default: what the installed step-ca was built with)."""
    from .answers import AnswersError as DatabaseError  # answers imports this module

    supported = tuple(supported or installed_types())
    if raw is None:
        return dict(DEFAULT)
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise DatabaseError(key, "<hidden>",
                            "must be a mapping: {type: badger} or {type: mysql, dsn: ..., database: ...}")
    unknown = sorted(set(raw) - {"type", "dsn", "database"})
    if unknown:
        raise DatabaseError(f"{key}.{unknown[0]}", "<hidden>", "is not a key here (allowed: type, dsn, database)")
    kind = raw.get("type", "badger")
    if kind not in TYPES:
        raise DatabaseError(f"{key}.type", kind, f"must be one of {', '.join(supported)}")
    if kind not in supported:
        raise DatabaseError(f"{key}.type", kind, f"is not supported by this appliance's step-ca "
                                                 f"(it was built with: {', '.join(supported)})")
    if kind == "badger":
        if raw.get("dsn") or raw.get("database"):
            raise DatabaseError(f"{key}.dsn", "<hidden>", "is only for a shared database (type: mysql)")
        return dict(DEFAULT)
    dsn = raw.get("dsn")
    parsed = parse_dsn(dsn) if kind == "mysql" else None
    if kind == "postgresql":  # a step-ca with the driver: its DSN is a URL, passed on as is
        if not isinstance(dsn, str) or not re.fullmatch(r"postgres(ql)?://\S+", dsn.strip()):
            raise DatabaseError(f"{key}.dsn", "<hidden>", "is not a PostgreSQL DSN "
                                                          "(e.g. postgresql://USER:PASSWORD@HOST:5432/)")
    elif parsed is None:
        raise DatabaseError(f"{key}.dsn", "<hidden>", "is not a MySQL DSN: use 'USER:PASSWORD@tcp(HOST:PORT)/' "
                                                      "(nothing after the '/': step-ca appends the database name)")
    name = raw.get("database") or DEFAULT_DATABASE
    if not isinstance(name, str) or not _DATABASE_NAME.match(name):
        raise DatabaseError(f"{key}.database", name, "is not a database name: a letter or '_', then up to 63 "
                                                     "letters, digits and '_' (e.g. stepca)")
    return {"type": kind, "dsn": parsed["dsn"] if parsed else dsn.strip(), "database": name}


# ---- ca.json ----


def ca_json_block(db, data_dir):
    """step-ca's `db` block."""
    if not is_shared(db):
        return {"type": "badgerv2", "dataSource": str(data_dir), "badgerFileLoadingMode": ""}
    return {"type": db["type"], "dataSource": db["dsn"], "database": db["database"]}


def from_ca_json(config):
    """The ca.database answer a ca.json describes (the inverse of ca_json_block)."""
    block = config.get("db") or {}
    if block.get("type") in ("mysql", "postgresql"):
        return {"type": block["type"], "dsn": block.get("dataSource", ""), "database": block.get("database", "")}
    return dict(DEFAULT)


# ---- is it reachable? ----


def check_reachable(db, timeout=CONNECT_TIMEOUT):
    """Log in, create the database if missing (as step-ca does at start) and use it; raises
    Unreachable(reason) when any of that fails. Returns how many tables the MySQL database
    holds (0: no CA has used it yet), None for the other types."""
    if not is_shared(db):
        return
    if db["type"] == "postgresql":  # no PostgreSQL client here: the server's port must at least answer
        _check_tcp_only(db["dsn"], timeout)
        return
    parsed = parse_dsn(db["dsn"])
    where = f"{parsed['net']}({parsed['address']})"
    try:
        if parsed["net"] == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parsed["address"])
        else:
            host, port = _split_host_port(parsed["address"])
            sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise Unreachable(f"cannot connect to the MySQL server at {where}: {_os_reason(error)}") from None
    try:
        with sock:
            sock.settimeout(timeout)
            return _MySQLSession(sock, where).login(parsed["user"], parsed["password"], db["database"])
    except OSError as error:
        raise Unreachable(f"the MySQL server at {where} broke off: {_os_reason(error)}") from None


def _check_tcp_only(dsn, timeout):
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(dsn)
        host, port = parts.hostname, parts.port or 5432
    except ValueError:
        host = port = None
    if not host:
        raise Unreachable("the PostgreSQL DSN names no host")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise Unreachable(f"cannot connect to the PostgreSQL server at {host}:{port}: {_os_reason(error)}") from None


def _os_reason(error):
    if isinstance(error, socket.timeout):
        return "timed out"
    return (error.strerror or type(error).__name__).lower()


# MySQL client capability flags
_LONG_PASSWORD, _CONNECT_WITH_DB, _PROTOCOL_41 = 0x1, 0x8, 0x200
_TRANSACTIONS, _SECURE_CONNECTION, _PLUGIN_AUTH = 0x2000, 0x8000, 0x80000
_UTF8MB4 = 45


class _MySQLSession:
    def __init__(self, sock, where):
        self.sock, self.where, self.seq = sock, where, 0

    def _read_exact(self, count):
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise Unreachable(f"the server at {self.where} closed the connection (is it a MySQL server?)")
            data += chunk
        return data

    def read(self):
        header = self._read_exact(4)
        length = int.from_bytes(header[:3], "little")
        self.seq = (header[3] + 1) & 0xFF
        return self._read_exact(length)

    def write(self, payload):
        self.sock.sendall(len(payload).to_bytes(3, "little") + bytes([self.seq]) + payload)
        self.seq = (self.seq + 1) & 0xFF

    def _error(self, packet, doing):
        code = int.from_bytes(packet[1:3], "little") if len(packet) >= 3 else 0
        message = packet[3:]
        if message.startswith(b"#"):
            message = message[6:]
        text = " ".join(message.decode("utf-8", "replace").split())
        return Unreachable(f"the MySQL server at {self.where} refused {doing}: {text} (error {code})")

    def login(self, user, password, database):
        greeting = self.read()
        if greeting[:1] == b"\xff":
            raise self._error(greeting, "the connection")
        if greeting[:1] != b"\x0a":
            raise Unreachable(f"the server at {self.where} does not speak the MySQL protocol (version 10)")
        end = greeting.index(b"\0", 1)
        pos = end + 1 + 4
        salt = greeting[pos:pos + 8]
        pos += 8 + 1
        capabilities = int.from_bytes(greeting[pos:pos + 2], "little")
        pos += 2 + 1 + 2
        capabilities |= int.from_bytes(greeting[pos:pos + 2], "little") << 16
        pos += 2
        salt_length = greeting[pos]
        pos += 1 + 10
        if capabilities & _SECURE_CONNECTION:
            part = greeting[pos:pos + max(13, salt_length - 8)]
            salt += part.rstrip(b"\0")
            pos += len(part)
        plugin = "mysql_native_password"
        if capabilities & _PLUGIN_AUTH and pos < len(greeting):
            plugin = greeting[pos:].split(b"\0", 1)[0].decode("ascii", "replace") or plugin
        if not capabilities & _PROTOCOL_41:
            raise Unreachable(f"the MySQL server at {self.where} is too old (no protocol 4.1)")
        flags = (_LONG_PASSWORD | _PROTOCOL_41 | _TRANSACTIONS | _SECURE_CONNECTION | _PLUGIN_AUTH) & capabilities
        secret = password.encode("utf-8")
        response = _scramble(plugin, secret, salt)
        packet = (struct.pack("<IIB", flags, 1 << 24, _UTF8MB4) + b"\0" * 23 + user.encode("utf-8") + b"\0"
                  + bytes([len(response)]) + response)
        if flags & _PLUGIN_AUTH:
            packet += plugin.encode("ascii") + b"\0"
        self.write(packet)
        self._finish_auth(plugin, secret, salt)
        self.query(f"CREATE DATABASE IF NOT EXISTS {database}", f"to create or use database {database}")
        self.query(f"USE {database}", f"access to database {database}")
        rows = self.query("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()",
                          f"to list the tables of database {database}")
        self.seq = 0
        self.write(b"\x01")  # COM_QUIT
        try:
            return int(rows[0][0])
        except (TypeError, IndexError, ValueError):
            raise Unreachable(f"the MySQL server at {self.where} gave no table count for {database}") from None

    def _finish_auth(self, plugin, secret, salt):
        while True:
            packet = self.read()
            kind = packet[:1]
            if kind == b"\x00":
                return
            if kind == b"\xff":
                raise self._error(packet, "the login")
            if kind == b"\xfe":  # auth switch: another plugin, a new salt
                plugin, _, rest = packet[1:].partition(b"\0")
                plugin = plugin.decode("ascii", "replace")
                salt = rest.rstrip(b"\0")
                self.write(_scramble(plugin, secret, salt))
                continue
            if kind == b"\x01" and plugin == "caching_sha2_password":
                if packet[1:2] == b"\x03":  # fast auth succeeded; an OK follows
                    continue
                if packet[1:2] == b"\x04":  # full auth: the password RSA-encrypted with the server's key
                    self.write(b"\x02")
                    key_packet = self.read()
                    self.write(_rsa_encrypt_password(key_packet[1:], secret, salt))
                    continue
            raise Unreachable(f"the MySQL server at {self.where} asked for an authentication this check "
                              f"does not speak ({plugin})")

    def query(self, sql, doing):
        """COM_QUERY: None for an OK, else the rows of the result set (lists of str or None)."""
        self.seq = 0
        self.write(b"\x03" + sql.encode("utf-8"))
        reply = self.read()
        if reply[:1] == b"\xff":
            raise self._error(reply, doing)
        if reply[:1] == b"\x00":
            return None
        columns, _ = _lenenc_int(reply, 0)
        for _ in range(columns):  # column definitions, then an EOF packet
            self.read()
        self._read_eof()
        rows = []
        while True:
            packet = self.read()
            if packet[:1] == b"\xfe" and len(packet) < 9:
                return rows
            if packet[:1] == b"\xff":
                raise self._error(packet, doing)
            row, pos = [], 0
            for _ in range(columns):
                if packet[pos:pos + 1] == b"\xfb":
                    row.append(None)
                    pos += 1
                    continue
                length, pos = _lenenc_int(packet, pos)
                row.append(packet[pos:pos + length].decode("utf-8", "replace"))
                pos += length
            rows.append(row)

    def _read_eof(self):
        packet = self.read()
        if not (packet[:1] == b"\xfe" and len(packet) < 9):
            raise Unreachable(f"the MySQL server at {self.where} sent an unexpected reply")


def _lenenc_int(data, pos):
    """A length-encoded integer at data[pos]: (value, position after it)."""
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise Unreachable("the MySQL server sent a malformed length")
    return int.from_bytes(data[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def _xor(left, right):
    return bytes(a ^ b for a, b in zip(left, right, strict=False))


def _scramble(plugin, secret, salt):
    if not secret:
        return b""
    if plugin == "mysql_native_password":
        stage1 = hashlib.sha1(secret).digest()
        return _xor(stage1, hashlib.sha1(salt[:20] + hashlib.sha1(stage1).digest()).digest())
    if plugin == "caching_sha2_password":
        stage1 = hashlib.sha256(secret).digest()
        return _xor(stage1, hashlib.sha256(hashlib.sha256(stage1).digest() + salt[:20]).digest())
    raise Unreachable(f"the MySQL server asks for the {plugin} authentication, which this check does not speak")


def _rsa_encrypt_password(pem, secret, salt):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = serialization.load_pem_public_key(pem)
    plain = secret + b"\0"
    mask = (salt[:20] * (len(plain) // 20 + 1))[:len(plain)]
    return key.encrypt(_xor(plain, mask), padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),
                                                       label=None))
