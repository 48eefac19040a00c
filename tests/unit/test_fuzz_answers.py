"""Property tests (Hypothesis) of the answers validator and the strict YAML loaders of both worlds.

For any mapping or document: a value or UserError/AnswersError with one line, never a traceback,
never a secret (generated with a recognisable marker) in the message; through the real CLI exit 2
and nothing written. Examples per property: CA_TEST_FUZZ_EXAMPLES (make check 200, make test 1000).
"""
import os
import string
import subprocess
from pathlib import Path

import pytest
import yaml
from ca_appliance import answers, safeyaml, schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image import config as host_config
from image.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "overlay/usr/bin/ca-appliance"
GUEST_PYTHON = "/usr/bin/python3"
MARKER = "SEKRIT"
EXAMPLES = int(os.environ.get("CA_TEST_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The CLI starts a Python per example: a twentieth of the examples, at least 10.
CLI_FUZZ = settings(max_examples=max(10, EXAMPLES // 20), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

DEFAULTS = answers.load_defaults()
KEY_PARTS = sorted({part for key in schema.KEYS for part in key.split(".")})
SECRET_PATHS = schema.secret_keys()

secrets_ = st.text(alphabet=string.ascii_letters + string.digits + ":@/()", max_size=12).map(
    lambda tail: f"{MARKER}{tail}")
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True), st.text(max_size=40),
    st.sampled_from(["", "dhcp", "static", "ca.lab.example", ":443", "744h", "EC-P256", "keep", "mysql",
                     "badger", "192.168.70.10/24", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]))
keys = st.one_of(st.sampled_from(KEY_PARTS), st.text(max_size=12), st.integers(), st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


def _with_secret(tree, path, secret):
    node = tree
    *parents, leaf = path.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = secret
    return tree


ALWAYS_REFUSED = ("ca.dsn", "ca.token", "admin.password", "restore.key", "join.extra", "ca.database", "unknown_top")


@st.composite
def answer_trees(draw, places=(*SECRET_PATHS, *ALWAYS_REFUSED)):
    """A mapping shaped like answers (known keys, random values) with a secret planted under a
    secret key, an unknown key, or as a DSN where a mapping belongs."""
    tree = draw(st.dictionaries(st.sampled_from(["hostname", "network", "ca", "admin", "join", "restore"]),
                                values, max_size=6))
    for section in ("ca", "network", "admin"):
        if draw(st.booleans()):
            tree[section] = draw(st.dictionaries(keys, values, max_size=8))
    secret = draw(secrets_)
    where = draw(st.sampled_from(places))
    return _with_secret(tree, where, secret), secret, where


def assert_one_clean_line(text, secret=MARKER):
    assert "\n" not in text and "\r" not in text, text
    assert secret not in text and MARKER not in text, text
    assert "Traceback" not in text


@FUZZ
@given(answer_trees())
def test_validate_refuses_any_mapping_in_one_line_without_its_secrets(case):
    raw, secret, where = case
    try:
        answers.validate(raw, DEFAULTS)  # a secret under its own key (restore.passphrase) may be fine
    except answers.AnswersError as error:
        assert_one_clean_line(str(error), secret)
        return
    assert where in SECRET_PATHS, f"a value under {where} was accepted"


@FUZZ
@given(values)
def test_validate_never_raises_anything_but_answers_error(raw):
    try:
        answers.validate(raw, DEFAULTS)
    except answers.AnswersError as error:
        assert "\n" not in str(error)


# ---- the strict YAML loaders: documents, hostile and random ----

def yaml_documents():
    dumped = values.map(lambda value: yaml.safe_dump({"hostname": value, "ca": {"password": MARKER}}))
    hostile = st.sampled_from([
        "a: &a [1]\nb: *a\n", "a: &x 1\n", "<<: {a: 1}\n", "a: 1\na: 2\n", "? [1, 2]\n: x\n",
        "a: " + "[" * 40 + "]" * 40 + "\n", f"ca: {{password: {MARKER}: oops}}\n", f"x: \"{MARKER}\x07\"\n",
        f"x: !!python/object:os.system {MARKER}\n", f"{MARKER}: [\n", "x: 1" + "0" * 5000 + "\n",
        f"- {MARKER}\n- '\n", "x: " + "#" * 300_000 + "\n", f"x: {MARKER}\n---\ny: 1\n",
    ])
    mutated = st.tuples(dumped, st.integers(min_value=0, max_value=200), st.sampled_from(
        list("&*!:[]{}'\"\n\t\x00\x1b>|%@`-?,#") + ["\ufeff", "\u2028", "<<: "])).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:])
    raw_text = st.text(max_size=200).map(lambda text: f"{MARKER}: {text}")
    return st.one_of(dumped, hostile, mutated, raw_text)


def guest_verdict(document):
    try:
        safeyaml.loads(document, "answers.yaml")
        return "accepted"
    except safeyaml.YAMLInputError as error:
        assert_one_clean_line(str(error))
        return "refused"


def host_verdict(document):
    try:
        host_config.loads_yaml(document, "--config: 'c.yaml'")
        return "accepted"
    except UserError as error:
        assert_one_clean_line(str(error))
        return "refused"


@FUZZ
@given(yaml_documents())
def test_both_strict_loaders_give_the_same_verdict_in_one_clean_line(document):
    assert guest_verdict(document) == host_verdict(document)


@FUZZ
@given(st.binary(max_size=300))
def test_both_strict_loaders_refuse_any_bytes_in_one_clean_line(data):
    data = MARKER.encode() + b": " + data
    assert guest_verdict(data) == host_verdict(data)


@pytest.mark.parametrize("document", [
    "a: &a [1]\nb: *a\n", "a: &x 1\n", "<<: {a: 1}\n", "a: 1\na: 2\n", "? [1, 2]\n: x\n",
    "a: " + "[" * 40 + "]" * 40 + "\n", "x: " + "#" * 300_000 + "\n", "x: 1\n---\ny: 1\n",
    "x: !!python/object/apply:os.system [true]\n", "x: \"\x07\"\n", "x: [\n",
], ids=["alias", "anchor", "merge-key", "duplicate", "unhashable-key", "deep", "oversized", "two-documents",
        "python-tag", "control-character", "unclosed"])
def test_both_worlds_refuse_the_same_hostile_documents(document):
    assert guest_verdict(document) == "refused"
    assert host_verdict(document) == "refused"


# ---- through the real CLI (Debian's python3): exit 2, one line, nothing written ----

@pytest.mark.skipif(not os.path.exists(GUEST_PYTHON), reason="the guest runs under the distribution's python3")
@CLI_FUZZ
@given(case=answer_trees(places=ALWAYS_REFUSED))
def test_the_cli_exits_2_with_one_line_and_writes_nothing(tmp_path_factory, case):
    raw, secret, _where = case
    work = tmp_path_factory.mktemp("fuzz")
    answers_file = work / "answers.yaml"
    try:
        answers_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
    except yaml.YAMLError:
        return
    prefix = work / "root"
    prefix.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}
    result = subprocess.run([GUEST_PYTHON, str(CLI), "setup", "--prefix", str(prefix), "--no-system",
                             "--answers", str(answers_file)], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert_one_clean_line(result.stderr.rstrip("\n"), secret)
    assert list(prefix.iterdir()) == []
