"""The configuration: defaults, deep merge, and one clear line for every kind of bad value."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from image.config import ConfigError, deep_merge, leaf_keys, load_config
from image.errors import UserError
from image.stepca_version import assess_version

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_appliance_is_a_production_fedora_qcow2_that_fits_its_first_boot():
    """What `make build` promises (README): the Fedora qcow2, with step-ca releases that are not test
    images, and the memory the installer and first boot need."""
    cfg = load_config()
    assert (cfg.image.base, list(cfg.image.formats)) == ("fedora", ["qcow2"])
    assert assess_version(cfg.artifacts.step_ca.version).test_only is False
    assert cfg.image.memory_mb >= 1024 and cfg.firstboot.mode == "interactive"


def test_user_file_is_deep_merged_over_the_defaults(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("image: {base: debian, memory_mb: 2048}\nca: {claims: {acme: {default: 24h}}}\n")
    cfg = load_config(f)
    assert cfg.image.base == "debian" and cfg.image.memory_mb == 2048
    assert cfg.image.cpus == 2  # untouched siblings survive the merge
    assert cfg.ca.claims.acme.default == "24h" and cfg.ca.claims.acme.max == "4320h"


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.image.memory_mb = 1
    assert cfg.image.formats == ("qcow2",)  # lists become tuples


def test_digest_changes_with_content_only():
    assert load_config().digest() == load_config().digest()
    assert load_config().digest() != load_config(overrides={"image": {"cpus": 4}}).digest()


def test_deep_merge_replaces_lists_and_scalars():
    assert deep_merge({"a": {"b": [1], "c": 1}}, {"a": {"b": [2]}}) == {"a": {"b": [2], "c": 1}}


BAD_VALUES = [
    ({"image": {"memory_mb": "lots"}},
     "config error: image.memory_mb: 'lots' is not an integer (MiB, 1024 to 1048576)"),
    ({"image": {"memory_mb": 512}}, "image.memory_mb: 512 is not an integer (MiB, 1024"),
    ({"image": {"base": "ubuntu"}}, "image.base: 'ubuntu' is not one of: fedora, debian"),
    ({"image": {"formats": ["iso"]}}, "image.formats: ['iso'] is not a non-empty list of: qcow2, raw, vmdk, vhdx, ova"),
    ({"image": {"formats": []}}, "image.formats: [] is not a non-empty list"),
    ({"image": {"name": "my appliance"}}, "image.name: 'my appliance' is not a file-name-safe name"),
    ({"image": {"cpus": True}}, "image.cpus: True is not an integer"),
    ({"fedora": {"mirror": "ftp://x"}}, "fedora.mirror: 'ftp://x' is not an http(s):// or file:// URL"),
    ({"fedora": {"release": 12}}, "fedora.release: 12 is not an integer (40 to 99)"),
    ({"artifacts": {"step_ca": {"sha256": "abc"}}}, "artifacts.step_ca.sha256: 'abc' is not a SHA-256 digest"),
    ({"artifacts": {"step_ca": {"path": "/nonexistent/step-ca"}}},
     "artifacts.step_ca.path: '/nonexistent/step-ca' is not an existing file"),
    ({"artifacts": {"step_cli": {"enabled": "yes"}}}, "artifacts.step_cli.enabled: 'yes' is not a boolean"),
    ({"artifacts": {"step_ca": {"version": "latest"}}}, "artifacts.step_ca.version: 'latest' is not a release version"),
    ({"ca": {"address": ":70000"}}, "ca.address: ':70000' is not a listen address"),
    ({"ca": {"provisioner": "admin"}}, "ca.provisioner: 'admin' is not an email address"),
    ({"ca": {"key_type": "DSA"}}, "ca.key_type: 'DSA' is not one of: EC-P256, EC-P384, RSA-3072, RSA-4096"),
    ({"ca": {"dns_names": ["ok.example", "bad_name!"]}}, "ca.dns_names: ['ok.example', 'bad_name!'] is not a list"),
    ({"ca": {"name_constraints": {"ip": ["10.0.0.1/8"]}}},
     "ca.name_constraints.ip: ['10.0.0.1/8'] is not a list of IP"),
    ({"ca": {"claims": {"jwk": {"max": "1y"}}}}, "ca.claims.jwk.max: '1y' is not a duration in hours"),
    ({"ca": {"claims": {"acme": {"default": "5000h"}}}}, "ca.claims.acme.default: '5000h' is longer than"),
    ({"admin": {"ssh_authorized_keys": ["hunter2"]}}, "admin.ssh_authorized_keys: ['hunter2'] is not a list of SSH"),
    # a plaintext password given as the hash is never echoed (admin.password_hash is secret)
    ({"admin": {"password_hash": "hunter2"}}, "admin.password_hash: <hidden> is not a crypt(3) hash"),
    ({"admin": {"user": "Root User"}}, "admin.user: 'Root User' is not a Linux user name"),
    ({"firstboot": {"mode": "unattended"}}, "firstboot.answers: None is required when firstboot.mode is unattended"),
    # unknown keys are named, never their values; a section's non-mapping by its type only
    ({"image": {"memroy_mb": 4096}}, "image.memroy_mb: <not shown> is an unknown key (did you mean 'memory_mb'?)"),
    ({"imgae": {}}, "imgae: <not shown> is an unknown key (did you mean 'image'?)"),
    ({"image": "big"}, "image: <str> is not a mapping of keys"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[m.split(":")[0 if not m.startswith("config") else 1]
                                                                 .strip() for _, m in BAD_VALUES])
def test_each_bad_value_is_one_line_naming_key_value_and_rule(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override)
    text = str(err.value)
    assert text.startswith("config error: ") and message in text and "\n" not in text
    assert err.value.exit_code == 2


def test_good_values_are_normalized():
    cfg = load_config(overrides={"ca": {"dns_names": ["CA.Lab.Example", "192.168.70.10"],
                                        "name_constraints": {"dns": ["lab.example"], "ip": ["192.168.70.0/24"]}},
                                 "artifacts": {"step_ca": {"sha256": "AB" * 32}}})
    assert cfg.ca.dns_names == ("ca.lab.example", "192.168.70.10")
    assert cfg.artifacts.step_ca.sha256 == "ab" * 32


@pytest.mark.parametrize(("content", "message"), [
    ("image: [unclosed", "is not valid YAML"),
    ("- just\n- a list\n", "is not a YAML mapping of sections"),
])
def test_unreadable_user_files_are_user_errors(tmp_path, content, message):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_config(f)


def test_missing_user_file_is_named():
    with pytest.raises(UserError, match=r"--config: '/nope.yaml' does not exist"):
        load_config("/nope.yaml")


def test_cli_reports_bad_config_in_one_line_with_exit_2(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("image:\n  memory_mb: lots\n")
    proc = subprocess.run([sys.executable, "-m", "invoke", "render", "--config", str(f), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: config error: image.memory_mb: 'lots' is not an integer "
                                   "(MiB, 1024 to 1048576)")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_configuration_reference_lists_every_key_with_its_default():
    """docs/configuration.md stays in step with appliance.yaml."""
    readme = (ROOT / "docs/configuration.md").read_text()
    cfg = load_config().to_dict()
    for key in leaf_keys():
        value = cfg
        for part in key.split("."):
            value = value[part]
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, f"docs/configuration.md has no reference row for {key}"
        shown = textwrap.shorten(str(value), 200)
        default = "null" if value is None else ("[" + ", ".join(map(str, value)) + "]" if isinstance(value, list)
                                                else str(value).lower() if isinstance(value, bool) else shown)
        assert f"`{default}`" in row, f"docs/configuration.md row for {key} lacks the default `{default}`: {row}"


@pytest.mark.parametrize("text, why", [
    ("image: &base {name: a}\nova: *base\n", "anchors and aliases (& and *) are not allowed"),
    ("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "anchors and aliases (& and *) are not allowed"),  # a bomb
    ("image:\n  name: first\n  name: second\n", "at line 3, column 3 (a key appears twice in this mapping)"),
])
def test_build_config_refuses_aliases_and_duplicate_keys(tmp_path, text, why):
    user = tmp_path / "user.yaml"
    user.write_text(text)
    with pytest.raises(UserError) as caught:
        load_config(user)
    assert why in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2
