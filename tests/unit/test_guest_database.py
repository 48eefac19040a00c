"""ca.database: the DSN rules (step-ca 0.30's, per type), the drivers read from a step-ca binary,
ca.json's db block, the check's client libraries (PyMySQL, psycopg2), and the password never
showing in an error or a description. The checks against real servers: tests/integration/
test_database_check.py."""
import functools
import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from ca_appliance import cajson, database
from ca_appliance.answers import AnswersError, load_defaults, validate
from ca_appliance.errors import UserError
from ca_appliance.layout import Layout
from helpers.wizard import GUEST_PYTHON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"

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
    (f"stepca:{SECRET}@tcp(db.lab.example:3306)", DSN),  # the trailing '/' go-sql-driver needs is added
    ("stepca:pw@tcp(10.0.0.5)/", "stepca:pw@tcp(10.0.0.5)/"),  # as step-ca gets it (port 3306 by default)
    ("stepca:pw@tcp([fd00::5]:3307)/", "stepca:pw@tcp([fd00::5]:3307)/"),
    ("stepca@unix(/run/mysqld/mysqld.sock)/", "stepca@unix(/run/mysqld/mysqld.sock)/"),
    ("stepca:p/a@ss@tcp(h:1)/", "stepca:p/a@ss@tcp(h:1)/"),  # go-sql-driver splits at the last '@' and '/'
    ("stepca:p:w(x)?@tcp(h:1)/", "stepca:p:w(x)?@tcp(h:1)/"),  # the first ':' ends the user
    # 0.30's go-sql-driver passes TLS and timeouts on; the database may be named in the DSN as well
    (f"stepca:{SECRET}@tcp(db:3306)/stepca?tls=true", f"stepca:{SECRET}@tcp(db:3306)/stepca?tls=true"),
    (f"stepca:{SECRET}@tcp(db:3306)/?tls=skip-verify&timeout=5s",
     f"stepca:{SECRET}@tcp(db:3306)/?tls=skip-verify&timeout=5s"),
])
def test_mysql_dsn_is_accepted_as_step_ca_reads_it(dsn, normalized):
    result = database.validate({"type": "mysql", "dsn": dsn, "database": "stepca"}, MYSQL)
    assert result == {"type": "mysql", "dsn": normalized, "database": "stepca"}


def test_mysql_dsn_parts():
    parsed = database.parse("mysql", f"step:{SECRET}@tcp(db.lab.example)/ca?tls=1")
    assert (parsed.user, parsed.password, parsed.hosts, parsed.dbname, parsed.params) == (
        "step", SECRET, (("db.lab.example", 3306),), "ca", {"tls": "true"})
    assert database.parse("mysql", "u:p@tcp(fd00::5)/").hosts == (("fd00::5", 3306),)  # as ensureHavePort does
    assert database.parse("mysql", "u@unix(/run/mysqld/mysqld.sock)/").where == "unix(/run/mysqld/mysqld.sock)"


@pytest.mark.parametrize("dsn, reason", [
    (f"stepca:{SECRET}@db.lab.example:3306", "no '/'"),                     # no tcp(...)
    (f"stepca:{SECRET}@db.lab.example:3306/", "network must be tcp or unix"),
    (f"stepca:{SECRET}@tcp(db:3306)/step-ca", "database name after the '/'"),
    (f"stepca:{SECRET}@tcp(db:3306)/?tls=custom", "tls must be true, false, skip-verify or preferred"),
    (f"stepca:{SECRET}@tcp(db:3306)/?strict=true", "does not pass on"),     # would make step-ca panic
    (f"stepca:{SECRET}@tcp(db:3306)/?{SECRET}", "does not pass on"),
    (f"stepca:{SECRET}@tcp(db:3306)/?tls=true&tls=false", "given twice"),
    (f"stepca:{SECRET}@tcp(db:3306)/?timeout=5", "Go duration"),
    (f"mysql://stepca:{SECRET}@db:3306/", "network must be tcp or unix"),   # a URL, not a go-sql-driver DSN
    (f"stepca:{SECRET}@tcp(db:99999)/", "port must be a number from 1 to 65535"),
    (f"stepca:{SECRET}@tcp([fd00::5])/", "needs a port"),
    (f":{SECRET}@tcp(db:3306)/", "the user must be"),                      # no user
    (f"{SECRET}@tcp(db:3306)/x/", "the user must be"),
    (f"stepca:{SECRET}@unix(relative.sock)/", "absolute path"),
    (f"stepca:{SECRET}\n@tcp(db:3306)/", "control character"),
    (f"stepca:{SECRET}@tcp(db:3306", "no '/'"),
    (f"stepca:{SECRET}@tcp(db:3306)x/", "parentheses"),
    ("", "empty"),
    (None, "must be text"), (42, "must be text"),
])
def test_a_bad_mysql_dsn_is_one_line_that_never_shows_it(dsn, reason):
    with pytest.raises(AnswersError) as caught:
        database.validate({"type": "mysql", "dsn": dsn, "database": "stepca"}, MYSQL)
    message = str(caught.value)
    # the value shows as <hidden> (quoted or not, as AnswersError formats values)
    assert message.startswith("answers error: ca.database.dsn: <hidden> is not a MySQL DSN: "), message
    assert reason in message and "USER:PASSWORD@tcp(HOST:PORT)/" in message
    assert SECRET not in message and "\n" not in message


