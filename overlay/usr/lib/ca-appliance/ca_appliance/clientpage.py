"""The appliance's page for the people who trust and use the CA, and the tiny server behind port 80.

publish(layout) writes a static page from the values on disk (ca.json, the root certificate): the
CA's name, the root's SHA-256 fingerprint, the root as PEM and DER, the ACME directory and
copy-paste snippets for the usual ACME clients and trust stores. It is written beside the old
page and renamed into place, so a client never sees half a page; setup and restore call it.

serve() answers GET/HEAD for the page's few files and nothing else: no directory listing, no path
is ever joined from the request. Under systemd it takes its listening socket from
ca-appliance-page.socket (LISTEN_FDS), so the service itself needs no capability and no network.
Anyone on the network can reach it, so it holds nothing for long: a connection that sends no
request within REQUEST_TIMEOUT, or lasts CONNECTION_DEADLINE, is cut; at most MAX_CONNECTIONS
are served at once (MAX_PER_CLIENT from one address), others are closed at once, unread; what it
logs (the journal) is escaped and cut short, never raw request bytes.
"""
import base64
import html
import http.client
import http.server
import ipaddress
import json
import os
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from . import buildinfo, cajson, pki, stepca
from .staging import Staging, make_dir, remove_leftovers, write_file

PAGE_DIR = "/var/lib/ca-appliance/page"
PAGE_PORT = 80
# URL path -> (file in PAGE_DIR, Content-Type). The whole of what the server can answer.
ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/root.pem": ("root.pem", "application/x-pem-file"),
    "/root.crt": ("root.crt", "application/pkix-cert"),
    cajson.ROOT_CRL_PATH: ("root.crl", "application/pkix-crl"),   # the root's CRL: the intermediate's status
}
SD_LISTEN_FDS_START = 3
# The CRL on plain HTTP, where relying parties fetch it (every leaf's crlDistributionPoints names it):
# relayed from step-ca's own /crl on loopback, so a revocation shows at once, never a stale copy.
CRL_ROUTE = cajson.CRL_PATH
CRL_SOURCE = "crl-source.json"     # in the page directory, not served: where step-ca listens
CRL_TIMEOUT = 10
# The page is a few KiB: a request has no reason to take long, and one address no reason to hold many.
REQUEST_TIMEOUT = 10        # seconds a read or write may wait (an idle connection is closed after it)
CONNECTION_DEADLINE = 30    # seconds any one connection may live, however slowly it trickles
MAX_CONNECTIONS = 64        # connections served at once (each a thread): the rest are closed unread
MAX_PER_CLIENT = 8          # of those, from one address
LOG_MAX = 300               # characters of one log line (a request line may be 64 KiB)
REFUSALS_LOGGED_EVERY = 60  # seconds between the journal lines counting refused connections


def page_dir(layout):
    return layout.path(PAGE_DIR)


def enabled(prefix=None):
    """The build's choice (page.enabled in appliance.yaml, client_page in build.json)."""
    return bool(buildinfo.load(prefix).get("client_page", True))


def page_url(ca_url):
    """Where clients find the page: plain HTTP, port 80, on the host of the CA's URL."""
    return page_base(ca_url) + "/"


def _url_host(ca_url):
    """The host part of a URL as it goes back into a URL ([v6] kept in brackets)."""
    netloc = urlsplit(ca_url).netloc
    if netloc.startswith("["):
        return netloc[:netloc.index("]") + 1]
    return netloc.rpartition(":")[0] if ":" in netloc else netloc


def page_base(ca_url):
    return f"http://{_url_host(ca_url)}"


def _slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "private-ca"


