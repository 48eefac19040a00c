"""The `step` CLI the image carries, used on the booted appliance as the README and the client
page tell people to: bootstrap with the fingerprint, a JWK certificate (the appliance's own JWE of
the provisioner key opened by the real `step`), renew, revoke, SSH user and host certificates;
then the revoked certificate is refused by `openssl verify -crl_check` with the CRL fetched from
the URL every leaf names (the appliance's plain-HTTP port 80), and a good one is accepted."""
import shlex
import subprocess
import urllib.request
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

WORK = "/home/{user}/step-verify"


@pytest.fixture(scope="module")
def guest_step(target, status_fingerprint):
    """run(args) -> the image's /usr/bin/step in the guest, bootstrapped to its own CA as the admin."""
    if not target.password:
        pytest.skip("the answers let the appliance generate its CA password, so the JWK key cannot be opened")
    if not target.host().file("/usr/bin/step").exists:
        pytest.fail("the image has no /usr/bin/step (artifacts.step_cli.enabled is true in CI's build)")
    work = WORK.format(user=target.user)

    def host_now():   # the testinfra host of the running boot (a reboot in another module renews it)
        return target.host()

    host = host_now()
    name = target.ca_name
    if not name.replace(".", "").isdigit() and ":" not in name:   # the guest resolves its CA's name to itself
        host.run(f"grep -q ' {name}$' /etc/hosts || echo '127.0.0.1 {name}' >> /etc/hosts")
    host.run(f"rm -rf {work} && install -d -m 700 -o {target.user} {work}")
    sftp = host.backend.client.open_sftp()
    try:
        with sftp.open(f"{work}/password", "w") as handle:   # over SSH: never on a command line
            handle.write(target.password)
        sftp.chmod(f"{work}/password", 0o600)
    finally:
        sftp.close()
    port = target.guest_ca_port
    url = f"https://{name}" + ("" if port == 443 else f":{port}")

    def run(*args, check=True):
        line = " ".join(shlex.quote(str(a)) for a in args)
        result = host_now().run(f"cd {work} && sudo -u {target.user} env STEPPATH={work}/step HOME={work} step {line}")
        if check:
            assert result.rc == 0, f"step {line}: {result.stdout}{result.stderr}"
        return result

    run.work, run.url = work, url
    run.provisioner = target.answers["ca"]["provisioner"]
    run("ca", "bootstrap", "--ca-url", url, "--fingerprint", status_fingerprint)
    return run


def fetch_back(host, path, into):
    sftp = host.backend.client.open_sftp()
    try:
        sftp.get(path, str(into))
    finally:
        sftp.close()
    return into


def test_the_image_carries_the_pinned_step_cli(host):
    from image.config import load_config
    assert host.check_output("step version").startswith(f"Smallstep CLI/{load_config().artifacts.step_cli.version} ")


def test_step_ca_health_after_bootstrap(guest_step):
    assert guest_step("ca", "health").stdout.strip() == "ok"


def test_jwk_certificate_renew_revoke_and_the_crl_on_port_80(guest_step, host, target, root_pem):
    work = guest_step.work
    for leaf in ("good", "bad"):
        guest_step("ca", "certificate", f"{leaf}.step.verify.test", f"{leaf}.crt", f"{leaf}.key",
                   "--provisioner", guest_step.provisioner, "--provisioner-password-file", "password")
    before = host.check_output(f"openssl x509 -in {work}/good.crt -noout -serial")
    guest_step("ca", "renew", "--force", "good.crt", "good.key")
    assert host.check_output(f"openssl x509 -in {work}/good.crt -noout -serial") != before
    guest_step("ca", "revoke", "--cert", "bad.crt", "--key", "bad.key")
    assert guest_step("ca", "renew", "--force", "bad.crt", "bad.key", check=False).rc != 0

    local = target.vm.workdir / "step-cli"
    local.mkdir(exist_ok=True)
    good, bad = (fetch_back(host, f"{work}/{n}.crt", local / f"{n}.crt") for n in ("good", "bad"))
    leaf = x509.load_pem_x509_certificate(good.read_bytes())
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = urlsplit(points[0].full_name[0].value)
    assert (url.scheme, url.hostname, url.port, url.path) == ("http", target.ca_name, None, "/crl")
    if "page" not in target.vm.ports:
        pytest.skip("the image was built with page.enabled: false: the CRL is on step-ca's port")
    with urllib.request.urlopen(f"http://127.0.0.1:{target.vm.ports['page']}{url.path}", timeout=30) as response:
        assert response.headers["Content-Type"] == "application/pkix-crl"
        crl = x509.load_der_x509_crl(response.read())
    (local / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    (local / "intermediate.pem").write_bytes(good.read_bytes().split(b"-----END CERTIFICATE-----\n", 1)[1])

    def crl_check(cert):
        return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(root_pem), "-untrusted",
                               str(local / "intermediate.pem"), "-CRLfile", str(local / "crl.pem"), str(cert)],
                              capture_output=True, text=True)

    refused = crl_check(bad)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    accepted = crl_check(good)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr

    # the whole chain: the intermediate names the root's CRL, which the page serves too
    intermediate = x509.load_pem_x509_certificate((local / "intermediate.pem").read_bytes())
    points = intermediate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    root_url = urlsplit(points[0].full_name[0].value)
    assert (root_url.hostname, root_url.path) == (target.ca_name, "/root.crl")
    with urllib.request.urlopen(f"http://127.0.0.1:{target.vm.ports['page']}{root_url.path}", timeout=30) as response:
        root_crl = x509.load_der_x509_crl(response.read())
    (local / "root-crl.pem").write_bytes(root_crl.public_bytes(Encoding.PEM))
    whole = subprocess.run(["openssl", "verify", "-crl_check_all", "-CAfile", str(root_pem), "-untrusted",
                            str(local / "intermediate.pem"), "-CRLfile", str(local / "crl.pem"),
                            "-CRLfile", str(local / "root-crl.pem"), str(good)], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stdout + whole.stderr


def test_ssh_user_and_host_certificates(guest_step, host, target):
    if not target.answers["ca"].get("ssh", True):
        pytest.skip("ca.ssh is off in these answers: no SSH CA")
    work = guest_step.work
    host.run(f"sudo -u {target.user} ssh-keygen -q -t ed25519 -N '' -f {work}/id")
    guest_step("ssh", "certificate", "alice", "id.pub", "--sign", "--principal", "alice", "--no-agent",
               "--provisioner", guest_step.provisioner, "--provisioner-password-file", "password")
    assert "user certificate" in host.check_output(f"ssh-keygen -L -f {work}/id-cert.pub")
    host.run(f"sudo -u {target.user} ssh-keygen -q -t ed25519 -N '' -f {work}/hostkey")
    guest_step("ssh", "certificate", target.hostname, "hostkey.pub", "--host", "--sign",
               "--provisioner", guest_step.provisioner, "--provisioner-password-file", "password")
    shown = host.check_output(f"ssh-keygen -L -f {work}/hostkey-cert.pub")
    assert "host certificate" in shown and target.hostname in shown


def test_x5c_is_not_offered_without_operator_roots(guest_step, target):
    """verify holds no client key of an operator's root, so the X5C flow itself runs on loopback
    (tests/integration/test_step_cli_crl_policy.py); here: no X5C provisioner unless configured."""
    names = guest_step("ca", "provisioner", "list").stdout
    assert ('"type": "X5C"' in names) is bool(target.answers["ca"].get("x5c_roots"))
