"""Where step-ca keeps its state: the embedded badger database (the default) or a shared MySQL/
MariaDB or PostgreSQL server, so that several appliances can serve one CA.

The DSN holds the database password: it is a secret like the CA password. No message made here
shows any part of a DSN but the host, port, user and database (describe()); a DSN that does not
parse is named by its key, never shown.

The DSN rules are those of the step-ca the appliance ships (0.30, nosql v0.8.0), per type:
- mysql: go-sql-driver/mysql's `USER[:PASSWORD]@tcp(HOST[:PORT])/[DBNAME][?PARAMS]` (or
  `unix(/PATH)`), parsed as its ParseDSN does (the last '/' ends the address, the last '@' before
  it ends the credentials, the first ':' in them ends the user). step-ca passes the parsed DSN on,
  so its TLS parameter works: tls=true|false|skip-verify|preferred.
- postgresql: pgx's URL `postgresql://USER[:PASSWORD]@HOST[:PORT][,HOST:PORT...]/[DBNAME][?PARAMS]`,
  given to pgx as is: sslmode, sslrootcert, sslcert, sslkey, sslsni pass through.
Only the parameters listed in MYSQL_PARAMS / POSTGRESQL_PARAMS are accepted (others would reach the
server as session settings, or stop step-ca). ca.database.database (ca.json's db.database) names
the database; step-ca prefers it to a name in the DSN, so the two may not disagree.

The check before anything is written logs in with PyMySQL or psycopg2 (imported only when that
type is used), creates the database if missing (as step-ca does at start) and proves a table can
be created in it.
"""
import functools
import importlib
import ipaddress
import re
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StepFailed, UserError
from .schema import AnswersError

TYPES = ("badger", "mysql", "postgresql")
SHARED_TYPES = ("mysql", "postgresql")
DEFAULT = {"type": "badger"}
DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432}
DEFAULT_MYSQL_PORT = DEFAULT_PORTS["mysql"]
DEFAULT_DATABASE = "stepca"
# A plain identifier: step-ca quotes it, but a plain name is the same in both servers and in the
# check's SQL. 63 characters: PostgreSQL's limit (MySQL's is 64).
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
DATABASE_NAME_RULE = "a letter or '_', then up to 62 letters, digits and '_' (e.g. stepca)"
_USER = re.compile(r"[^:@/()\s%]{1,80}")
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}")
# Where the installed step-ca is looked for (the unit finds it in the same order).
STEP_CA_PATHS = ("/usr/local/bin/step-ca", "/usr/bin/step-ca")
# The nosql drivers a step-ca binary carries show as Go package paths in its symbol table.
_DRIVER_PACKAGES = {"mysql": b"github.com/smallstep/nosql/mysql",
                    "postgresql": b"github.com/smallstep/nosql/postgresql"}
# What the step-ca the appliance ships (0.30) carries, when no binary is found to read.
FALLBACK_TYPES = TYPES
CONNECT_TIMEOUT = 5.0
# The Python client each shared type's check needs: (module, package on Debian, package on Fedora).
DRIVERS = {"mysql": ("pymysql", "python3-pymysql", "python3-PyMySQL"),
           "postgresql": ("psycopg2", "python3-psycopg2", "python3-psycopg2")}
CHECK_TABLE_PREFIX = "ca_appliance_check_"
# The system trust bundle, for a PostgreSQL DSN that verifies the server with the system roots (as
# pgx does with sslrootcert=system or no sslrootcert); libpq 15 has no such default.
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")

_BOOL = {"1": True, "true": True, "TRUE": True, "True": True,
         "0": False, "false": False, "FALSE": False, "False": False}  # go-sql-driver's readBool
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+|0")  # Go's time.ParseDuration
_PATH = re.compile(r"/[A-Za-z0-9._/+-]{1,4095}")


def _one_of(*values):
    return lambda value: value if value in values else None


def _tls_mode(value):
    if value in _BOOL:
        return "true" if _BOOL[value] else "false"
    return value.lower() if value.lower() in ("skip-verify", "preferred") else None


def _boolean(value):
    return value if value in _BOOL else None


def _matching(pattern):
    return lambda value: value if re.fullmatch(pattern, value) else None


