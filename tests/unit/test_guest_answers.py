"""The guest's answers rules: defaults, merging, and one clear error per bad value."""

from pathlib import Path

import pytest
from ca_appliance import answers
from ca_appliance.answers import AnswersError, load_defaults, validate

GUEST_LIB = Path(__file__).resolve().parents[2] / "overlay/usr/lib/ca-appliance"

ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF2pOt2K2QRFWGUOR45v0pfO5z0KpWOzxkTWPjkXuPOl admin@laptop"
ECDSA_KEY = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKRNEfE5PjrYS2B/xnWzqd3jM61/"
    "9fOaCo64itdug/MdUwwQGLqboN5JooHJsBmbTHOFBF5ZPs0yaOeKlbIkahc= root@vm"
)

CONTRACT_EXAMPLE = {
    "hostname": "ca.lab.example",
    "network": {"mode": "static", "address": "192.168.70.10/24", "gateway": "192.168.70.1", "dns": ["192.168.70.1"]},
    "ca": {
        "name": "Lab CA",
        "dns_names": ["ca.lab.example", "192.168.70.10"],
        "address": ":443",
        "provisioner": "admin@lab.example",
        "password": None,
        "ssh": True,
    },
    "admin": {"ssh_authorized_keys": [ED25519_KEY]},
}


@pytest.fixture
def defaults():
    return load_defaults()


def with_ca(**ca):
    return {"ca": ca}


def static(**network):
    return {"network": {"mode": "static", **network}}


def ssh_keys(*keys):
    return {"admin": {"ssh_authorized_keys": list(keys)}}


def test_shipped_defaults_validate_to_a_complete_configuration(defaults):
    result = validate({}, defaults)
    assert result == {
        "hostname": "ca.internal",
        "network": {"mode": "dhcp", "ntp": None},
        "ca": {
            "name": "Private CA",
            "dns_names": ["ca.internal"],
            "address": ":443",
            "provisioner": "admin@ca.internal",
            "password": None,
            "ssh": True,
            "key_type": "EC-P256",
            "root_key": "keep",
            "root_years": 10,
            "intermediate_years": 5,
            "name_constraints": {"dns": [], "ip": []},
            "claims": {"acme": {"default": "744h", "max": "4320h"}, "jwk": {"default": "744h", "max": "8760h"}},
            "x5c_roots": None,
            "database": {"type": "badger"},
        },
        "join": None,
        "admin": {"user": "admin", "ssh_authorized_keys": []},
    }


def test_contract_example_is_accepted_and_merged_over_the_defaults(defaults):
    result = validate(CONTRACT_EXAMPLE, defaults)
    assert result["hostname"] == "ca.lab.example"
    assert result["network"] == {**CONTRACT_EXAMPLE["network"], "ntp": None}   # defaults.yaml: the pool
    assert result["ca"]["name"] == "Lab CA"
    assert result["ca"]["dns_names"] == ["ca.lab.example", "192.168.70.10"]
    assert result["ca"]["key_type"] == "EC-P256"  # from the defaults
    assert result["admin"]["ssh_authorized_keys"] == [ED25519_KEY]


def test_validate_returns_a_new_dict_and_leaves_its_inputs_alone(defaults):
    raw = {"ca": {"dns_names": ["a.example"]}}
    before = repr(defaults)
    result = validate(raw, defaults)
    result["ca"]["dns_names"].append("b.example")
    assert repr(defaults) == before
    assert raw == {"ca": {"dns_names": ["a.example"]}}


def test_empty_dns_names_default_to_the_hostname(defaults):
    assert validate({"hostname": "pki.corp.example"}, defaults)["ca"]["dns_names"] == ["pki.corp.example"]


@pytest.mark.parametrize("raw, key, hint", [
    ({"ca": {"nmae": "Lab CA"}}, "ca.nmae", "did you mean ca.name?"),
    ({"comment": "made by hand"}, "comment", "known keys here: hostname, network, ca, join, restore, admin"),
    ({"ca": {"claims": {"acme": {"maximum": "24h"}}}}, "ca.claims.acme.maximum", "did you mean ca.claims.acme.max?"),
    ({"network": {"mode": "static", "gw": "10.0.0.1"}}, "network.gw", "known keys here"),
])
def test_unknown_keys_are_refused_with_the_closest_known_one(defaults, raw, key, hint):
    # Before: `ca: {nmae: x}` was ignored and the CA was silently named "Private CA".
    with pytest.raises(AnswersError) as caught:
        validate(raw, defaults)
    assert caught.value.key == key
    assert "is an unknown key" in str(caught.value) and hint in str(caught.value)