def _example_domain(host):
    """A name for the snippets' example server: www.<the CA's domain>, else www.example.internal."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
        return "www.example.internal"
    except ValueError:
        pass
    parts = bare.split(".", 1)
    return f"www.{parts[1]}" if len(parts) == 2 and parts[1] else "www.example.internal"


def _ca_name(cert):
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if names:
        return names[0].value
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return common[0].value if common else "Private CA"


def facts(layout):
    """The real values the page shows, read from what setup (or restore) wrote."""
    config = json.loads(layout.ca_json.read_text(encoding="utf-8"))
    ca = {"address": config["address"], "dns_names": config["dnsNames"]}
    root_pem = layout.root_cert.read_bytes()
    cert = x509.load_pem_x509_certificate(root_pem)
    fingerprint = pki.fingerprint(cert)
    ca_url = cajson.ca_url(ca)
    name = _ca_name(cert)
    return {
        "name": name,
        "slug": _slug(name),
        "ca_url": ca_url,
        "acme": cajson.acme_directory_url(ca),
        "fingerprint": fingerprint,
        "fingerprint_colons": ":".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2)).upper(),
        "base": page_base(ca_url),
        "example": _example_domain(_url_host(ca_url)),
        "root_pem": root_pem,
        "root_der": cert.public_bytes(serialization.Encoding.DER),
        "not_after": pki.not_after(cert).strftime("%Y-%m-%d"),
        # fails closed: an unknown step-ca version is a test image too
        "test_image": buildinfo.test_image_reason(buildinfo.load(layout.prefix), stepca.installed_version()),
    }


def acme_snippets(f):
    """(id, title, text) of each ACME client; every text names the real ACME directory."""
    acme, ex, slug = f["acme"], f["example"], f["slug"]
    pem = f"/etc/ssl/certs/{slug}-root.pem"
    bundle = base64.b64encode(f["root_pem"]).decode("ascii")
    return [
        ("certbot", "certbot (standalone)",
         f"sudo REQUESTS_CA_BUNDLE={pem} certbot certonly --standalone \\\n"
         f"    -d {ex} --server {acme}"),
        ("nginx", "nginx with certbot",
         f"sudo REQUESTS_CA_BUNDLE={pem} certbot --nginx -d {ex} \\\n    --server {acme}"),
        ("apache", "Apache with certbot",
         f"sudo REQUESTS_CA_BUNDLE={pem} certbot --apache -d {ex} \\\n    --server {acme}"),
        ("caddy", "Caddy (Caddyfile)",
         f"{ex} {{\n    tls {{\n        ca {acme}\n        ca_root {pem}\n    }}\n"
         "    reverse_proxy localhost:8080\n}"),
        ("traefik", "Traefik (static configuration; start it with LEGO_CA_CERTIFICATES=" + pem + ")",
         "certificatesResolvers:\n  private-ca:\n    acme:\n"
         f"      caServer: {acme}\n      email: admin@{ex.partition('.')[2]}\n"
         "      storage: /data/acme.json\n      httpChallenge:\n        entryPoint: web"),
        ("lego", "lego",
         f"LEGO_CA_CERTIFICATES={pem} lego --server {acme} \\\n"
         f"    --email admin@{ex.partition('.')[2]} --domains {ex} --http run"),
        ("acmesh", "acme.sh",
         f"acme.sh --issue --server {acme} \\\n    --ca-bundle {pem} -d {ex} --standalone"),
        ("certmanager", "cert-manager (Kubernetes ClusterIssuer, caBundle is this root)",
         "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata:\n"
         f"  name: {slug}\nspec:\n  acme:\n    server: {acme}\n    caBundle: {bundle}\n"
         f"    email: admin@{ex.partition('.')[2]}\n    privateKeySecretRef:\n      name: {slug}-account-key\n"
         "    solvers:\n      - http01:\n          ingress:\n            ingressClassName: nginx"),
        ("step", "step CLI (bootstrap checks the fingerprint, then ACME)",
         f"step ca bootstrap --ca-url {f['ca_url']} \\\n    --fingerprint {f['fingerprint']} --install\n"
         f"step ca certificate {ex} {ex}.crt {ex}.key \\\n    --acme {acme}"),
    ]


def trust_snippets(f):
    """(id, title, text) of each trust store; every text fetches or names this root."""
    base, slug, fp = f["base"], f["slug"], f["fingerprint"]
    pem_url, crt_url = f"{base}/root.pem", f"{base}/root.crt"
    pem = f"/etc/ssl/certs/{slug}-root.pem"
    return [
        ("debian", "Debian / Ubuntu",
         f"sudo curl -fsS {pem_url} -o /usr/local/share/ca-certificates/{slug}.crt \\\n"
         f"  && openssl x509 -in /usr/local/share/ca-certificates/{slug}.crt -noout -fingerprint -sha256 \\\n"
         "  && sudo update-ca-certificates"),
        ("fedora", "Fedora / RHEL",
         f"sudo curl -fsS {pem_url} -o /etc/pki/ca-trust/source/anchors/{slug}.pem \\\n"
         "  && sudo update-ca-trust"),
        ("macos", "macOS",
         f"curl -fsS {crt_url} -o {slug}.crt\n"
         f"sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {slug}.crt"),
        ("windows", "Windows (PowerShell as administrator)",
         f"Invoke-WebRequest {crt_url} -OutFile {slug}.crt\n"
         f"(Get-FileHash -Algorithm SHA256 {slug}.crt).Hash  # must be {fp.upper()}\n"
         f"Import-Certificate -FilePath {slug}.crt -CertStoreLocation Cert:\\LocalMachine\\Root"),
        ("firefox", "Firefox (enterprise policy: /etc/firefox/policies/policies.json)",
         json.dumps({"policies": {"Certificates": {"ImportEnterpriseRoots": True,
                                                   "Install": [pem]}}}, indent=2)),
        ("java", "Java keytool",
         f"curl -fsS {crt_url} -o {slug}.crt\n"
         f"sudo keytool -importcert -noprompt -cacerts -storepass changeit -alias {slug} -file {slug}.crt"),
        ("python", "Python (requests, certbot)",
         f"sudo curl -fsS {pem_url} -o {pem}\nexport REQUESTS_CA_BUNDLE={pem}"),
        ("node", "Node.js",
         f"sudo curl -fsS {pem_url} -o {pem}\nexport NODE_EXTRA_CA_CERTS={pem}"),
        ("docker", "Docker (an image that trusts this CA; Dockerfile)",
         f"# curl -fsS {pem_url} -o {slug}.crt   (beside the Dockerfile)\n"
         f"COPY {slug}.crt /usr/local/share/ca-certificates/{slug}.crt\n"
         "RUN update-ca-certificates"),
    ]


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:52rem;
padding:1rem;line-height:1.45;color:#1b1f24;background:#fff}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1.2rem 0 .3rem}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f4f6f8;border:1px solid #dde1e5;border-radius:6px;padding:.6rem;overflow-x:auto;
white-space:pre}
.fp{word-break:break-all;background:#fff8d6;padding:.1rem .3rem;border-radius:4px}
.box{border:1px solid #dde1e5;border-radius:8px;padding:.8rem 1rem;margin:1rem 0}
a.button{display:inline-block;margin:.3rem .5rem .3rem 0;padding:.5rem .9rem;border-radius:6px;
background:#0b5cad;color:#fff;text-decoration:none}
dt{font-weight:600}dd{margin:0 0 .6rem 0;word-break:break-all}
.muted{color:#555;font-size:.9rem}
.test-image{border:3px solid #b00020;background:#fdecea;color:#5f0010;border-radius:8px;padding:.8rem 1rem;
margin:1rem 0;font-size:1.05rem}
"""


