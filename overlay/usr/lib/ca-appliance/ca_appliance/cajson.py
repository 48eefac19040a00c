"""ca.json and defaults.json, as pure functions of the answers, the layout and the CA material.

Field names follow step-ca 0.30's authority/config (checked by running step-ca on every ca.json
the tests write). Choices worth knowing:
- no `tls` block: step-ca then uses its own defaults, which suit every key type (the block
  `step ca init` writes lists ECDSA-only suites, wrong for an RSA intermediate);
- a CRL for every CA: signed by the intermediate, regenerated on every revocation and every 12 h
  (valid 24 h); every leaf carries where to fetch it (crlDistributionPoints, through each X.509
  provisioner's template), plain HTTP on port 80 when the client page serves it;
- `ca.name_constraints` is also step-ca's issuance policy (authority.policy), so an out-of-policy
  name is refused at issuance, not signed into a certificate relying parties then refuse.
"""
import base64
import ipaddress
import json

from . import buildinfo, database

ACME_NAME = "acme"
X5C_NAME = "x5c"
SSHPOP_NAME = "sshpop"
ACME_CHALLENGES = ["http-01", "dns-01", "tls-alpn-01"]
ACME_DIRECTORY_PATH = f"/acme/{ACME_NAME}/directory"
CRL_BLOCK = {"enabled": True, "generateOnRevoke": True, "cacheDuration": "24h0m0s", "renewPeriod": "12h0m0s"}
CRL_PATH = "/crl"
ROOT_CRL_FILE = "root_ca.crl"   # in certs/: the root's CRL (DER), which speaks for the intermediate
ROOT_CRL_PATH = "/root.crl"     # where the client page serves it
# step-ca's default leaf template (go.step.sm/crypto x509util.DefaultLeafTemplate) plus the CRL's URL
LEAF_TEMPLATE = """{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
{{- if typeIs "*rsa.PublicKey" .Insecure.CR.PublicKey }}
	"keyUsage": ["keyEncipherment", "digitalSignature"],
{{- else }}
	"keyUsage": ["digitalSignature"],
{{- end }}
	"extKeyUsage": ["serverAuth", "clientAuth"],
	"crlDistributionPoints": %s
}"""


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


def crl_url(ca, page=True):
    """Where relying parties fetch the CRL: plain HTTP on port 80 (the client page's server), as
    CRLs are served, so a client that does not trust the CA yet can fetch it; without the page,
    step-ca's own /crl on the CA's port."""
    if page:
        return f"http://{_url_host(ca['dns_names'][0])}{CRL_PATH}"
    return ca_url(ca) + CRL_PATH


def root_crl_url(ca, page=True):
    """Where the intermediate's status is published: the root's CRL on the page's port 80; None
    without the page (step-ca serves only its own CRL, which cannot speak for the intermediate)."""
    return f"http://{_url_host(ca['dns_names'][0])}{ROOT_CRL_PATH}" if page else None


def x509_options(crl):
    """Each X.509 provisioner's options: the default leaf, with the CRL distribution point."""
    return {"x509": {"template": LEAF_TEMPLATE % json.dumps([crl])}}


def _complement(networks, version):
    """The CIDR ranges of IPv`version` space outside `networks` (for a deny list)."""
    remaining = [ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")]
    for network in (n for n in networks if n.version == version):
        outside = []
        for block in remaining:   # two CIDR blocks either nest or are disjoint
            if block.subnet_of(network):
                continue
            outside.extend(block.address_exclude(network) if network.subnet_of(block) else [block])
        remaining = outside
    return [str(n) for n in ipaddress.collapse_addresses(remaining)]


def issuance_policy(constraints):
    """step-ca's authority.policy for the intermediate's name constraints (None when there are none).

    Same names as the constraints where step-ca's engine can say it: a DNS domain permits itself
    and its names one label down (`*.domain`; step-ca's policy matches no deeper); IP ranges as
    given. X.509 leaves a kind with no constraint open, while step-ca refuses every name of a kind
    that an allow list omits: DNS-only constraints allow every IP; IP-only constraints become a
    deny list of the IP space outside them, which leaves DNS names open.
    """
    dns, ips = list(constraints.get("dns") or []), [ipaddress.ip_network(n) for n in constraints.get("ip") or []]
    if not dns and not ips:
        return None
    if dns:
        # ".domain" (RFC 5280: names below the domain only) permits no name of its own
        allow = {"dns": [name for domain in dns
                         for name in (["*" + domain] if domain.startswith(".") else [domain, "*." + domain])],
                 "ip": [str(n) for n in ips] if ips else ["0.0.0.0/0", "::/0"]}
        x509 = {"allow": allow, "allowWildcardNames": True}
    else:
        x509 = {"deny": {"ip": _complement(ips, 4) + _complement(ips, 6)}, "allowWildcardNames": True}
    return {"x509": x509}


def _tls_claims(durations):
    return {"defaultTLSCertDuration": durations["default"], "maxTLSCertDuration": durations["max"]}


def provisioners(ca, root_cert_pem, jwk_public, jwk_encrypted, crl=None):
    """JWK first (the admin's), then ACME, X5C (only with operator roots) and, with SSH on, SSHPOP.

    X5C never trusts this CA's own root: step-ca takes the names from the token, so any holder of
    an ACME certificate for one name could otherwise sign a token for every other name.
    """
    jwk_claims = _tls_claims(ca["claims"]["jwk"])
    if ca["ssh"]:
        jwk_claims["enableSSHCA"] = True
    options = x509_options(crl or crl_url(ca))
    result = [
        {"type": "JWK", "name": ca["provisioner"], "key": jwk_public, "encryptedKey": jwk_encrypted,
         "claims": jwk_claims, "options": options},
        {"type": "ACME", "name": ACME_NAME, "challenges": list(ACME_CHALLENGES),
         "claims": _tls_claims(ca["claims"]["acme"]), "options": options},
    ]
    if ca.get("x5c_roots"):
        # step-ca unmarshals `roots` as []byte: base64 of the PEM bundle.
        result.append({"type": "X5C", "name": X5C_NAME, "options": options,
                       "roots": base64.b64encode(ca["x5c_roots"].encode("ascii")).decode("ascii")})
    if ca["ssh"]:
        result.append({"type": "SSHPOP", "name": SSHPOP_NAME, "claims": {"enableSSHCA": True}})
    return result


def ca_json(ca, layout, root_cert_pem, jwk_public, jwk_encrypted):
    """step-ca's configuration; every path is the final one under layout's prefix."""
    crl = crl_url(ca, page=bool(buildinfo.load(layout.prefix).get("client_page")))
    authority = {"provisioners": provisioners(ca, root_cert_pem, jwk_public, jwk_encrypted, crl)}
    policy = issuance_policy(ca.get("name_constraints") or {})
    if policy:
        authority["policy"] = policy
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
        "authority": authority,
        # the CRL's issuingDistributionPoint must name the URL the leaves carry (else "different CRL scope")
        "crl": {**CRL_BLOCK, "idpURL": crl},
    }
    if ca["ssh"]:
        config["ssh"] = {"hostKey": str(layout.secrets_dir / "ssh_host_ca_key"),
                         "userKey": str(layout.secrets_dir / "ssh_user_ca_key")}
    return config


def defaults_json(ca, layout, root_fingerprint):
    """What the `step` CLI reads to talk to this CA (`step ca bootstrap` writes the same)."""
    return {"ca-url": ca_url(ca), "ca-config": str(layout.ca_json),
            "fingerprint": root_fingerprint, "root": str(layout.root_cert)}
