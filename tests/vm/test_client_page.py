"""The client page as a person on the network sees it: headless Chromium loads it from the booted
appliance (guest port 80, forwarded from a loopback port), a screenshot is kept under build/, the
root is downloaded through the page's own links and checked against the fingerprint the page and
`ca-appliance status` show, and every ACME snippet carries the appliance's real ACME URL."""
import pytest

from image.vm.verify import BUILD_DIR
from tests.helpers.clientpage import browser_load, check_page, chromium, fetch

SCREENSHOT = BUILD_DIR / "client-page-appliance.png"


@pytest.fixture(scope="module")
def page_base(target):
    if "page" not in target.vm.ports:
        pytest.skip("the image was built with page.enabled: false")
    return f"http://127.0.0.1:{target.vm.ports['page']}"


def test_chromium_loads_the_page_and_its_root_matches_status(page_base, status_fingerprint, guest_ca_url, root_pem):
    if chromium() is None:
        pytest.skip("no chromium on the host (Debian: apt-get install chromium, listed in host-packages.txt)")
    dom, shot = browser_load(page_base + "/", SCREENSHOT)
    assert status_fingerprint in dom
    page = check_page(page_base + "/", dom, status_fingerprint, f"{guest_ca_url}/acme/acme/directory")
    assert page.by_id["ca-url"] == guest_ca_url
    # the same root step-ca itself serves on /roots.pem
    _, _, pem = fetch(page_base + "/root.pem")
    assert pem == root_pem.read_bytes()


def test_the_page_server_is_socket_activated_unprivileged_and_lists_nothing(host, page_base):
    assert host.service("ca-appliance-page.socket").is_enabled
    assert host.service("ca-appliance-page.socket").is_running
    fetch(page_base + "/")   # the socket starts the service on demand
    pid = host.check_output("systemctl show -p MainPID --value ca-appliance-page.service")
    assert pid != "0", "ca-appliance-page.service did not start on a connection"
    user = host.check_output(f"ps -o user= -p {pid}")
    assert user not in ("root", "0"), f"the page server runs as {user}"
    assert host.check_output(f"grep ^CapEff /proc/{pid}/status").split()[1] == "0000000000000000"
    for path in ("/etc/passwd", "/var/lib/ca-appliance/page/", "/../../etc/step-ca/password.txt"):
        try:
            fetch(page_base + path)
        except Exception as error:  # noqa: BLE001 - urllib raises HTTPError for 404
            assert getattr(error, "code", None) == 404, (path, error)
        else:
            raise AssertionError(f"{path} was served")


def test_the_firewall_lets_port_80_in(host, page_base):
    """Setup's firewall step opened the page's service (permanently; through firewall-offline-cmd when
    firewalld was not up yet, which test_no_unit_failed reports on its own)."""
    running = host.run("firewall-cmd --state").rc == 0
    services = host.check_output("firewall-cmd --permanent --list-services" if running
                                 else "firewall-offline-cmd --list-services")
    assert "ca-appliance-page" in services.split(), services
    if running:
        assert "ca-appliance-page" in host.check_output("firewall-cmd --list-services").split()