def _pre(snippet_id, title, text, kind):
    return (f'<h3 id="{kind}-{snippet_id}">{html.escape(title)}</h3>\n'
            f'<pre class="snippet" data-kind="{kind}" data-tool="{snippet_id}"><code>'
            f"{html.escape(text)}</code></pre>\n")


def _test_image_notice(f):
    if not f.get("test_image"):
        return ""
    return (f'<div class="test-image" id="test-image" role="alert"><strong>{html.escape(buildinfo.TEST_IMAGE_MARK)}.'
            f"</strong> Do not trust this CA on machines that matter: {html.escape(f['test_image'])}</div>\n")


def render(f):
    """The whole page as HTML text: everything from the CA is escaped, no script, no external link."""
    e = html.escape
    acme = "".join(_pre(i, t, s, "acme") for i, t, s in acme_snippets(f))
    trust = "".join(_pre(i, t, s, "trust") for i, t, s in trust_snippets(f))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(f['name'])}: trust and use this certificate authority</title>
<style>{CSS}</style>
</head>
<body>
{_test_image_notice(f)}<h1 id="ca-name">{e(f['name'])}</h1>
<p>This is a private certificate authority. Trust its root certificate on your machines, then
get certificates from it with any ACME client, as with Let's Encrypt.</p>

<div class="box">
<dl>
<dt>Root certificate SHA-256 fingerprint</dt>
<dd><code class="fp" id="fingerprint">{e(f['fingerprint'])}</code><br>
<span class="muted">as OpenSSL shows it: <code id="fingerprint-colons">{e(f['fingerprint_colons'])}</code></span></dd>
<dt>ACME directory</dt>
<dd><code id="acme-directory">{e(f['acme'])}</code></dd>
<dt>CA URL</dt>
<dd><code id="ca-url">{e(f['ca_url'])}</code></dd>
<dt>Root valid until</dt>
<dd>{e(f['not_after'])}</dd>
</dl>
<a class="button" id="download-pem" href="/root.pem" download="{e(f['slug'])}-root.pem">Root certificate (PEM)</a>
<a class="button" id="download-crt" href="/root.crt" download="{e(f['slug'])}-root.crt">Root certificate (DER .crt)</a>
<a class="button" id="download-crl" href="/crl">Revocation list (CRL)</a>
</div>
<p class="muted">Every certificate this CA issues names <code>{e(f['base'])}/crl</code> as where to check
whether it was revoked; the list is current at every request and valid for 24 hours.</p>

