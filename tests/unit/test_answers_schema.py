"""The one answers schema (overlay/usr/lib/ca-appliance/schema.yaml) and the rules it drives:
what a message may print, which keys exist, the limits both worlds apply, and the checks of issue 21
(secrets in messages, tracebacks, SSH keys, password strength, admin.user, host names)."""
import base64
import copy

import pytest
from ca_appliance import answers, schema, upgrade
from ca_appliance.answers import AnswersError, load_defaults, validate
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

SECRET = "MARKER-s3cr3t-Zq7xW"


@pytest.fixture
def defaults():
    return load_defaults()


def refused(raw, defaults):
    with pytest.raises(AnswersError) as caught:
        validate(raw, defaults)
    text = str(caught.value)
    assert "\n" not in text and SECRET not in text, text
    return caught.value


def ssh_line(key, comment="you@laptop"):
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode() + f" {comment}"


# ---- the schema is the list of keys, both ways ----

def test_every_schema_key_is_validated_and_every_default_is_in_the_schema(defaults):
    result = validate({}, defaults)
    for dotted in schema.leaf_keys():
        top, *rest = dotted.split(".")
        if top in ("restore",):  # the upgrade's request: upgrade.restore_request reads it
            continue
        node = result
        for part in [top, *rest]:
            if node is None and top == "join":
                break
            if dotted.startswith("network.") and part != "mode":
                break  # static-only keys: validated when network.mode is static
            if dotted.startswith("ca.database.") and part != "type":
                break  # shared-database keys: validated when the type is mysql/postgresql
            assert isinstance(node, dict) and part in node, f"{dotted} is in schema.yaml but validate() drops it"
            node = node[part]

    def leaves(mapping, prefix=""):
        for key, value in mapping.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict) and schema.is_section(dotted):
                yield from leaves(value, dotted)
            else:
                yield dotted
    for dotted in leaves(defaults):
        assert dotted in schema.KEYS, f"defaults.yaml has {dotted}, which schema.yaml does not declare"


def test_every_key_says_whether_it_is_secret():
    assert set(schema.secret_keys()) == {"ca.password", "ca.database.dsn", "join.passphrase", "restore.passphrase"}
    for key, entry in schema.KEYS.items():
        assert entry.get("section") is True or isinstance(entry.get("secret"), bool), key


def test_host_and_guest_read_the_same_limits():
    from image import config
    assert config.KEY_TYPES == answers.KEY_TYPES
    assert config.SSH_KEY_TYPES == answers.SSH_KEY_TYPES and "ssh-dss" not in config.SSH_KEY_TYPES
    assert config.YEARS_MAX == answers.MAX_YEARS
    assert config.CA_NAME_MAX == answers.MAX_CA_NAME
    assert config.USER_NAME_PATTERN == answers.USER_NAME.pattern


# ---- item 4: a value is printed only when its key is declared non-secret ----

@pytest.mark.parametrize("raw, key", [
    ({"ca": {"dsn": f"stepca:{SECRET}@tcp(db:3306)/"}}, "ca.dsn"),           # unknown key, no "pass" in it
    ({"ca": {"token": SECRET}}, "ca.token"),
    ({"admin": {"password": SECRET}}, "admin.password"),
    ({"restore": {"archive": "a.tar", "secret": SECRET}}, "restore.secret"),   # unknown restore.* key
    ({"join": {"backup": "b.tar", "key": SECRET}}, "join.key"),
    ({"ca": {"database": f"stepca:{SECRET}@tcp(db:3306)/"}}, "ca.database"),  # a DSN given as a string
    ({"ca": {"database": {"type": "mysql", "dsn": f"stepca:{SECRET}@nowhere"}}}, "ca.database.dsn"),
    ({"ca": {"password": SECRET[:8]}}, "ca.password"),
    ({"ca": SECRET}, "ca"),
    ({"network": SECRET}, "network"),
])
def test_secret_and_unknown_values_are_never_printed(defaults, raw, key):
    error = refused(raw, defaults)
    assert error.key == key


