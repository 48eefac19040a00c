"""Day two, the pieces that need no step-ca: OS update configuration per base and its switch,
the CRL every CA gets, the stale-file check behind restart-if-stale,
the watch's expiry levels and the overlay's watch units."""
import configparser
import datetime
import json
from pathlib import Path

import pytest
from ca_appliance import cajson, pki, stepca, updates, watch
from ca_appliance.layout import Layout

from image import payload
from image.bases import debian
from image.bases.fedora import kickstart
from image.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
GUEST_LIB = ROOT / "overlay/usr/lib/ca-appliance"


def cfg(base, security=True):
    return load_config(overrides={"image": {"base": base}, "updates": {"security": security}})


def test_security_updates_are_on_by_default():
    assert load_config().updates.security is True


def test_updates_security_must_be_a_boolean():
    with pytest.raises(ConfigError) as error:
        load_config(overrides={"updates": {"security": "sometimes"}})
    assert "updates.security" in str(error.value)


def test_debian_gets_unattended_upgrades_for_the_security_archive_only():
    files = payload.generated_files(cfg("debian"))
    periodic = files["etc/apt/apt.conf.d/20auto-upgrades"][0].decode()
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    origins = files["etc/apt/apt.conf.d/52ca-appliance-security-only"][0].decode()
    assert "#clear Unattended-Upgrade::Origins-Pattern;" in origins  # Debian's default also takes point releases
    patterns = [line.strip() for line in origins.splitlines() if line.strip().startswith('"origin=')]
    assert patterns == ['"origin=Debian,codename=${distro_codename}-security,label=Debian-Security";']
    dropin = files["etc/systemd/system/apt-daily-upgrade.service.d/ca-appliance.conf"][0].decode()
    assert "ExecStartPost=-/usr/bin/ca-appliance restart-if-stale" in dropin
    include = next(c for c in debian.mmdebstrap_command(cfg("debian"), Path("/r"), [], Path("/u"))
                   if c.startswith("--include="))
    assert "unattended-upgrades" in include.split("=", 1)[1].split(",")
    assert not any(path.startswith("etc/dnf/") for path in files)


def test_fedora_gets_dnf5_automatic_for_security_updates_only():
    config = cfg("fedora")
    files = payload.generated_files(config)
    automatic = configparser.ConfigParser()
    automatic.read_string(files["etc/dnf/automatic.conf"][0].decode())
    assert automatic["commands"]["upgrade_type"] == "security"
    assert automatic["commands"]["apply_updates"] == "yes"
    assert automatic["commands"]["reboot"] == "never"
    assert "restart-if-stale" in files["etc/systemd/system/dnf5-automatic.service.d/ca-appliance.conf"][0].decode()
    context = kickstart.kickstart_context(config, [])
    assert "dnf5-plugin-automatic" in context["packages"]
    assert "dnf5-automatic.timer" in payload.provision_input(config)["extra_units"]


@pytest.mark.parametrize("base", ["debian", "fedora"])
def test_updates_security_false_leaves_them_out(base):
    config = cfg(base, security=False)
    files = payload.generated_files(config)
    assert not any(path.startswith(("etc/apt/", "etc/dnf/")) or "service.d" in path for path in files)
    if base == "debian":
        include = next(c for c in debian.mmdebstrap_command(config, Path("/r"), [], Path("/u"))
                       if c.startswith("--include="))
        assert "unattended-upgrades" not in include
    else:
        context = kickstart.kickstart_context(config, [])
        assert "dnf5-plugin-automatic" not in context["packages"]
    assert payload.provision_input(config)["extra_units"] == []


