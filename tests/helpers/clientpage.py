"""What a person checks on the client page, done by a real browser and by the host, shared by the
integration test (page served on the build host) and tests/vm (page served by the appliance).

Headless Chromium loads the page, saves a screenshot and dumps the DOM it rendered; the checks then
read the fingerprint and the ACME URL from that DOM, follow the page's download links and compare.
"""
import hashlib
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--hide-scrollbars"]
PHONE_WINDOW = "412,1600"   # a phone's CSS width: the page must read there without zooming
BROWSER_TIMEOUT = 120


def chromium():
    """The Chromium binary (Debian: chromium), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(*args):
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, *args], capture_output=True, text=True,
                            timeout=BROWSER_TIMEOUT)
    assert result.returncode == 0, f"chromium {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}"
    return result


def browser_load(url, screenshot):
    """(DOM as Chromium rendered it, screenshot path): two real page loads, phone-sized window."""
    screenshot = Path(screenshot)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    _run_chromium(f"--window-size={PHONE_WINDOW}", f"--screenshot={screenshot}", url)
    assert screenshot.stat().st_size > 10_000, f"chromium's screenshot of {url} is (nearly) empty"
    dom = _run_chromium(f"--window-size={PHONE_WINDOW}", "--dump-dom", url).stdout
    return dom, screenshot


class PageParser(HTMLParser):
    """Text of the elements with an id, the download links, and the snippets by kind."""

    def __init__(self):
        super().__init__()
        self.by_id, self.links, self.snippets, self.scripts = {}, {}, [], 0
        self.viewport = False
        self._open = []   # (tag, id or None, snippet dict or None, text parts)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "meta" and attrs.get("name") == "viewport":
            self.viewport = True
        if tag == "a" and attrs.get("id", "").startswith("download-"):
            self.links[attrs["id"]] = attrs.get("href")
        snippet = None
        if tag == "pre" and "snippet" in (attrs.get("class") or ""):
            snippet = {"kind": attrs.get("data-kind"), "tool": attrs.get("data-tool")}
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append((tag, attrs.get("id"), snippet, []))

    def handle_endtag(self, tag):
        while self._open:
            open_tag, ident, snippet, parts = self._open.pop()
            text = "".join(parts)
            if self._open:
                self._open[-1][3].append(text)
            if ident:
                self.by_id[ident] = text
            if snippet is not None:
                snippet["text"] = text
                self.snippets.append(snippet)
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self._open:
            self._open[-1][3].append(data)


def parse(dom):
    parser = PageParser()
    parser.feed(dom)
    parser.close()
    return parser


def fetch(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, dict(response.headers), response.read()


def der_fingerprint(der):
    return hashlib.sha256(der).hexdigest()


def check_page(base_url, dom, expected_fingerprint, expected_acme):
    """Everything a client relies on, judged from the rendered DOM: returns the parsed page."""
    page = parse(dom)
    assert page.viewport, "no viewport meta: the page would be zoomed out on a phone"
    assert page.scripts == 0, "the page has a <script>: it must work without JavaScript"
    shown = page.by_id.get("fingerprint", "").strip()
    assert shown == expected_fingerprint, f"the page shows fingerprint {shown!r}, expected {expected_fingerprint}"
    assert page.by_id.get("acme-directory", "").strip() == expected_acme
    # Download the root through the page's own links and check both against the fingerprint.
    _, headers, pem = fetch(urljoin(base_url, page.links["download-pem"]))
    der_from_pem = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert der_fingerprint(der_from_pem) == expected_fingerprint, "the PEM the page links to is another root"
    _, headers, der = fetch(urljoin(base_url, page.links["download-crt"]))
    assert der_fingerprint(der) == expected_fingerprint, "the .crt the page links to is another root"
    assert headers.get("Content-Type") == "application/pkix-cert"
    assert page.links.get("download-crl") == "/crl", "the page does not link the CRL every leaf names"
    acme = [s for s in page.snippets if s["kind"] == "acme"]
    tools = {s["tool"] for s in acme}
    assert {"certbot", "nginx", "apache", "caddy", "traefik", "lego", "acmesh", "certmanager", "step"} <= tools, tools
    for snippet in acme:
        assert expected_acme in snippet["text"], f"the {snippet['tool']} snippet lacks the ACME URL:\n{snippet['text']}"
    trust = [s for s in page.snippets if s["kind"] == "trust"]
    assert {"debian", "fedora", "macos", "windows", "firefox", "java", "python", "node", "docker"} <= \
        {s["tool"] for s in trust}
    return page