def test_a_mistyped_password_key_is_refused_without_showing_its_value(defaults):
    with pytest.raises(AnswersError) as caught:
        validate({"ca": {"pasword": "the real secret value"}}, defaults)
    assert "did you mean ca.password?" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_known_keys_are_the_schemas(defaults):
    # The contract with every answers key: schema.yaml lists it (test_answers_schema checks the rest).
    validate({"restore": {"archive": "a"}}, defaults)
    with pytest.raises(AnswersError, match="did you mean ca.password"):
        validate({"ca": {"passwrod": "x"}}, defaults)
    # a key only defaults.yaml has is refused, not silently dropped by validate()
    extended = {**defaults, "ca": {**defaults["ca"], "telemetry": None}}
    with pytest.raises(AnswersError, match="ca.telemetry: <not shown> is an unknown key"):
        validate({}, extended)
    assert set(answers.known_keys()["ca"]) >= {"name", "password", "claims", "name_constraints"}
    assert set(answers.known_keys()["network"]) == {"mode", "address", "gateway", "dns", "ntp"}


@pytest.mark.parametrize("raw, key", [
    ({"hostname": "ca\n.lab.example"}, "hostname"),
    ({"hostname": "ca.lab.example\n"}, "hostname"),
    ({"ca": {"name": "Lab \x1b[2J\x1b[31mCA"}}, "ca.name"),
    ({"ca": {"name": "Lab\u202eCA"}}, "ca.name"),
    ({"ca": {"provisioner": "admin\n@lab.example"}}, "ca.provisioner"),
    ({"ca": {"dns_names": ["ca.lab.example", "x\n.lab.example"]}}, "ca.dns_names"),
    ({"admin": {"ssh_authorized_keys": [ED25519_KEY + " \x1b[31m"]}}, "admin.ssh_authorized_keys"),
])
def test_control_characters_are_refused_in_every_string(defaults, raw, key):
    with pytest.raises(AnswersError) as caught:
        validate(raw, defaults)
    assert caught.value.key == key
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


@pytest.mark.parametrize("check, bad", [
    (answers.check_fqdn, "ca\n.lab.example"),
    (answers.check_email, "admin\n@lab.example"),
    (answers.check_dns_names, ["ca\n.lab.example"]),
])
def test_validators_match_the_whole_value(check, bad):
    with pytest.raises(AnswersError):
        check(bad)


@pytest.mark.parametrize("claims, key, allowed", [
    ({"acme": {"default": "2562048h", "max": "2562048h"}}, "ca.claims.acme.default", "at most 2562047h"),
    ({"jwk": {"max": "99999999999999999999h"}}, "ca.claims.jwk.max", "at most 2562047h"),
    ({"acme": {"default": "720h", "max": "24h"}}, "ca.claims.acme.default", "must not be longer than"),
])
def test_durations_are_bounded_and_max_is_at_least_default(defaults, claims, key, allowed):
    with pytest.raises(AnswersError) as caught:
        validate({"ca": {"claims": claims}}, defaults)
    assert caught.value.key == key and allowed in str(caught.value)


@pytest.mark.parametrize("raw, key, allowed", [
    ({"ca": {"address": ":22"}}, "ca.address", "port 22"),
    ({"ca": {"address": "0.0.0.0:22"}}, "ca.address", "port 22"),
    ({"ca": {"address": "[fe80::1%eth0]:443"}}, "ca.address", "zone id"),
    ({"ca": {"dns_names": ["fe80::1%eth0"]}}, "ca.dns_names", "zone id"),
    ({"ca": {"name_constraints": {"ip": ["fe80::%eth0/64"]}}}, "ca.name_constraints.ip", "zone id"),
])
def test_ssh_port_and_ipv6_zone_ids_are_refused(defaults, raw, key, allowed):
    with pytest.raises(AnswersError) as caught:
        validate(raw, defaults)
    assert caught.value.key == key and allowed in str(caught.value)


@pytest.mark.parametrize("password, problem", [
    ("fifteen chars!!", "at least 16 characters"),
    (" sixteen and more characters", "begin or end with a space"),
    ("sixteen and more characters ", "begin or end with a space"),
    ("sixteen and more\ncharacters", "control characters"),
])
def test_typed_passwords_are_long_and_not_space_padded(defaults, password, problem):
    with pytest.raises(AnswersError) as caught:
        validate(with_ca(password=password), defaults)
    assert caught.value.key == "ca.password" and problem in str(caught.value)
    assert "<hidden>" in str(caught.value)
    assert "chars" not in str(caught.value).replace("characters", "") and "sixteen" not in str(caught.value)


def test_top_level_null_means_the_default(defaults):
    assert validate({"network": None, "ca": None}, defaults)["network"] == {"mode": "dhcp", "ntp": None}


