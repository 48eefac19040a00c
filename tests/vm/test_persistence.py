"""The appliance across a clean reboot, a kernel panic and a power cut (QEMU killed with SIGKILL mid-issuance).
These run last (file order): they restart the VM under the other checks' feet."""
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from vm_helpers import CHALLENGE_NAME, certbot_certonly, fetch_root


def fingerprint(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def test_after_a_reboot_the_ca_is_back_with_the_same_root_and_acme_account(
        target, ca_url, root_pem, certbot):
    accounts_before = sorted(p.name for p in (certbot.config_dir / "accounts").rglob("regr.json"))
    target.reboot()
    assert target.host().service("step-ca").is_running
    assert fingerprint(fetch_root(ca_url)) == fingerprint(root_pem.read_bytes())
    result = certbot_certonly(certbot, target, CHALLENGE_NAME, "--force-renewal")
    assert result.returncode == 0, result.stdout + result.stderr
    accounts_after = sorted(p.name for p in (certbot.config_dir / "accounts").rglob("regr.json"))
    assert accounts_after == accounts_before and len(accounts_after) == 1, "certbot had to register again"


def test_a_kernel_panic_reboots_the_appliance_by_itself_and_the_ca_comes_back(target, ca_url, root_pem, jwk):
    # panic=10 on the kernel command line: without it a panicked guest sits there until someone resets it
    serial = target.vm.serial_log
    seen_before = serial.read_text(errors="replace").count("Rebooting in 10 seconds")
    target.kernel_panic()
    log = serial.read_text(errors="replace")
    assert "Kernel panic - not syncing" in log
    assert log.count("Rebooting in 10 seconds") == seen_before + 1, "the kernel did not schedule its own reboot"
    assert target.host().service("step-ca").is_running
    assert fingerprint(fetch_root(ca_url)) == fingerprint(root_pem.read_bytes())
    jwk.issue("after-kernel-panic.verify.test")


def test_after_a_power_cut_during_issuance_step_ca_starts_with_a_usable_database(target, jwk, ca_url, root_pem):
    issued, stop = [], threading.Event()

    def keep_issuing():
        while not stop.is_set():
            try:
                issued.append(jwk.issue(f"load{len(issued)}.verify.test"))
            except Exception:  # noqa: BLE001 - the power is cut under it; that is the point
                return

    worker = threading.Thread(target=keep_issuing, daemon=True)
    worker.start()
    try:
        while len(issued) < 3 and worker.is_alive():
            worker.join(0.2)
        assert len(issued) >= 3, "issuance did not work before the power cut"
        target.power_cut()           # SIGKILL while the worker is mid-request
    finally:
        stop.set()
        worker.join(120)
    assert target.host().service("step-ca").is_running
    assert fingerprint(fetch_root(ca_url)) == fingerprint(root_pem.read_bytes())
    jwk.issue("after-power-cut.verify.test")