@pytest.mark.parametrize("page, url", [(True, "http://ca.lab.example/crl"), (False, "https://ca.lab.example/crl")])
def test_every_ca_has_a_crl_and_every_leaf_names_it(page, url, tmp_path):
    """0.30 serves a CRL for every CA; the page's plain-HTTP port 80 when it is on, else step-ca's port."""
    (tmp_path / "usr/lib/ca-appliance").mkdir(parents=True)
    (tmp_path / "usr/lib/ca-appliance/build.json").write_text(json.dumps({"client_page": page}))
    ca = {"name": "Unit CA", "dns_names": ["ca.lab.example"], "address": ":443", "provisioner": "a@b.example",
          "ssh": False, "claims": {"acme": {"default": "1h", "max": "2h"}, "jwk": {"default": "1h", "max": "2h"}}}
    config = cajson.ca_json(ca, Layout(tmp_path), b"PEM", {}, "")
    assert config["crl"]["enabled"] is True and config["crl"]["generateOnRevoke"] is True
    for provisioner in config["authority"]["provisioners"]:
        assert f'"crlDistributionPoints": ["{url}"]' in provisioner["options"]["x509"]["template"]


def test_local_endpoint_of_listen_addresses():
    assert stepca.local_endpoint(":443") == ("127.0.0.1", 443)
    assert stepca.local_endpoint("0.0.0.0:8443") == ("127.0.0.1", 8443)
    assert stepca.local_endpoint("[::]:443") == ("::1", 443)
    assert stepca.local_endpoint("192.168.70.10:443") == ("192.168.70.10", 443)


def test_stale_files_are_the_replaced_ones_a_process_maps(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42/maps").write_text(
        "55d0-55d1 r--p 00000000 fd:00 1 /usr/bin/step-ca\n"
        "7f00-7f01 r-xp 00000000 fd:00 2 /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)\n"
        "7f01-7f02 r-xp 00000000 fd:00 2 /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)\n"
        "7f02-7f03 rw-s 00000000 00:01 3 /memfd:doublemapper (deleted)\n"
        "7f03-7f04 rw-p 00000000 00:00 0 \n"
        "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n")
    assert updates.stale_files(42, proc=tmp_path) == ["/usr/lib/x86_64-linux-gnu/libc.so.6"]
    assert updates.stale_files(43, proc=tmp_path) == []


def _cert(days_left, now):
    key = pki.generate_key("EC-P256")
    name = pki.x509.Name([pki.x509.NameAttribute(pki.NameOID.COMMON_NAME, "t")])
    return (pki.x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1000))
            .not_valid_after(now + datetime.timedelta(days=days_left, hours=1))
            .sign(key, pki.hashes.SHA256()))


@pytest.mark.parametrize("root_days, intermediate_days, expected", [
    (3000, 1500, watch.OK), (3000, 89, watch.WARNING), (3000, 90, watch.OK), (364, 300, watch.WARNING),
    (365, 300, watch.OK), (3000, -1, watch.CRITICAL), (-2, -2, watch.CRITICAL)])
def test_expiry_levels(root_days, intermediate_days, expected):
    now = datetime.datetime.now(datetime.UTC)
    found = watch.expiry_findings(_cert(root_days, now), _cert(intermediate_days, now), now)
    assert watch.level(found) == expected


def test_watch_units_run_the_launcher_daily():
    units = ROOT / "overlay/etc/systemd/system"
    service = configparser.ConfigParser(strict=False)
    service.read(units / "ca-appliance-watch.service")
    assert service["Service"]["ExecStart"] == "/usr/bin/ca-appliance watch"
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["SyslogLevelPrefix"] == "yes"
    timer = configparser.ConfigParser(strict=False)
    timer.read(units / "ca-appliance-watch.timer")
    assert timer["Timer"]["OnCalendar"] == "daily"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_the_watch_unit_may_write_every_banner_it_refreshes():
    """ProtectSystem=full leaves /etc read-only: each file banner.write() refreshes must be under
    one of the unit's ReadWritePaths, or the daily watch fails (as it did when the SSH motd came)."""
    from ca_appliance import banner
    from helpers.units import directives

    unit = directives(ROOT / "overlay/etc/systemd/system/ca-appliance-watch.service")
    assert unit[("Service", "ProtectSystem")] == ["full"]
    writable = [p.lstrip("-") for line in unit[("Service", "ReadWritePaths")] for p in line.split()]
    for written in ("/etc/issue.d/ca-appliance.issue", banner.MOTD_FILE):
        assert any(written.startswith(directory.rstrip("/") + "/") for directory in writable), written