def test_values_are_normalized(defaults):
    result = validate(
        {
            "hostname": "CA.Lab.Example.",
            "network": {"mode": "static", "address": "10.0.0.5/8", "gateway": "10.0.0.1", "dns": "10.0.0.1, 1.1.1.1"},
            "ca": {"dns_names": "CA.lab.example, 10.0.0.5, ca.lab.example", "address": 8443, "ssh": "no"},
            "admin": {"ssh_authorized_keys": ECDSA_KEY},
        },
        defaults,
    )
    assert result["hostname"] == "ca.lab.example"
    assert result["network"]["dns"] == ["10.0.0.1", "1.1.1.1"]
    assert result["ca"]["dns_names"] == ["ca.lab.example", "10.0.0.5"]
    assert result["ca"]["address"] == ":8443"
    assert result["ca"]["ssh"] is False
    assert result["admin"]["ssh_authorized_keys"] == [ECDSA_KEY]


@pytest.mark.parametrize(
    "raw, key, value, allowed",
    [
        ({"hostname": "bad_host.example"}, "hostname", "bad_host.example", "fully qualified domain name"),
        ({"hostname": "ca"}, "hostname", "ca", "fully qualified domain name"),
        ({"hostname": "-ca.example"}, "hostname", "-ca.example", "fully qualified domain name"),
        ({"hostname": "ca." + "x" * 64 + ".example"}, "hostname", "ca." + "x" * 64 + ".example", "fully qualified"),
        ({"hostname": "192.168.1.10"}, "hostname", "192.168.1.10", "fully qualified domain name"),
        ({"network": {"mode": "bridge"}}, "network.mode", "bridge", "dhcp, static"),
        ({"network": {"mode": "static", "address": "192.168.70.10"}}, "network.address", "192.168.70.10", "prefix"),
        (static(address="192.168.70.0/24"), "network.address", "192.168.70.0/24", "broadcast"),
        ({"network": {"mode": "static", "address": "300.1.1.1/24"}}, "network.address", "300.1.1.1/24", "IPv4"),
        (
            {"network": {"mode": "static", "address": "192.168.70.10/24", "gateway": "10.0.0.1", "dns": ["1.1.1.1"]}},
            "network.gateway",
            "10.0.0.1",
            "inside 192.168.70.0/24",
        ),
        (
            {"network": {"mode": "static", "address": "192.168.70.10/24", "gateway": "192.168.70.1", "dns": []}},
            "network.dns",
            [],
            "at least one",
        ),
        (
            {"network": {"mode": "static", "address": "192.168.70.10/24", "gateway": "192.168.70.1", "dns": ["dns1"]}},
            "network.dns",
            "dns1",
            "IPv4 address",
        ),
        (with_ca(name=""), "ca.name", "", "PKI name"),
        (with_ca(name="x" * 49), "ca.name", "x" * 49, "1-48"),
        (with_ca(dns_names=["ok.example", "not valid"]), "ca.dns_names", "not valid", "neither a DNS name nor an IP"),
        (with_ca(address=":70000"), "ca.address", ":70000", "port 1-65535"),
        (with_ca(address=":0"), "ca.address", ":0", "port 1-65535"),
        (with_ca(address="localhost:443"), "ca.address", "localhost:443", "IP:PORT"),
        (with_ca(address=True), "ca.address", True, "listen address"),
        (with_ca(provisioner="admin"), "ca.provisioner", "admin", "email address"),
        (with_ca(provisioner="admin@"), "ca.provisioner", "admin@", "email address"),
        (with_ca(provisioner="ad min@lab.example"), "ca.provisioner", "ad min@lab.example", "email address"),
        (with_ca(ssh="maybe"), "ca.ssh", "maybe", "true or false"),
        (with_ca(key_type="DSA-1024"), "ca.key_type", "DSA-1024", "EC-P256, EC-P384, RSA-3072, RSA-4096"),
        (with_ca(root_key="lost"), "ca.root_key", "lost", "keep, offline"),
        (with_ca(root_years=0), "ca.root_years", 0, "1 to 50"),
        (with_ca(root_years="ten"), "ca.root_years", "ten", "whole number"),
        (with_ca(root_years=5, intermediate_years=6), "ca.intermediate_years", 6, "1 to 5"),
        (with_ca(name_constraints={"dns": ["bad name"]}), "ca.name_constraints.dns", "bad name", "DNS domain"),
        (with_ca(name_constraints={"ip": ["10.0.0.1/8"]}), "ca.name_constraints.ip", "10.0.0.1/8", "IP network"),
        (with_ca(claims={"acme": {"default": "31 days"}}), "ca.claims.acme.default", "31 days", "Go duration"),
        (with_ca(claims={"jwk": {"max": "0h"}}), "ca.claims.jwk.max", "0h", "greater than zero"),
        (
            with_ca(claims={"acme": {"default": "5000h", "max": "4320h"}}),
            "ca.claims.acme.default",
            "5000h",
            "not be longer than ca.claims.acme.max (4320h)",
        ),
        (ssh_keys("ssh-ed25519 AAAA"), "admin.ssh_authorized_keys", "ssh-ed25519 AAAA", "type"),
        (ssh_keys("not a key"), "admin.ssh_authorized_keys", "not a key", "OpenSSH public key"),
        (
            # Valid base64 of an ed25519 key, labelled as RSA.
            ssh_keys("ssh-rsa " + ED25519_KEY.split()[1]),
            "admin.ssh_authorized_keys",
            "ssh-rsa " + ED25519_KEY.split()[1],
            "does not match its type",
        ),
        # a section's non-mapping value is shown by its type only (it may be a DSN or a password)
        ({"ca": ["not", "a", "mapping"]}, "ca", "<list>", "mapping"),
    ],
)
def test_bad_value_is_reported_with_key_value_and_what_is_allowed(defaults, raw, key, value, allowed):
    with pytest.raises(AnswersError) as caught:
        validate(raw, defaults)
    assert caught.value.key == key
    shown = value if isinstance(value, str) and value.startswith("<") else repr(value)
    assert str(caught.value).startswith(f"answers error: {key}: {shown} ")
    assert allowed in caught.value.message
    assert "\n" not in str(caught.value)