PG = ("badger", "mysql", "postgresql")


@pytest.mark.parametrize("dsn, parts", [
    (f"postgresql://stepca:{SECRET.replace('@', '%40')}@db.lab.example:5432/",
     ("stepca", SECRET, (("db.lab.example", 5432),), "", {})),
    ("postgres://stepca@10.0.0.5/stepca?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
     ("stepca", "", (("10.0.0.5", 5432),), "stepca", {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/db-ca.pem"})),
    ("postgresql://u:p%3Aw%2Fd%23@[fd00::5]:5433,db2:5434/?sslmode=require&target_session_attrs=read-write",
     ("u", "p:w/d#", (("fd00::5", 5433), ("db2", 5434)), "", {"sslmode": "require",
                                                              "target_session_attrs": "read-write"})),
])
def test_postgresql_dsn_is_a_url_passed_to_step_ca_as_is(dsn, parts):
    parsed = database.parse("postgresql", dsn)
    assert (parsed.user, parsed.password, parsed.hosts, parsed.dbname, parsed.params) == parts
    result = database.validate({"type": "postgresql", "dsn": dsn}, PG)
    assert result == {"type": "postgresql", "dsn": dsn, "database": parts[3] or "stepca"}


@pytest.mark.parametrize("dsn, reason", [
    (f"host=db user=stepca password={SECRET}", "must be a URL starting with postgresql://"),
    (f"postgresql://stepca:{SECRET}@/stepca", "names no host"),
    (f"postgresql://stepca:{SECRET}@%2Frun%2Fpostgresql/", "host name or an IP address"),
    (f"postgresql://stepca:pa ss{SECRET}@db/", "must be percent-encoded"),
    (f"postgresql://stepca:{SECRET}#x@db/", "'#'"),
    (f"postgresql://stepca:%zz{SECRET}@db/", "'%' that is not followed by two hex digits"),
    (f"postgresql://stepca:{SECRET}@db:0/", "port must be a number from 1 to 65535"),
    (f"postgresql://stepca:{SECRET}@db1,db2:5432/", "each needs its port"),
    (f"postgresql://stepca:{SECRET}@db/?sslmode=verify", "sslmode must be disable, allow, prefer"),
    (f"postgresql://stepca:{SECRET}@db/?sslcert=/etc/c.pem", "sslcert and sslkey go together"),
    (f"postgresql://stepca:{SECRET}@db/?sslrootcert=relative.pem", "absolute path or system"),
    (f"postgresql://stepca:{SECRET}@db/?search_path=x", "does not pass on"),
    (f"postgresql://stepca:{SECRET}@db/?sslpassword={SECRET}", "does not pass on"),
    (f"postgresql://stepca:{SECRET}@db/step-ca", "database name after the '/'"),
    (f"postgresql://:{SECRET}@db/", "the user must be"),
])
def test_a_bad_postgresql_dsn_is_one_line_that_never_shows_it(dsn, reason):
    with pytest.raises(AnswersError) as caught:
        database.validate({"type": "postgresql", "dsn": dsn}, PG)
    message = str(caught.value)
    assert message.startswith("answers error: ca.database.dsn: <hidden> is not a PostgreSQL DSN: "), message
    assert reason in message and "postgresql://USER:PASSWORD@HOST:5432/" in message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize("kind, dsn", [
    ("mysql", f"stepca:{SECRET}@tcp(db:3306)/other"),
    ("postgresql", f"postgresql://stepca:{SECRET}@db:5432/other"),
])
def test_the_dsn_and_ca_database_database_may_not_name_two_databases(kind, dsn):
    # step-ca 0.30 takes db.database over the DSN's name: two names would be one silently ignored
    assert database.validate({"type": kind, "dsn": dsn, "database": None}, PG)["database"] == "other"
    assert database.validate({"type": kind, "dsn": dsn, "database": "other"}, PG)["database"] == "other"
    with pytest.raises(AnswersError, match=r"ca.database.dsn: <hidden> names another database than "
                                           r"ca.database.database \(stepca\)") as caught:
        database.validate({"type": kind, "dsn": dsn, "database": "stepca"}, PG)
    assert SECRET not in str(caught.value)


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


def _closed_port():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    return port


@pytest.mark.parametrize("kind, dsn, expected", [
    ("mysql", "stepca:{secret}@tcp(127.0.0.1:{port})/", "cannot connect to the MySQL server at tcp(127.0.0.1:{port}): "
                                                        "connection refused"),
    ("postgresql", "postgresql://stepca:{secret}@127.0.0.1:{port}/",
     "cannot connect to the PostgreSQL server at tcp(127.0.0.1:{port}) as user stepca: "),
])
def test_an_unreachable_server_is_one_line_from_the_real_client_library(kind, dsn, expected):
    port = _closed_port()
    db = {"type": kind, "dsn": dsn.format(secret=SECRET, port=port), "database": "stepca"}
    assert database.describe(db) == f"{kind}: database stepca on tcp(127.0.0.1:{port}) as user stepca (shared)"
    with pytest.raises(database.Unreachable) as caught:
        database.check_reachable(db, timeout=2)
    message = str(caught.value)
    assert message.startswith(expected.format(port=port)), message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize("kind, module, package", [
    ("mysql", "pymysql", "install python3-pymysql on Debian, python3-PyMySQL on Fedora"),
    ("postgresql", "psycopg2", "install python3-psycopg2"),
])
def test_a_missing_client_library_is_one_line_naming_the_package(monkeypatch, kind, module, package):
    from ca_appliance.errors import StepFailed

    monkeypatch.setitem(sys.modules, module, None)   # what `import` meets when the package is not installed
    dsn = {"mysql": DSN, "postgresql": f"postgresql://stepca:{SECRET}@db.lab.example/"}[kind]
    with pytest.raises(StepFailed) as caught:
        database.check_reachable({"type": kind, "dsn": dsn, "database": "stepca"}, timeout=1)
    message = str(caught.value)
    assert message == f"check the {kind} database failed: the Python module {module} is missing: {package}"
    assert SECRET not in message


def test_the_client_libraries_are_imported_only_when_a_shared_database_is_checked():
    probe = ("import sys; from ca_appliance import cli, database, answers, status, join; "
             "database.validate({'type': 'mysql', 'dsn': 'u:p@tcp(h:1)/'}, ('badger', 'mysql')); "
             "print(sorted(m for m in ('pymysql', 'psycopg2') if m in sys.modules))")
    result = subprocess.run([GUEST_PYTHON, "-c", probe], capture_output=True, text=True, cwd=GUEST_LIB, check=True)
    assert result.stdout.strip() == "[]"


# ---- a ca.json from elsewhere (restore, join, status): checked as an answer is, named by its keys ----


@pytest.mark.parametrize("block, key", [
    ({"type": "mysql", "dataSource": f"stepca:{SECRET}@db.lab.example", "database": "stepca"}, "db.dataSource"),
    ({"type": "postgresql", "dataSource": f"host=db password={SECRET}", "database": "stepca"}, "db.dataSource"),
    ({"type": "mysql", "dataSource": ["x"], "database": "stepca"}, "db.dataSource"),
    ({"type": "mysql", "dataSource": DSN, "database": "stepca`; DROP DATABASE mysql; --"}, "db.database"),
])
def test_a_bad_db_block_in_a_ca_json_is_one_user_error_without_the_dsn(block, key):
    with pytest.raises(UserError) as caught:
        database.from_ca_json({"db": block}, source="join: node1.tar.gz: ca.json")
    message = str(caught.value)
    assert message.startswith(f"join: node1.tar.gz: ca.json: {key}: "), message
    assert message.endswith("nothing was changed") and SECRET not in message and "\n" not in message
    with pytest.raises(UserError, match="^ca.json: db: must be a mapping"):
        database.from_ca_json({"db": "mysql"})


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


# ---- properties (Hypothesis): any DSN gives a result or one line without the secret ----

EXAMPLES = int(os.environ.get("CA_TEST_FUZZ_EXAMPLES", "200"))
MARK = "QZX"   # every generated password starts with it; no message may hold it
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
printable = st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f")
passwords = st.text(printable, max_size=20).map(lambda text: MARK + text)
hosts = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
                  st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"))
junk = st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=12)


@st.composite
def mysql_like(draw):
    """Mostly well-formed MySQL DSNs with hostile pieces (and wholly random text now and then)."""
    net = draw(st.sampled_from(["tcp", "unix", "tcp6", "", "udp", draw(junk)]))
    address = draw(st.one_of(hosts.map(lambda h: f"{h}:{draw(st.integers(0, 70000))}"), hosts, junk))
    tail = draw(st.one_of(st.just(""), st.sampled_from(["stepca", "?tls=true", "db?tls=skip-verify&timeout=3s"]),
                          junk))
    return draw(st.one_of(st.just(f"{draw(junk)}stepca:{draw(passwords)}@{net}({address})/{tail}"),
                          st.just(f"stepca:{draw(passwords)}{draw(junk)}"), junk.map(lambda text: text + MARK)))


@st.composite
def postgresql_like(draw):
    scheme = draw(st.sampled_from(["postgresql://", "postgres://", "mysql://", ""]))
    password = draw(st.one_of(passwords, passwords.map(lambda pw: urllib.parse.quote(pw, safe=""))))
    query = draw(st.one_of(st.just(""), st.sampled_from(["?sslmode=require", "?sslmode=x", f"?{MARK}=1"]), junk))
    return f"{scheme}stepca:{password}@{draw(hosts)}{draw(junk)}/{draw(junk)}{query}"


@FUZZ
@given(kind=st.sampled_from(["mysql", "postgresql"]), dsn=st.one_of(mysql_like(), postgresql_like()),
       name=st.one_of(st.none(), st.just("stepca"), junk))
def test_property_any_dsn_is_accepted_or_refused_in_one_line_without_the_secret(kind, dsn, name):
    try:
        result = database.validate({"type": kind, "dsn": dsn, "database": name}, PG)
    except AnswersError as error:
        message = str(error)
        assert error.key in ("ca.database.dsn", "ca.database.database")
        assert MARK not in message and "\n" not in message and "\r" not in message
        assert len(message) < 400
        return
    assert result["type"] == kind and result["dsn"].startswith(dsn.strip()[:8])
    parsed = database.parse(kind, result["dsn"])
    assert MARK not in database.describe(result) and MARK not in database.redact(result["dsn"], kind)
    assert all(1 <= port <= 65535 for _, port in parsed.hosts)


@FUZZ
@given(dsn=st.one_of(mysql_like(), postgresql_like(), junk), kind=st.sampled_from(["mysql", "postgresql"]))
def test_property_a_restored_ca_json_never_shows_its_dsn(dsn, kind):
    try:
        database.from_ca_json({"db": {"type": kind, "dataSource": dsn, "database": "stepca"}})
    except UserError as error:
        assert MARK not in str(error) and "\n" not in str(error)


@FUZZ
@given(user=st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True), password=st.text(printable, max_size=30),
       host=hosts, port=st.integers(1, 65535), name=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True))
def test_property_mysql_dsn_parts_come_back_as_go_sql_driver_splits_them(user, password, host, port, name):
    # the last '/' ends the address and the last '@' the credentials: any password survives
    password = password.strip() or "pw"
    parsed = database.parse("mysql", f"{user}:{password}@tcp({host}:{port})/{name}?tls=preferred")
    assert (parsed.user, parsed.password, parsed.dbname) == (user, password, name)
    assert parsed.hosts == ((host.strip("[]"), port),) and parsed.params == {"tls": "preferred"}


@FUZZ
@given(user=st.text(printable, min_size=1, max_size=16).filter(lambda u: not any(c.isspace() for c in u)),
       password=st.text(printable, max_size=30), host=hosts, port=st.integers(1, 65535))
def test_property_postgresql_percent_encoded_parts_come_back_decoded(user, password, host, port):
    quote = functools.partial(urllib.parse.quote, safe="")
    parsed = database.parse("postgresql", f"postgresql://{quote(user)}:{quote(password)}@{host}:{port}/")
    assert (parsed.user, parsed.password, parsed.hosts) == (user, password, ((host.strip("[]"), port),))