def test_an_unknown_key_is_named_but_its_value_is_not(defaults):
    error = refused({"ca": {"nmae": "Lab CA"}}, defaults)
    assert str(error) == "answers error: ca.nmae: <not shown> is an unknown key (did you mean ca.name?)"


def test_a_restore_mapping_without_archive_never_shows_its_passphrase():
    # Before: "restore: {'passphrase': '...'} must name a backup archive".
    with pytest.raises(AnswersError) as caught:
        upgrade.restore_request({"restore": {"passphrase": SECRET}})
    assert SECRET not in str(caught.value) and caught.value.key.startswith("restore")
    with pytest.raises(AnswersError) as caught:
        upgrade.restore_request({"restore": {"archive": "a.tar", "passphrase": SECRET, "extra": SECRET}})
    assert SECRET not in str(caught.value)


def test_non_secret_values_are_still_shown(defaults):
    assert "'ca-1'" in str(refused({"hostname": "ca-1"}, defaults))
    assert "'DSA'" in str(refused({"ca": {"key_type": "DSA"}}, defaults))


def test_a_baked_answers_file_may_carry_no_secret_key():
    from ca_appliance import buildcheck
    for raw in ({"ca": {"password": SECRET}}, {"join": {"backup": "b", "passphrase": SECRET}},
                {"restore": {"archive": "a", "passphrase": SECRET}},
                {"ca": {"database": {"type": "mysql", "dsn": f"u:{SECRET}@tcp(h:3306)/"}}},
                {"ca": {"database": f"u:{SECRET}@tcp(h:3306)/"}}):
        assert answers.secrets_present(raw), raw
        request = {"defaults": {}, "baked_answers": {
            "name": "baked.yaml", "base64": base64.b64encode(str(raw).replace("'", '"').encode()).decode()}}
        with pytest.raises(AnswersError) as caught:
            buildcheck.check(request)
        assert "must not be in a baked answers file" in str(caught.value) and SECRET not in str(caught.value)


# ---- item 9: numbers where lists belong: one line, never a traceback ----

@pytest.mark.parametrize("constraints, key", [
    ({"dns": 5}, "ca.name_constraints.dns"), ({"ip": 10}, "ca.name_constraints.ip"),
    ({"ip": [10]}, "ca.name_constraints.ip"), ({"dns": True}, "ca.name_constraints.dns"),
    ({"ip": {"a": 1}}, "ca.name_constraints.ip"),
])
def test_name_constraints_given_a_number_are_refused(defaults, constraints, key):
    assert refused({"ca": {"name_constraints": constraints}}, defaults).key == key


# ---- item 11: admin.user, SSH keys, password strength, names as they will be used ----

def test_admin_user_must_be_the_images_admin(defaults):
    error = refused({"admin": {"user": "alice"}}, defaults)
    assert error.key == "admin.user" and "'admin'" in error.message
    assert validate({"admin": {"user": "admin"}}, defaults)["admin"]["user"] == "admin"
    built = copy.deepcopy(defaults)
    built["admin"]["user"] = "ops"
    assert validate({}, built)["admin"]["user"] == "ops"