def test_bad_password_is_reported_without_echoing_it(defaults):
    with pytest.raises(AnswersError) as caught:
        validate(with_ca(password="short"), defaults)
    assert caught.value.key == "ca.password"
    assert "short" not in str(caught.value)
    assert f"at least {answers.MIN_PASSWORD} characters" in str(caught.value)


def test_given_password_is_kept_and_empty_means_generate(defaults):
    assert validate(with_ca(password="correct horse battery"), defaults)["ca"]["password"] == "correct horse battery"
    assert validate(with_ca(password=""), defaults)["ca"]["password"] is None


def test_answers_that_are_not_a_mapping_are_refused(defaults):
    with pytest.raises(AnswersError) as caught:
        validate(["hostname"], defaults)
    assert caught.value.key == "(answers)"


@pytest.mark.parametrize(
    "check, good, normalized",
    [
        (answers.check_fqdn, "Ca.Lab.Example", "ca.lab.example"),
        (answers.check_listen_address, "443", ":443"),
        (answers.check_listen_address, "0.0.0.0:8443", "0.0.0.0:8443"),
        (answers.check_listen_address, "[::]:443", "[::]:443"),
        (answers.check_email, "Admin@Lab.Example", "Admin@lab.example"),
        (answers.check_dns_names, ["ca.lab.example", "::1"], ["ca.lab.example", "::1"]),
        (answers.check_ipv4_cidr, " 192.168.70.10/24 ", "192.168.70.10/24"),
        (answers.check_ssh_key, "  " + ED25519_KEY + " ", ED25519_KEY),
    ],
)
def test_field_validators_return_normalized_values(check, good, normalized):
    assert check(good) == normalized


@pytest.mark.parametrize(
    "check, bad, key",
    [
        (answers.check_fqdn, "no_underscores.example", "hostname"),
        (answers.check_listen_address, ":70000", "ca.address"),
        (answers.check_email, "nobody", "ca.provisioner"),
        (answers.check_dns_names, "a b", "ca.dns_names"),
        (answers.check_ipv4_cidr, "192.168.70.10/33", "network.address"),
        (answers.check_ssh_key, "ssh-dss AAAAB3NzaC1kc3M=", "admin.ssh_authorized_keys"),
    ],
)
def test_field_validators_raise_answers_error_naming_their_key(check, bad, key):
    with pytest.raises(AnswersError) as caught:
        check(bad)
    assert caught.value.key == key
    assert repr(bad) in str(caught.value)


def test_defaults_under_a_prefix_win_over_the_packaged_ones(tmp_path):
    shipped = tmp_path / "usr/lib/ca-appliance/defaults.yaml"
    shipped.parent.mkdir(parents=True)
    shipped.write_text("hostname: built.example\nca: {name: Built CA}\n")
    assert load_defaults(tmp_path) == {"hostname": "built.example", "ca": {"name": "Built CA"}}
    assert load_defaults(tmp_path / "empty-prefix")["ca"]["name"] == "Private CA"


def test_admin_user_comes_from_the_image_defaults_and_is_checked(defaults):
    assert validate({}, {**defaults, "admin": {"user": "ops", "ssh_authorized_keys": []}})["admin"]["user"] == "ops"
    with pytest.raises(AnswersError, match=r"admin\.user: 'Root User' is not a Linux user name"):
        validate({"admin": {"user": "Root User"}}, defaults)
