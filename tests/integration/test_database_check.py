"""The shared-database check (ca_appliance.database.check_reachable) against real servers: Debian's
MariaDB and PostgreSQL 15, started here on loopback. The check runs in the guest's interpreter
(/usr/bin/python3 with Debian's python3-pymysql and python3-psycopg2), as on the appliance.
"""
import json
import subprocess
from pathlib import Path

import pytest
from ca_helpers import free_port
from cluster_helpers import database_server
from helpers.wizard import GUEST_PYTHON

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"

SECRET = "db-Check-Secret-7f3a"
USER = "stepca_check"
KINDS = ["mysql", "postgresql"]

CHECK = """
import json, sys
from ca_appliance import database
db = json.loads(sys.stdin.read())
try:
    print(json.dumps({"tables": database.check_reachable(db, timeout=5)}))
except database.Unreachable as error:
    print(json.dumps({"error": str(error)}))
"""


def guest_check(db):
    """check_reachable(db) in the guest's python: {'tables': N} or {'error': one line}."""
    result = subprocess.run([GUEST_PYTHON, "-c", CHECK], input=json.dumps(db), capture_output=True, text=True,
                            cwd=GUEST_LIB, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr   # never a traceback
    assert SECRET not in result.stdout
    return json.loads(result.stdout)


@pytest.fixture(scope="module", params=KINDS)
def server(request, tmp_path_factory):
    with database_server(request.param, tmp_path_factory.mktemp(request.param)) as started:
        started.add_step_user(USER, SECRET)
        yield started


def shared(server, password=SECRET, user=USER, database="stepca_check"):
    return {"type": server.kind, "dsn": server.dsn(user, password), "database": database}


def assert_one_line(outcome, *parts):
    assert "error" in outcome, outcome
    message = outcome["error"]
    assert "\n" not in message and SECRET not in message
    for part in parts:
        assert part in message, message


def test_good_credentials_create_the_database_and_leave_no_trace(server):
    db = shared(server)
    assert guest_check(db) == {"tables": 0}   # the database is created, as step-ca would at start
    assert server.tables("stepca_check") == []   # the check's table is gone again
    assert guest_check(db) == {"tables": 0}
    # a database holding a CA's state is told apart (setup refuses it; join is the way in)
    if server.kind == "mysql":
        server.sql("CREATE TABLE `stepca_check`.`x509_certs` (nkey VARBINARY(255), nvalue BLOB, PRIMARY KEY (nkey))")
    else:
        server.sql("CREATE TABLE x509_certs (nkey BYTEA, nvalue BYTEA, PRIMARY KEY (nkey))", database="stepca_check")
    assert guest_check(db) == {"tables": 1}


def test_a_wrong_password_is_one_line_without_it(server):
    outcome = guest_check(shared(server, password="not-the-" + SECRET))
    if server.kind == "mysql":
        assert_one_line(outcome, f"the MySQL server at tcp(127.0.0.1:{server.port}) refused the login: "
                                 f"Access denied for user '{USER}'", "(error 1045)")
    else:
        assert_one_line(outcome, f"cannot connect to the PostgreSQL server at tcp(127.0.0.1:{server.port}) as user "
                                 f"{USER}:", f'password authentication failed for user "{USER}"')


def test_a_database_the_user_may_not_create_is_one_line(server):
    outcome = guest_check(shared(server, database="other_db"))   # not stepca*: not granted (MariaDB)
    if server.kind == "mysql":
        assert_one_line(outcome, "refused to create or use database other_db", "Access denied", "(error 1044)")
    else:
        server.sql("CREATE ROLE plain_user LOGIN PASSWORD 'plain-pw-1'")   # no CREATEDB
        outcome = guest_check(shared(server, user="plain_user", password="plain-pw-1", database="missing_db"))
        assert_one_line(outcome, "refused user plain_user to create database missing_db",
                        "permission denied to create database")


def test_a_user_who_may_not_create_tables_is_refused_before_step_ca_would_fail(server):
    if server.kind == "mysql":
        server.sql(f"CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY '{SECRET}'; "
                   "GRANT SELECT ON `stepca_ro`.* TO 'reader'@'127.0.0.1'; CREATE DATABASE stepca_ro")
        outcome = guest_check(shared(server, user="reader", database="stepca_ro"))
        assert_one_line(outcome, "refused to create or use database stepca_ro")
    else:
        # PostgreSQL 15: a database someone else owns has no CREATE on schema public for this user
        server.sql(f"CREATE ROLE reader LOGIN PASSWORD '{SECRET}'; ")
        server.sql("CREATE DATABASE stepca_ro")
        outcome = guest_check(shared(server, user="reader", database="stepca_ro"))
        assert_one_line(outcome, "refused user reader to create a table in database stepca_ro",
                        "GRANT CREATE ON SCHEMA public", "permission denied for schema public")


def test_an_unreachable_port_is_one_line(server):
    port = free_port()
    db = shared(server)
    db["dsn"] = db["dsn"].replace(f":{server.port}", f":{port}")
    name = "MySQL" if server.kind == "mysql" else "PostgreSQL"
    assert_one_line(guest_check(db), f"cannot connect to the {name} server at tcp(127.0.0.1:{port})")


def test_tls_the_dsn_asks_for_is_required_of_the_server(server):
    """The test servers offer no TLS: a DSN that requires it is refused before any credential is sent
    (as step-ca refuses it), one that prefers it goes on without."""
    if server.kind == "mysql":
        required, preferred = "?tls=true", "?tls=preferred"
        expected = "does not offer TLS, which the DSN's tls=true requires"
    else:
        required, preferred = "?sslmode=require", "?sslmode=prefer"
        expected = "server does not support SSL, but SSL was required"
    db = shared(server, database="stepca_tls")
    assert_one_line(guest_check(dict(db, dsn=db["dsn"] + required)), expected)
    assert guest_check(dict(db, dsn=db["dsn"] + preferred)) == {"tables": 0}