def test_rsa_1024_and_type_only_ssh_keys_are_refused(defaults):
    weak = ssh_line(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    error = refused({"admin": {"ssh_authorized_keys": [weak]}}, defaults)
    assert "at least 2048 bits (this one has 1024)" in error.message
    type_only = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519").decode()
    assert "Ed25519" in refused({"admin": {"ssh_authorized_keys": [type_only]}}, defaults).message
    rsa_type_only = "ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa").decode()
    refused({"admin": {"ssh_authorized_keys": [rsa_type_only]}}, defaults)
    good = [ssh_line(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            ssh_line(ed25519.Ed25519PrivateKey.generate())]
    assert len(validate({"admin": {"ssh_authorized_keys": good}}, defaults)["admin"]["ssh_authorized_keys"]) == 2


@pytest.mark.parametrize("password", [
    "a" * 16, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "abcdefghijklmnop", "1234567890123456",
    "abababababababab", "Xy7!Xy7!Xy7!Xy7!", "q1w2e3r4q1w2e3r4", "Passsss1Passsss1",
])
def test_trivial_passwords_are_refused(defaults, password):
    error = refused({"ca": {"password": password}}, defaults)
    assert error.key == "ca.password" and password not in str(error)


@pytest.mark.parametrize("password", ["correct horse battery staple", "Tr0ub4dor&3-Zebra!", "q1w2e3r4t5y6u7i8"])
def test_real_passwords_are_accepted(defaults, password):
    assert validate({"ca": {"password": password}}, defaults)["ca"]["password"] == password


def test_hostname_follows_the_kernels_limit_and_rfc_1123(defaults):
    name = "a" * 60 + ".lab"          # 64 characters: the kernel's HOST_NAME_MAX
    assert validate({"hostname": name}, defaults)["hostname"] == name
    assert refused({"hostname": "a" * 61 + ".lab"}, defaults).key == "hostname"
    assert refused({"hostname": "ab--c.lab.example"}, defaults).key == "hostname"
    assert refused({"hostname": "xn--zzzz-.lab.example"}, defaults).key == "hostname"
    assert validate({"hostname": "xn--bcher-kva.example"}, defaults)["hostname"] == "xn--bcher-kva.example"


def test_ca_names_are_normalised_as_certificates_carry_them(defaults):
    result = validate({"ca": {"dns_names": ["CA.Lab.Example.", "::ffff:192.0.2.7", "2001:DB8::1"]}}, defaults)
    assert result["ca"]["dns_names"] == ["ca.lab.example", "192.0.2.7", "2001:db8::1"]
    assert refused({"ca": {"dns_names": ["ca_1.lab.example"]}}, defaults).key == "ca.dns_names"
    assert refused({"ca": {"dns_names": ["*.lab.example"]}}, defaults).key == "ca.dns_names"


# ---- the host's config errors follow the same rule ----

@pytest.mark.parametrize("override, key", [
    ({"ca": {"password": SECRET}}, "ca.password"),
    ({"admin": {"password": SECRET}}, "admin.password"),
    ({"admin": {"password_hash": SECRET}}, "admin.password_hash"),
    ({"ca": {"database": {"type": "mysql", "dsn": SECRET}}}, "ca.database"),
    ({"image": {"secret_token": SECRET}}, "image.secret_token"),
    ({"image": SECRET}, "image"),
])
def test_host_config_errors_never_print_a_secret_or_unknown_value(override, key):
    from image.config import ConfigError, load_config
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=override)
    assert caught.value.key == key
    assert SECRET not in str(caught.value) and "\n" not in str(caught.value)


def test_the_review_screen_shows_every_applied_value_and_each_x5c_root(defaults):
    # Before: the review left out key type, lifetimes, constraints, claims, admin user and the X5C roots.
    import datetime
    import io

    from ca_appliance import wizard
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Operator Workload Root")])
    now = datetime.datetime.now(datetime.UTC)
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    result = validate({"ca": {"x5c_roots": root.public_bytes(serialization.Encoding.PEM).decode(),
                              "name_constraints": {"dns": ["lab.example"]}}}, defaults)
    output = io.StringIO()
    wizard._review(wizard._Console(input, output, None), result, False)
    text = output.getvalue()
    for shown in ("EC-P256", "root 10 years, intermediate 5 years", "lab.example", "ACME 744h (max 4320h)",
                  "Admin account:", "X5C roots:", "CN=Operator Workload Root", root.fingerprint(hashes.SHA256()).hex()):
        assert shown in text, text


def test_random_passwords_pass_the_strength_rule():
    """verify's and password managers' random passwords must never be refused by chance."""
    import secrets
    for _ in range(2000):
        assert answers.password_problem(secrets.token_urlsafe(24)) is None