<p><strong>Check before you trust.</strong> This page comes over plain HTTP, so compare the
fingerprint of the file you downloaded with the one shown on the appliance's console or by
<code>sudo ca-appliance status</code>:
<code>openssl x509 -in {e(f['slug'])}-root.pem -noout -fingerprint -sha256</code></p>

<h2 id="trust">Trust the root</h2>
{trust}
<h2 id="acme">Get certificates (ACME)</h2>
<p class="muted">Replace <code>{e(f['example'])}</code> with your server's name; it must resolve to that
server, which must be reachable from the CA on port 80 (http-01). The snippets read the root from
<code>/etc/ssl/certs/{e(f['slug'])}-root.pem</code> (saved there as under Python above).</p>
{acme}
<p class="muted">Generated by the CA appliance from its own configuration. No JavaScript, no tracking.</p>
</body>
</html>
"""


def publish(layout):
    """Write the page from the CA on disk, atomically; nothing when the build turned the page off
    or no CA is configured. Returns the page's directory, or None."""
    if not enabled(layout.prefix if not layout.is_system else None) or not layout.is_configured():
        return None
    values = facts(layout)
    final = page_dir(layout)
    make_dir(final.parent, 0o755)
    # what a cut publish left (its swap keeps no journal: the page is made again from the CA whole)
    remove_leftovers(final, set_aside=True)
    staging = Staging()
    try:
        staged = staging.stage_dir(final)
        write_file(staged / "index.html", render(values), 0o644)
        write_file(staged / "root.pem", values["root_pem"], 0o644)
        write_file(staged / "root.crt", values["root_der"], 0o644)
        root_crl = layout.certs_dir / cajson.ROOT_CRL_FILE
        if root_crl.is_file():
            write_file(staged / "root.crl", root_crl.read_bytes(), 0o644)
        host, port = stepca.local_endpoint(json.loads(layout.ca_json.read_text(encoding="utf-8"))["address"])
        write_file(staged / CRL_SOURCE, json.dumps({"host": host, "port": port}).encode(), 0o644)
        staged.chmod(0o755)
        staging.swap()
        staging.commit()
    except BaseException:
        staging.rollback()
        raise
    return final


def tidy(layout):
    """After a power cut: the trees a cut publish left go, and a page the cut left missing is made
    again. The names removed and whether the page was written (for `ca-appliance recover`)."""
    final = page_dir(layout)
    removed = remove_leftovers(final, set_aside=True)
    written = False
    if not final.is_dir() and publish(layout) is not None:
        written = True
    return removed, written


# ---- the server


class PageHandler(http.server.BaseHTTPRequestHandler):
    server_version = "ca-appliance-page"
    sys_version = ""
    directory = None  # set on the subclass serve() makes

    def _answer(self, with_body):
        path = urlsplit(self.path).path
        if path == CRL_ROUTE:
            self._crl(with_body)
            return
        route = ROUTES.get(path)
        if route is None:
            self._plain(404, "not found: this server has only /, /root.pem and /root.crt\n", with_body)
            return
        name, content_type = route
        try:
            with open(os.path.join(self.directory, name), "rb") as handle:
                body = handle.read()
        except FileNotFoundError:
            self._plain(503, "the certificate authority is not set up yet\n", with_body)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        if name != "index.html":
            self.send_header("Content-Disposition", f'attachment; filename="{name}"')
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _crl(self, with_body):
        """step-ca's current CRL (DER), fetched over TLS chained to the root on the page."""
        try:
            with open(os.path.join(self.directory, CRL_SOURCE), "rb") as handle:
                source = json.loads(handle.read())
            body = fetch_crl(source["host"], int(source["port"]), os.path.join(self.directory, "root.pem"))
        except FileNotFoundError:
            self._plain(503, "the certificate authority is not set up yet\n", with_body)
            return
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as error:
            self.log_error("CRL from step-ca: %s", error)
            self._plain(502, "the certificate authority did not hand out its CRL; try again shortly\n", with_body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/pkix-crl")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _plain(self, status, text, with_body):
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(True)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)

    timeout = REQUEST_TIMEOUT  # StreamRequestHandler: the socket's timeout for each read and write

    def setup(self):
        super().setup()
        # a connection trickling a byte every few seconds never hits the timeout: cut it at the deadline
        self._deadline = threading.Timer(CONNECTION_DEADLINE, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self):
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:  # the peer went away, or the deadline cut it
            pass

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        sys.stderr.write(loggable(f"{self.address_string()} {format % args}") + "\n")


