"""ca.json and defaults.json, as pure functions of the answers, the layout and the CA material.

Field names follow step-ca's authority/config (0.19 through 0.30). Two choices worth knowing:
- no `tls` block: step-ca then uses its own defaults, which suit every key type (the block
  `step ca init` writes lists ECDSA-only suites, wrong for an RSA intermediate);
- ACME `challenges` is written for step-ca >= 0.22 (which honours it); 0.19 ignores it;
- a `crl` block only when the installed step-ca reads it (0.24 and later, `step-ca version`):
  older releases do not serve /crl, and a block they do not know would only mislead.
"""
import base64
import ipaddress

from . import database, stepca

ACME_NAME = "acme"
X5C_NAME = "x5c"
SSHPOP_NAME = "sshpop"
ACME_CHALLENGES = ["http-01", "dns-01", "tls-alpn-01"]
ACME_DIRECTORY_PATH = f"/acme/{ACME_NAME}/directory"
# step-ca >= 0.24: a CRL signed by the intermediate, regenerated on every revocation, served at /crl.
CRL_BLOCK = {"enabled": True, "generateOnRevoke": True, "cacheDuration": "24h0m0s"}
DETECT = object()


def listen_port(address):
    return int(address.rpartition(":")[2])


def _url_host(name):
    try:
        if ipaddress.ip_address(name).version == 6:
            return f"[{name}]"
    except ValueError:
        pass
    return name


def ca_url(ca):
    """The URL clients use: the first DNS name, with the port unless it is 443."""
    port = listen_port(ca["address"])
    host = _url_host(ca["dns_names"][0])
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


def acme_directory_url(ca):
    return ca_url(ca) + ACME_DIRECTORY_PATH


def _tls_claims(durations):
    return {"defaultTLSCertDuration": durations["default"], "maxTLSCertDuration": durations["max"]}


def provisioners(ca, root_cert_pem, jwk_public, jwk_encrypted):
    """JWK first (the admin's), then ACME, X5C (only with operator roots) and, with SSH on, SSHPOP.

    X5C never trusts this CA's own root: step-ca takes the names from the token, so any holder of
    an ACME certificate for one name could otherwise sign a token for every other name.
    """
    jwk_claims = _tls_claims(ca["claims"]["jwk"])
    if ca["ssh"]:
        jwk_claims["enableSSHCA"] = True
    result = [
        {"type": "JWK", "name": ca["provisioner"], "key": jwk_public, "encryptedKey": jwk_encrypted,
         "claims": jwk_claims},
        {"type": "ACME", "name": ACME_NAME, "challenges": list(ACME_CHALLENGES),
         "claims": _tls_claims(ca["claims"]["acme"])},
    ]
    if ca.get("x5c_roots"):
        # step-ca unmarshals `roots` as []byte: base64 of the PEM bundle.
        result.append({"type": "X5C", "name": X5C_NAME,
                       "roots": base64.b64encode(ca["x5c_roots"].encode("ascii")).decode("ascii")})
    if ca["ssh"]:
        result.append({"type": "SSHPOP", "name": SSHPOP_NAME, "claims": {"enableSSHCA": True}})
    return result


def ca_json(ca, layout, root_cert_pem, jwk_public, jwk_encrypted, step_ca_version=DETECT):
    """step-ca's configuration; every path is the final one under layout's prefix.
    step_ca_version: the installed step-ca's (read from `step-ca version` unless given; None: unknown)."""
    config = {
        "root": str(layout.root_cert),
        "federatedRoots": None,
        "crt": str(layout.intermediate_cert),
        "key": str(layout.secrets_dir / "intermediate_ca_key"),
        "address": ca["address"],
        "insecureAddress": "",
        "dnsNames": list(ca["dns_names"]),
        "logger": {"format": "text"},
        # badger (embedded) unless the answers name a shared database (the DSN is then in ca.json: 0400, user step)
        "db": database.ca_json_block(ca.get("database") or database.DEFAULT, layout.db_dir),
        "authority": {"provisioners": provisioners(ca, root_cert_pem, jwk_public, jwk_encrypted)},
    }
    if ca["ssh"]:
        config["ssh"] = {"hostKey": str(layout.secrets_dir / "ssh_host_ca_key"),
                         "userKey": str(layout.secrets_dir / "ssh_user_ca_key")}
    if step_ca_version is DETECT:
        step_ca_version = stepca.installed_version()
    if stepca.supports_crl(step_ca_version):
        config["crl"] = dict(CRL_BLOCK)
    return config


def defaults_json(ca, layout, root_fingerprint):
    """What the `step` CLI reads to talk to this CA (`step ca bootstrap` writes the same)."""
    return {"ca-url": ca_url(ca), "ca-config": str(layout.ca_json),
            "fingerprint": root_fingerprint, "root": str(layout.root_cert)}
