"""Facts about the installed step-ca: its version (what its config may use) and its health."""
import http.client
import json
import re
import shutil
import ssl
import subprocess

# The unit's ExecStart has no absolute path: systemd finds /usr/local/bin (a binary the operator
# put there) before /usr/bin (the image's). Look in the same order, then on PATH (tests).
SEARCH_PATH = "/usr/local/bin:/usr/bin"
HEALTH_TIMEOUT = 10
MAX_CRL_BYTES = 16 << 20   # a CRL of ~400k revocations; more is not a CRL this CA wrote


def binary():
    return shutil.which("step-ca", path=SEARCH_PATH) or shutil.which("step-ca")


def installed_version():
    """'0.30.2' from `step-ca version` ("Smallstep CA/0.30.2 (linux/amd64)"); None when unknown."""
    path = binary()
    if path is None:
        return None
    for argv in ([path, "version"],):
        try:
            output = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                                    cwd="/").stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r"(?:CA/|version )v?(\d+\.\d+\.\d+)", output)
        if match:
            return match.group(1)
    return None


def local_endpoint(address):
    """(host, port) to reach step-ca's listen address from the appliance itself."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def _get(config, root_cert_path, path, timeout):
    """(status, body) of GET path on step-ca over TLS chained to the root; OSError-like failures raise."""
    host, port = local_endpoint(config["address"])
    context = ssl.create_default_context(cafile=str(root_cert_path))
    context.check_hostname = False  # reached by address, not by name; the chain is still checked
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read(MAX_CRL_BYTES)
    finally:
        connection.close()


def crl(config, root_cert_path, timeout=HEALTH_TIMEOUT):
    """(CertificateRevocationList, None) as step-ca serves it on /crl, or (None, why not)."""
    from cryptography import x509
    try:
        status, body = _get(config, root_cert_path, "/crl", timeout)
    except (OSError, ssl.SSLError, http.client.HTTPException) as error:
        return None, f"GET /crl failed: {error}"
    if status != 200:
        return None, f"GET /crl answered {status}"
    try:
        return x509.load_der_x509_crl(body), None
    except ValueError:
        return None, "GET /crl answered something that is not a DER CRL"


def health(config, root_cert_path, timeout=HEALTH_TIMEOUT):
    """None when GET /health answers {"status": "ok"} over TLS chained to the root, else why not."""
    host, port = local_endpoint(config["address"])
    context = ssl.create_default_context(cafile=str(root_cert_path))
    context.check_hostname = False  # reached by address, not by name; the chain is still checked
    url = f"https://{host}:{port}/health"
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        body = response.read(4096)
    except (OSError, ssl.SSLError, http.client.HTTPException) as error:
        return f"GET {url} failed: {error}"
    finally:
        connection.close()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if response.status != 200 or not isinstance(answer, dict) or answer.get("status") != "ok":
        return f"GET {url} answered {response.status}: {body[:100].decode('utf-8', 'replace')!r}"
    return None