def loggable(text, limit=LOG_MAX):
    """`text` safe for the journal and a terminal: printable ASCII as it is, a backslash doubled,
    anything else (ESC, CR, LF, BEL, non-ASCII) as \\xNN / \\uNNNN; cut to `limit` characters."""
    shown = []
    for char in text:
        if char == "\\":
            shown.append("\\\\")
        elif " " <= char <= "~":
            shown.append(char)
        elif ord(char) <= 0xFF:
            shown.append(f"\\x{ord(char):02x}")
        else:
            shown.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    line = "".join(shown)
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line) - limit} more characters)"


def fetch_crl(host, port, root_pem_path):
    """The DER CRL step-ca serves on /crl; ValueError unless it is one."""
    context = ssl.create_default_context(cafile=root_pem_path)
    context.check_hostname = False   # reached by loopback address; the chain is still checked
    connection = http.client.HTTPSConnection(host, port, timeout=CRL_TIMEOUT, context=context)
    try:
        connection.request("GET", CRL_ROUTE)
        response = connection.getresponse()
        body = response.read(stepca.MAX_CRL_BYTES + 1)
    finally:
        connection.close()
    if response.status != 200 or len(body) > stepca.MAX_CRL_BYTES:
        raise ValueError(f"step-ca answered {response.status} ({len(body)} bytes)")
    x509.load_der_x509_crl(body)   # relay a CRL, nothing else
    return body


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One thread per connection, at most MAX_CONNECTIONS (MAX_PER_CLIENT per address) at once."""
    daemon_threads = True
    allow_reuse_address = True
    max_connections = MAX_CONNECTIONS
    max_per_client = MAX_PER_CLIENT

    def _limits(self):
        if not hasattr(self, "_lock"):  # made here: make_server may build the server without __init__
            self._lock = threading.Lock()
            self._active = 0
            self._per_client = {}
            self._refused = 0
            self._refusals_logged_at = 0.0
        return self._lock

    @staticmethod
    def _client(client_address):
        return client_address[0] if isinstance(client_address, tuple) and client_address else "?"

    def process_request(self, request, client_address):
        client = self._client(client_address)
        with self._limits():
            over = self._active >= self.max_connections or self._per_client.get(client, 0) >= self.max_per_client
            if not over:
                self._active += 1
                self._per_client[client] = self._per_client.get(client, 0) + 1
            else:
                self._refused += 1
        if over:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self._release(client)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(self._client(client_address))

    def _release(self, client):
        with self._limits():
            self._active -= 1
            left = self._per_client.get(client, 1) - 1
            if left > 0:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)

    def _refuse(self, request):
        """Close a connection over the limits unread; count it in the journal, once a minute at most."""
        self.shutdown_request(request)
        now = time.monotonic()
        with self._limits():
            if now - self._refusals_logged_at < REFUSALS_LOGGED_EVERY:
                return
            refused, self._refused, self._refusals_logged_at = self._refused, 0, now
        sys.stderr.write(f"refused {refused} connection(s) over the limits ({self.max_connections} at once, "
                         f"{self.max_per_client} per address)\n")

    def handle_error(self, request, client_address):
        """One escaped line, not a traceback with request bytes in it."""
        error = sys.exc_info()[1]
        sys.stderr.write(loggable(f"{self._client(client_address)} error: {type(error).__name__}: {error}") + "\n")


def _systemd_socket():
    """The listening socket systemd passed (socket activation), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def make_server(directory, listen=None):
    """An HTTP server for the page in `directory`: on systemd's socket, else on listen (host, port)."""
    handler = type("Handler", (PageHandler,), {"directory": str(directory)})
    inherited = _systemd_socket() if listen is None else None
    if inherited is not None:
        # No socket() of our own: the unit allows no address family (RestrictAddressFamilies=none).
        server = _Server.__new__(_Server)
        socketserver.BaseServer.__init__(server, inherited.getsockname()[:2], handler)
        server.socket = inherited
        server.address_family = inherited.family
        server.server_name, server.server_port = "ca-appliance-page", inherited.getsockname()[1]
        return server
    host, port = listen or ("", PAGE_PORT)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (_Server,), {"address_family": family})
    return server_class((host, port), handler)


def serve(layout, listen=None):
    server = make_server(page_dir(layout), listen)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