# parameter -> (check returning the normalised value or None, what is allowed)
MYSQL_PARAMS = {
    "tls": (_tls_mode, "true, false, skip-verify or preferred (a named TLS config does not exist in step-ca)"),
    "timeout": (_matching(_DURATION), "a Go duration such as 5s"),
    "readTimeout": (_matching(_DURATION), "a Go duration such as 30s"),
    "writeTimeout": (_matching(_DURATION), "a Go duration such as 30s"),
    "charset": (_matching(r"[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*"), "a character set name such as utf8mb4"),
    "collation": (_matching(r"[A-Za-z0-9_]+"), "a collation name such as utf8mb4_general_ci"),
    "allowNativePasswords": (_boolean, "true or false"),
    "allowCleartextPasswords": (_boolean, "true or false"),
    "allowFallbackToPlaintext": (_boolean, "true or false"),
    "checkConnLiveness": (_boolean, "true or false"),
    "rejectReadOnly": (_boolean, "true or false"),
    "maxAllowedPacket": (_matching(r"\d{1,10}"), "a number of bytes"),
}
POSTGRESQL_PARAMS = {
    "sslmode": (_one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
                "disable, allow, prefer, require, verify-ca or verify-full"),
    "sslrootcert": (lambda value: value if value == "system" or _PATH.fullmatch(value) else None,
                    "an absolute path or system"),
    "sslcert": (_matching(_PATH.pattern), "an absolute path"),
    "sslkey": (_matching(_PATH.pattern), "an absolute path"),
    "sslsni": (_one_of("0", "1"), "0 or 1"),
    "connect_timeout": (_matching(r"\d{1,6}"), "a number of seconds"),
    "target_session_attrs": (_one_of("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
                             "any, read-write, read-only, primary, standby or prefer-standby"),
    "application_name": (_matching(r"[A-Za-z0-9._-]{1,63}"), "letters, digits, '.', '_' and '-'"),
}
MYSQL_FORM = "USER:PASSWORD@tcp(HOST:PORT)/ (optionally ?tls=true)"
POSTGRESQL_FORM = "postgresql://USER:PASSWORD@HOST:5432/ (optionally ?sslmode=verify-full)"


class Unreachable(Exception):
    """The database server cannot be reached or refuses us; the text never holds the password."""


class BadDSN(ValueError):
    """A DSN step-ca would refuse (or that this appliance does not pass on). `reason` never holds any
    part of the DSN, only names of parameters this module knows."""

    def __init__(self, kind, reason):
        self.kind, self.reason = kind, reason
        form = MYSQL_FORM if kind == "mysql" else POSTGRESQL_FORM
        label = "a MySQL DSN" if kind == "mysql" else "a PostgreSQL DSN"
        super().__init__(f"is not {label}: {reason}; use {form}")


@dataclass(frozen=True)
class DSN:
    kind: str
    user: str
    password: str = field(repr=False)
    net: str                      # tcp (tcp4, tcp6) or unix
    hosts: tuple = ()             # ((host, port), ...) for tcp
    socket: str = ""              # for unix
    dbname: str = ""              # the database the DSN names ("" none)
    params: dict = field(default_factory=dict)
    text: str = field(default="", repr=False)   # the DSN as step-ca gets it

    @property
    def where(self):
        if self.net == "unix":
            return f"unix({self.socket})"
        return f"{self.net}({','.join(_host_port(host, port) for host, port in self.hosts)})"


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def parse(kind, text):
    """The DSN of a shared type as step-ca 0.30 reads it; raises BadDSN (never showing the DSN)."""
    if kind not in SHARED_TYPES:
        raise ValueError(f"not a shared database type: {kind!r}")
    if not isinstance(text, str):
        raise BadDSN(kind, "it must be text")
    text = text.strip()
    if not text:
        raise BadDSN(kind, "it is empty")
    if len(text) > 4096:
        raise BadDSN(kind, "it is longer than 4096 characters")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise BadDSN(kind, "it holds a line break or another control character")
    return _parse_mysql(text) if kind == "mysql" else _parse_postgresql(text)


def _parse_mysql(text):
    def bad(reason):
        return BadDSN("mysql", reason)

    if "/" not in text and text.endswith(")"):
        text += "/"   # the '/' go-sql-driver needs after the address, when only it is missing
    slash = text.rfind("/")
    if slash < 0:
        raise bad("it has no '/' after the address")
    head, tail = text[:slash], text[slash + 1:]
    at = head.rfind("@")
    if at < 0:
        raise bad("it names no user (USER:PASSWORD@ before the address)")
    user, _, password = head[:at].partition(":")
    location = head[at + 1:]
    if not _USER.fullmatch(user):
        raise bad("the user must be 1 to 80 characters without ':', '@', '/', '(', ')', '%' or spaces")
    paren = location.find("(")
    if paren >= 0:
        if not location.endswith(")"):
            raise bad("the address must be in parentheses right before the '/': tcp(HOST:PORT)/")
        net, address = location[:paren], location[paren + 1:-1]
    else:
        net, address = location, ""
    net = net or "tcp"
    if net not in ("tcp", "tcp4", "tcp6", "unix"):
        raise bad("the network must be tcp or unix")
    if net == "unix":
        if not _PATH.fullmatch(address):
            raise bad("a unix socket must be an absolute path: unix(/run/mysqld/mysqld.sock)/")
        hosts, socket_path = (), address
    else:
        if not address:
            raise bad("it names no server: tcp(HOST:PORT)")
        hosts, socket_path = (_split_host_port(address, DEFAULT_PORTS["mysql"], "mysql"),), ""
    dbname, _, query = tail.partition("?")
    if dbname and not _DATABASE_NAME.fullmatch(dbname):
        raise bad(f"the database name after the '/' must be {DATABASE_NAME_RULE}")
    params = _parse_params("mysql", query, MYSQL_PARAMS, plus_is_space=False)
    return DSN("mysql", user, password, net, hosts, socket_path, dbname, params, text)


def _split_host_port(address, default_port, kind):
    """(host, port) from HOST, HOST:PORT, [IPv6]:PORT or a bare IPv6 address."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", address)
    if match:
        host, port = match.group(1), match.group(2)
        if port is None and kind == "mysql":   # go-sql-driver would make it [[v6]]:3306
            raise BadDSN(kind, "an IPv6 address in brackets needs a port: [fd00::5]:3306")
        if not _is_ipv6(host):
            raise BadDSN(kind, "the address in brackets is not an IPv6 address")
    elif address.count(":") > 1 and kind == "mysql":
        host, port = address, None
        if not _is_ipv6(host):
            raise BadDSN(kind, "the server must be HOST:PORT, [IPv6]:PORT or an IPv6 address")
    else:
        host, _, port = address.partition(":") if ":" in address else (address, "", None)
        if not _HOST.fullmatch(host):
            raise BadDSN(kind, "the server must be a host name or an IP address (letters, digits, '.', '-', "
                               "'_'), then optionally ':PORT'")
    if port is None:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadDSN(kind, "the port must be a number from 1 to 65535")
    return host, int(port)


def _is_ipv6(text):
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_params(kind, query, allowed, plus_is_space):
    params = {}
    if not query:
        return params
    names = ", ".join(allowed)
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        if plus_is_space:
            value = value.replace("+", " ")
        if not equals or name not in allowed:
            raise BadDSN(kind, f"it has a parameter this appliance does not pass on (allowed: {names})")
        if name in params:
            raise BadDSN(kind, f"the parameter {name} is given twice")
        check, rule = allowed[name]
        normalised = check(value)
        if normalised is None:
            raise BadDSN(kind, f"the parameter {name} must be {rule}")
        params[name] = normalised
    return params


# go's url.Parse accepts these in the user information; anything else must be percent-encoded
_USERINFO = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]*")


def _percent_decode(text, what):
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise BadDSN("postgresql", f"the {what} has a '%' that is not followed by two hex digits")
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda match: bytes([int(match.group(1), 16)]), text.encode("utf-8"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadDSN("postgresql", f"the {what} is not UTF-8 once percent-decoded") from None


def _parse_postgresql(text):
    def bad(reason):
        return BadDSN("postgresql", reason)

    match = re.match(r"postgres(?:ql)?://", text)
    if not match:
        raise bad("it must be a URL starting with postgresql:// (the keyword=value form is not accepted here)")
    rest = text[match.end():]
    if "#" in rest:
        raise bad("it holds a '#' (percent-encode it as %23 in the password)")
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    at = authority.rfind("@")
    if at < 0:
        raise bad("it names no user (USER:PASSWORD@ before the host)")
    userinfo, hostlist = authority[:at], authority[at + 1:]
    if not _USERINFO.fullmatch(userinfo):
        raise bad("in the user and password, characters other than letters, digits and -._~!$&'()*+,;=:@ "
                  "must be percent-encoded")
    user_text, _, password_text = userinfo.partition(":")
    user = _percent_decode(user_text, "user")
    password = _percent_decode(password_text, "password")
    if not re.fullmatch(r"[^\s\x00-\x1f\x7f]{1,63}", user):
        raise bad("the user must be 1 to 63 characters without spaces")
    if not hostlist:
        raise bad("it names no host (the appliance connects over TCP: HOST:PORT after the '@')")
    parts = hostlist.split(",")
    hosts = tuple(_split_host_port(part, DEFAULT_PORTS["postgresql"], "postgresql") for part in parts)
    if len(parts) > 1 and not all(re.search(r":\d+$", part) for part in parts):
        raise bad("with several hosts each needs its port: HOST1:5432,HOST2:5432")
    if path and not _DATABASE_NAME.fullmatch(path):
        raise bad(f"the database name after the '/' must be {DATABASE_NAME_RULE}")
    params = _parse_params("postgresql", query, POSTGRESQL_PARAMS, plus_is_space=True)
    if ("sslcert" in params) != ("sslkey" in params):
        raise bad("sslcert and sslkey go together (step-ca needs both)")
    return DSN("postgresql", user, password, "tcp", hosts, "", path, params, text)


def parse_dsn(dsn, kind="mysql"):
    """The parsed DSN, or None when it does not parse (kept for callers that only ask 'is it one')."""
    try:
        return parse(kind, dsn)
    except BadDSN:
        return None


def redact(dsn, kind="mysql"):
    """The DSN without its password: what may be shown and logged ('<hidden>' when it does not parse)."""
    parsed = parse_dsn(dsn, kind)
    if parsed is None:
        return "<hidden>"
    secret = ":***" if parsed.password else ""
    if kind == "mysql":
        return f"{parsed.user}{secret}@{parsed.where}/{parsed.dbname}"
    return f"postgresql://{parsed.user}{secret}@{','.join(_host_port(*hp) for hp in parsed.hosts)}/{parsed.dbname}"


def describe(db):
    """One line for status, reports and logs; never the password."""
    if not is_shared(db):
        return "badger (embedded, on this appliance)"
    parsed = parse_dsn(db.get("dsn"), db["type"])
    if parsed is None:
        return f"{db['type']}: database {db.get('database')} (the DSN does not parse)"
    return f"{db['type']}: database {db['database']} on {parsed.where} as user {parsed.user} (shared)"


def is_shared(db):
    return db.get("type", "badger") != "badger"


# ---- answers and ca.json ----


class _Bad(Exception):
    def __init__(self, key, value, message):
        super().__init__(message)
        self.key, self.value, self.message = key, value, message


def _normalise(raw, supported, keys):
    """{'type': 'badger'} or {'type', 'dsn', 'database'}; raises _Bad(key, shown value, message).
    keys: how the three keys are named where the value came from."""
    kind = raw.get("type", "badger")
    if kind not in TYPES:
        raise _Bad(keys["type"], kind if isinstance(kind, str) else "<hidden>",
                   f"must be one of {', '.join(supported)}")
    if kind not in supported:
        raise _Bad(keys["type"], kind, f"is not supported by this appliance's step-ca "
                                       f"(it was built with: {', '.join(supported)})")
    if kind == "badger":
        if raw.get("dsn") or raw.get("database"):
            raise _Bad(keys["dsn"], "<hidden>", "is only for a shared database (type: mysql or postgresql)")
        return dict(DEFAULT)
    try:
        parsed = parse(kind, raw.get("dsn"))
    except BadDSN as error:
        raise _Bad(keys["dsn"], "<hidden>", str(error)) from None
    name = raw.get("database")
    if name is None or name == "":
        name = parsed.dbname or DEFAULT_DATABASE
    if not isinstance(name, str) or not _DATABASE_NAME.fullmatch(name):
        raise _Bad(keys["database"], name, f"is not a database name: {DATABASE_NAME_RULE}")
    if parsed.dbname and parsed.dbname != name:
        raise _Bad(keys["dsn"], "<hidden>", f"names another database than {keys['database']} ({name}); "
                                            "name it in one place (step-ca uses the latter)")
    return {"type": kind, "dsn": parsed.text, "database": name}


def validate(raw, supported=None, key="ca.database"):
    """The normalized ca.database answer: {'type': 'badger'} or {'type', 'dsn', 'database'}.
    `supported`: the types allowed (default: what the installed step-ca was built with)."""
    supported = tuple(supported or installed_types())
    if raw is None:
        return dict(DEFAULT)
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise AnswersError(key, "<hidden>", "must be a mapping: {type: badger} or "
                                            "{type: mysql|postgresql, dsn: ..., database: ...}")
    unknown = sorted(set(raw) - {"type", "dsn", "database"}, key=str)
    if unknown:
        raise AnswersError(f"{key}.{unknown[0]}", "<hidden>", "is not a key here (allowed: type, dsn, database)")
    try:
        return _normalise(raw, supported, {name: f"{key}.{name}" for name in ("type", "dsn", "database")})
    except _Bad as error:
        raise AnswersError(error.key, error.value, error.message) from None


def ca_json_block(db, data_dir):
    """step-ca's `db` block."""
    if not is_shared(db):
        return {"type": "badgerv2", "dataSource": str(data_dir), "badgerFileLoadingMode": ""}
    return {"type": db["type"], "dataSource": db["dsn"], "database": db["database"]}


def from_ca_json(config, source="ca.json"):
    """The ca.database answer a ca.json describes (the inverse of ca_json_block), checked as an
    answer is: a restored or joined ca.json may hold anything. Raises UserError naming `source`'s key."""
    block = config.get("db") if isinstance(config, dict) else None
    if block is None:
        return dict(DEFAULT)
    if not isinstance(block, dict):
        raise UserError(f"{source}: db: must be a mapping (type, dataSource, database); nothing was changed")
    if block.get("type") not in SHARED_TYPES:
        return dict(DEFAULT)
    raw = {"type": block["type"], "dsn": block.get("dataSource"), "database": block.get("database")}
    try:
        return _normalise(raw, TYPES, {"type": "db.type", "dsn": "db.dataSource", "database": "db.database"})
    except _Bad as error:
        value = error.value if error.value == "<hidden>" else repr(error.value)[:80]
        raise UserError(f"{source}: {error.key}: {value} {error.message}; nothing was changed") from None


# ---- can step-ca use it? ----


def check_reachable(db, timeout=CONNECT_TIMEOUT):
    """Log in, create the database if missing (as step-ca does at start), count its tables and prove
    a table can be created there; raises Unreachable(reason) when any of that fails. Returns how many
    tables the database holds (0: no CA has used it yet), None for badger."""
    if not is_shared(db):
        return None
    try:
        parsed = parse(db["type"], db["dsn"])
    except BadDSN as error:
        raise Unreachable(f"the DSN {error}") from None
    if db["type"] == "mysql":
        return _MySQLCheck(parsed, db["database"], timeout).run()
    return _PostgreSQLCheck(parsed, db["database"], timeout).run()


def _driver(kind):
    """The client module for `kind`, imported now (only a shared database needs it)."""
    module, debian, fedora = DRIVERS[kind]
    try:
        return importlib.import_module(module)
    except ImportError:
        packages = debian if debian == fedora else f"{debian} on Debian, {fedora} on Fedora"
        raise StepFailed(f"check the {kind} database", f"the Python module {module} is missing: "
                                                      f"install {packages}") from None


def _clean(text, *secrets_):
    """A server's or client library's message as one line without the secrets."""
    line = " ".join(str(text).split())
    for secret in secrets_:
        if secret and len(secret) >= 3:
            line = line.replace(secret, "<hidden>")
    return line[:300]


def _os_reason(error):
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {getattr(error, 'verify_message', None) or error.reason or error}"
    return (error.strerror or str(error) or type(error).__name__).lower()


class _MySQLCheck:
    def __init__(self, dsn, database, timeout):
        self.dsn, self.database, self.timeout = dsn, database, timeout
        self.where = dsn.where

    def _connect(self, pymysql):
        dsn = self.dsn
        tls = dsn.params.get("tls", "false")
        allow_cleartext = _BOOL.get(dsn.params.get("allowCleartextPasswords", "false"))
        where = self.where

        class Refuse:
            """An authentication the DSN does not allow (step-ca would refuse it too)."""

            def __init__(self, connection):
                pass

            def authenticate(self, packet):
                raise Unreachable(f"the MySQL server at {where} asks for an authentication that sends the "
                                  "password as it is, which the DSN does not allow (allowCleartextPasswords=true)")

        plugins = {} if allow_cleartext else {b"mysql_clear_password": Refuse, b"dialog": Refuse}
        plugins[b"mysql_old_password"] = Refuse
        require_tls = tls in ("true", "skip-verify") and not _BOOL.get(
            dsn.params.get("allowFallbackToPlaintext", "false"))

        ssl_flag = pymysql.constants.CLIENT.SSL

        class Connection(pymysql.connections.Connection):
            def _request_authentication(self):   # before any credential leaves: TLS as the DSN asks
                if self.ssl and not self.server_capabilities & ssl_flag:
                    if require_tls:
                        raise Unreachable(f"the MySQL server at {where} does not offer TLS, which the DSN's "
                                          f"tls={tls} requires")
                    self.ssl, self.client_flag = False, self.client_flag & ~ssl_flag   # preferred: plain
                return super()._request_authentication()

        kwargs = {"user": dsn.user, "password": dsn.password.encode("utf-8"), "charset": "utf8mb4",
                  "connect_timeout": self.timeout, "read_timeout": self.timeout, "write_timeout": self.timeout,
                  "autocommit": True, "auth_plugin_map": plugins}
        if dsn.net == "unix":
            kwargs["unix_socket"] = dsn.socket
        else:
            kwargs["host"], kwargs["port"] = dsn.hosts[0]
        if tls != "false":
            kwargs["ssl"] = _tls_context(verify=tls == "true")
        return Connection(**kwargs)

    def run(self):
        pymysql = self.pymysql = _driver("mysql")
        try:
            connection = self._connect(pymysql)
        except pymysql.err.MySQLError as error:
            raise self._login_error(error) from None
        try:
            with connection.cursor() as cursor:
                name = self.database
                self._do(cursor, f"CREATE DATABASE IF NOT EXISTS `{name}`",
                         f"refused to create or use database {name}")
                self._do(cursor, f"USE `{name}`", f"refused access to database {name}")
                self._do(cursor, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
                                 "AND table_name NOT LIKE %s", f"did not list the tables of database {name}",
                         (CHECK_TABLE_PREFIX + "%",))
                tables = int(cursor.fetchone()[0])
                probe = CHECK_TABLE_PREFIX + secrets.token_hex(4)
                self._do(cursor, f"CREATE TABLE `{probe}` (nkey VARBINARY(255), nvalue BLOB, PRIMARY KEY (nkey))",
                         f"refused user {self.dsn.user} to create a table in database {name} (step-ca creates "
                         "its tables at start: GRANT ALL ON that database)")
                self._do(cursor, f"DROP TABLE `{probe}`", f"refused to drop the check's table {probe} in {name}")
            return tables
        finally:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 (closing after a failure: the failure is what counts)
                pass

    def _do(self, cursor, sql, failure, args=None):
        try:
            cursor.execute(sql, args)
        except self.pymysql.err.MySQLError as error:
            raise Unreachable(f"the MySQL server at {self.where} {failure}: {self._text(error)}") from None
        except OSError as error:
            raise Unreachable(f"the MySQL server at {self.where} broke off: {_os_reason(error)}") from None

    def _text(self, error):
        args = getattr(error, "args", ())
        if len(args) >= 2 and isinstance(args[0], int):
            return f"{_clean(args[1], self.dsn.password)} (error {args[0]})"
        return _clean(error, self.dsn.password)

    def _login_error(self, error):
        original = getattr(error, "original_exception", None)
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        if isinstance(original, OSError) or code in (2003, 2002):
            reason = _os_reason(original) if isinstance(original, OSError) else self._text(error)
            return Unreachable(f"cannot connect to the MySQL server at {self.where}: {reason}")
        return Unreachable(f"the MySQL server at {self.where} refused the login: {self._text(error)}")


def _tls_context(verify):
    """What go-sql-driver does for tls=true (system roots, host name checked) or skip-verify/preferred."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def system_ca_bundle():
    for path in SYSTEM_CA_BUNDLES:
        if Path(path).is_file():
            return path
    return ssl.get_default_verify_paths().cafile


class _PostgreSQLCheck:
    def __init__(self, dsn, database, timeout):
        self.dsn, self.database, self.timeout = dsn, database, timeout
        self.where = dsn.where

    def _kwargs(self, dbname):
        dsn = self.dsn
        kwargs = {"host": ",".join(host for host, _ in dsn.hosts),
                  "port": ",".join(str(port) for _, port in dsn.hosts),
                  "user": dsn.user, "dbname": dbname, "connect_timeout": max(2, int(self.timeout))}
        if dsn.password:
            kwargs["password"] = dsn.password
        params = dict(dsn.params)
        params.pop("connect_timeout", None)
        if params.get("sslrootcert") == "system":   # pgx: the system roots, and verify-full
            params["sslrootcert"], params["sslmode"] = system_ca_bundle(), "verify-full"
        elif params.get("sslmode") in ("verify-ca", "verify-full") and "sslrootcert" not in params:
            params["sslrootcert"] = system_ca_bundle()   # pgx verifies with the system roots here
        kwargs.update(params)
        return kwargs

    def _connect(self, psycopg2, dbname):
        return psycopg2.connect(**self._kwargs(dbname))

    def _text(self, error):
        diag = getattr(error, "diag", None)
        primary = diag.message_primary if diag is not None else None   # without the SQL's LINE 1: echo
        return _clean(primary or error, self.dsn.password)

    def run(self):
        psycopg2 = _driver("postgresql")
        name = self.database
        try:
            connection = self._connect(psycopg2, name)
        except psycopg2.Error as error:
            if f'"{name}"' not in str(error):   # not "database ... does not exist": log-in or network
                raise self._connect_error(error) from None
            self._create_database(psycopg2, error)
            try:
                connection = self._connect(psycopg2, name)
            except psycopg2.Error as again:
                raise self._connect_error(again) from None
        try:
            with connection.cursor() as cursor:
                # pg_tables lists every table (information_schema only those the user may use)
                self._do(psycopg2, cursor, "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN "
                                           "('pg_catalog', 'information_schema') AND tablename NOT LIKE %s",
                         f"did not list the tables of database {name}", (CHECK_TABLE_PREFIX + "%",))
                tables = int(cursor.fetchone()[0])
                self._do(psycopg2, cursor, f'CREATE TABLE "{CHECK_TABLE_PREFIX}{secrets.token_hex(4)}" '
                                           "(nkey BYTEA, nvalue BYTEA, PRIMARY KEY (nkey))",
                         f"refused user {self.dsn.user} to create a table in database {name} (step-ca creates "
                         "its tables at start; from PostgreSQL 15 only the database's owner may create tables in "
                         "schema public by default: make the user its owner or GRANT CREATE ON SCHEMA public)")
            connection.rollback()   # the check's table never existed for anyone else
            return tables
        finally:
            connection.close()

    def _create_database(self, psycopg2, first):
        """As step-ca does: through template1, CREATE DATABASE when it does not exist."""
        name = self.database
        try:
            connection = self._connect(psycopg2, "template1")
        except psycopg2.Error:
            raise self._connect_error(first) from None
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                self._do(psycopg2, cursor, "SELECT 1 FROM pg_database WHERE datname = %s", "did not answer",
                         (name,))
                if cursor.fetchone() is not None:   # it exists: the first error was about something else
                    raise self._connect_error(first)
                self._do(psycopg2, cursor, f'CREATE DATABASE "{name}"',
                         f"refused user {self.dsn.user} to create database {name} (create it for that user, "
                         "or give the user CREATEDB)")
        finally:
            connection.close()

    def _do(self, psycopg2, cursor, sql, failure, args=None):
        try:
            cursor.execute(sql, args)
        except psycopg2.Error as error:
            raise Unreachable(f"the PostgreSQL server at {self.where} {failure}: {self._text(error)}") from None

    def _connect_error(self, error):
        return Unreachable(f"cannot connect to the PostgreSQL server at {self.where} as user {self.dsn.user}: "
                           f"{self._text(error)}")
