"""The answers to the appliance's first-boot questions: shipped defaults, merging, validation.

Every source of answers (the wizard, an answers file, the unattended sources) ends in
validate(), so one set of rules decides what a configuration may look like.
"""

import base64
import copy
import difflib
import ipaddress
import re
import unicodedata
from pathlib import Path

from . import database, safeyaml, schema, x5c
from .schema import AnswersError, Placeholder, SourceProblem  # the error: schema.py, below database.py too
from .schema import shown_source as shown

DEFAULTS_RELATIVE_PATH = Path("usr/lib/ca-appliance/defaults.yaml")
# The defaults.yaml shipped next to this package (the image's, or the repo checkout's).
PACKAGED_DEFAULTS = Path(__file__).resolve().parent.parent / "defaults.yaml"

# Limits and choices: written once, in schema.yaml (the builder reads the same file).
KEY_TYPES = tuple(schema.LIMITS["key_types"])
ROOT_KEY_MODES = tuple(schema.LIMITS["root_key_modes"])
NETWORK_MODES = tuple(schema.LIMITS["network_modes"])
SSH_KEY_TYPES = tuple(schema.LIMITS["ssh_key_types"])
SSH_RSA_MIN_BITS = schema.LIMITS["ssh_rsa_min_bits"]
USER_NAME = re.compile(schema.LIMITS["user_name_pattern"])
MAX_CA_NAME = schema.LIMITS["ca_name_max"]
MIN_PASSWORD = schema.LIMITS["password_min"]
MIN_PASSWORD_DISTINCT = schema.LIMITS["password_min_distinct"]
MAX_HOSTNAME = schema.LIMITS["hostname_max"]
MAX_YEARS = schema.LIMITS["years_max"]
MAX_NTP_SERVERS = schema.LIMITS["ntp_servers_max"]
# Go's time.Duration is an int64 of nanoseconds: step-ca overflows above 2562047h47m16s.
MAX_DURATION_HOURS = 2562047
SSH_PORT = 22
# Keys whose values are never shown, in any message, nor baked into an image: schema.yaml's secret: true.
SECRET_KEYS = schema.secret_keys()
# PEM bundles are lines of text: a line break (and only that) is allowed in them.
MULTILINE_KEYS = ("ca.x5c_roots",)

# Always fullmatch(): "$" in match() accepts a trailing newline ("ca\n" would pass as a label).
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}")
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_TRUE_WORDS = ("true", "yes", "y", "on", "1")
_FALSE_WORDS = ("false", "no", "n", "off", "0")


def _key_text(key):
    """A key as a dotted path shows it: itself when plain, else its repr."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 64 else shown(key, 40)


def load_answers(data, where, error=None):
    """Answers from YAML text or bytes (a file, a credential, a seed): a non-empty mapping, or raise.

    The one place every answers source is parsed: size, aliases, duplicate keys and syntax errors
    are refused by safeyaml (without quoting the input), and an empty source is an error rather than
    a CA silently built from the defaults."""
    error = error or SourceProblem
    try:
        raw = safeyaml.loads(data, where)
    except safeyaml.YAMLInputError as problem:
        raise error(where, "<input>", problem.message) from None
    if raw is None or raw == {}:
        raise error(where, "<empty>", "holds no answers: give at least one (e.g. hostname: ca.lab.example)")
    if not isinstance(raw, dict):
        raise error(where, Placeholder(f"<{type(raw).__name__}>"),
                    "must be a YAML mapping of answers (hostname, network, ca, admin)")
    return raw


def load_defaults(prefix=None):
    """The shipped defaults: PREFIX's defaults.yaml when it has one, else the packaged one."""
    path = PACKAGED_DEFAULTS
    if prefix is not None and (Path(prefix) / DEFAULTS_RELATIVE_PATH).is_file():
        path = Path(prefix) / DEFAULTS_RELATIVE_PATH
    try:
        loaded = safeyaml.load_file(path)
    except safeyaml.YAMLInputError as error:
        raise SourceProblem(str(path), "<file>", error.message) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SourceProblem(str(path), Placeholder(f"<{type(loaded).__name__}>"), "must be a YAML mapping")
    return loaded


def deep_merge(base, override):
    """A new dict: override's values over base's, mappings merged key by key, lists replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ---- per-field validators (the wizard calls these one answer at a time) ----


def _dns_name_problem(name):
    """None when name is a valid DNS name (lower case, no trailing dot), else why not.

    RFC 1123 host labels as RFC 5280 dNSName wants them (ASCII; an internationalised name as its
    xn-- A-labels, which must decode), not ending in a numeric label (it would read as an IP)."""
    if not name or len(name) > 253:
        return "must be 1-253 characters"
    for label in name.split("."):
        if not _DNS_LABEL.fullmatch(label):
            return "labels must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        if label[2:4] == "--":
            try:
                if not label.startswith("xn--"):
                    raise UnicodeError
                label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                return "labels with '--' in their 3rd and 4th characters must be valid xn-- A-labels"
    if name.rsplit(".", 1)[-1].isdigit():
        return "must not end in a numeric label"
    return None


def check_fqdn(value, key="hostname"):
    """A fully qualified host name, lower-cased, without a trailing dot, that the kernel accepts as
    this machine's hostname (HOST_NAME_MAX: 64 characters)."""
    allowed = (f"is not a fully qualified domain name of at most {MAX_HOSTNAME} characters "
               "(e.g. ca.lab.example: letters, digits, '-', at least two labels)")
    if not isinstance(value, str):
        raise AnswersError(key, value, allowed)
    name = value.strip().lower().rstrip(".")
    if "." not in name or len(name) > MAX_HOSTNAME or _dns_name_problem(name):
        raise AnswersError(key, value, allowed)
    return name


def check_listen_address(value, key="ca.address"):
    """A listen address in Go's form: ":443", "0.0.0.0:443", "[::]:443"; a bare port means all addresses."""
    allowed = "is not a listen address: use ':PORT' or 'IP:PORT' with a port 1-65535 (e.g. ':443')"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AnswersError(key, value, allowed)
    text = str(value).strip()
    host, separator, port = text.rpartition(":")
    if not separator:
        host, port = "", text
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise AnswersError(key, value, allowed)
    if int(port) == SSH_PORT:
        raise AnswersError(key, value, f"must not use port {SSH_PORT}: the appliance's SSH server listens there")
    if host:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            raise AnswersError(key, value, allowed) from None
        if getattr(address, "scope_id", None):
            raise AnswersError(key, value, "must not carry an IPv6 zone id (%...): it only means something on one host")
        host = f"[{address}]" if address.version == 6 else str(address)
    return f"{host}:{int(port)}"


def check_email(value, key="ca.provisioner"):
    """An email address (the first provisioner's name, like `step ca init`)."""
    allowed = "is not an email address (e.g. admin@lab.example)"
    if not isinstance(value, str):
        raise AnswersError(key, value, allowed)
    local, at, domain = value.strip().rpartition("@")
    domain = domain.lower()
    if not at or not _EMAIL_LOCAL.fullmatch(local) or ".." in local or _dns_name_problem(domain):
        raise AnswersError(key, value, allowed)
    return f"{local}@{domain}"


def _as_list(value):
    """Lists stay lists; a comma-separated string (OVF properties, the wizard) becomes one."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _ip_text(text):
    """An IP address as certificates carry it: normalised, an IPv4-mapped IPv6 address as IPv4."""
    address = ipaddress.ip_address(text)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def check_dns_names(value, key="ca.dns_names"):
    """The names and IP addresses the CA is reached at: DNS names or IPs, de-duplicated."""
    allowed = "must be a list of DNS names and IP addresses (e.g. [ca.lab.example, 192.168.70.10])"
    value = _as_list(value)
    if not isinstance(value, list):
        raise AnswersError(key, value, allowed)
    names = []
    for item in value:
        if not isinstance(item, str):
            raise AnswersError(key, item, allowed)
        text = item.strip().lower().rstrip(".")
        if "%" in text:
            raise AnswersError(key, item, "must not carry an IPv6 zone id (%...): certificates name no zones")
        try:
            text = _ip_text(text)
        except ValueError:
            problem = _dns_name_problem(text)
            if problem:
                raise AnswersError(key, item, f"is neither a DNS name nor an IP address ({problem})") from None
        if text not in names:
            names.append(text)
    return names


def check_ipv4_cidr(value, key="network.address"):
    """A host address with its prefix length, e.g. 192.168.70.10/24."""
    allowed = "is not an IPv4 host address with prefix length (e.g. 192.168.70.10/24)"
    if not isinstance(value, str) or "/" not in value:
        raise AnswersError(key, value, allowed)
    try:
        interface = ipaddress.IPv4Interface(value.strip())
    except ValueError:
        raise AnswersError(key, value, allowed) from None
    network = interface.network
    if interface.ip.is_unspecified or (
        network.prefixlen < 31 and interface.ip in (network.network_address, network.broadcast_address)
    ):
        raise AnswersError(key, value, f"{allowed}; not the network or broadcast address")
    return str(interface)


def check_ipv4(value, key):
    """One IPv4 address (a gateway or a DNS server)."""
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        raise AnswersError(key, value, "is not an IPv4 address (e.g. 192.168.70.1)") from None


def _ssh_fields(blob):
    """The SSH wire-format strings of a public key blob (RFC 4251 string: 4-byte length + bytes)."""
    fields, position = [], 0
    while position < len(blob):
        if position + 4 > len(blob):
            raise ValueError("truncated")
        length = int.from_bytes(blob[position:position + 4], "big")
        position += 4
        if length > len(blob) - position:
            raise ValueError("truncated")
        fields.append(blob[position:position + length])
        position += length
    return fields


_SSH_CURVES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}


def _ssh_key_problem(key_type, blob):
    """None when the blob is a whole public key of its type (and RSA of SSH_RSA_MIN_BITS at least)."""
    try:
        fields = _ssh_fields(blob)
    except ValueError:
        return "the key data is truncated"
    if not fields or fields[0] != key_type.encode():
        return "the key data does not match its type"
    rest = fields[1:]
    if key_type == "ssh-rsa":
        if len(rest) != 2:
            return "the key data is not an RSA public key (exponent and modulus)"
        exponent, modulus = (int.from_bytes(field, "big") for field in rest)
        if exponent < 3 or exponent % 2 == 0:
            return "the RSA public exponent is not usable"
        if modulus.bit_length() < SSH_RSA_MIN_BITS:
            return f"RSA keys need at least {SSH_RSA_MIN_BITS} bits (this one has {modulus.bit_length()})"
        return None
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        expected = 2 if key_type.startswith("sk-") else 1
        if len(rest) != expected or len(rest[0]) != 32:
            return "the key data is not an Ed25519 public key (32 bytes)"
        return None
    # ecdsa-sha2-nistpNNN and sk-ecdsa-sha2-nistp256@openssh.com: curve name, point[, application]
    curve = key_type.split("@")[0].rsplit("-", 1)[-1]
    expected = 3 if key_type.startswith("sk-") else 2
    if len(rest) != expected or rest[0] != curve.encode() or len(rest[1]) != _SSH_CURVES.get(curve):
        return "the key data is not an ECDSA public key on its curve"
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        ec.EllipticCurvePublicKey.from_encoded_point(
            {"nistp256": ec.SECP256R1(), "nistp384": ec.SECP384R1(), "nistp521": ec.SECP521R1()}[curve], rest[1])
    except ValueError:
        return "the ECDSA point is not on its curve"
    return None


def check_ssh_key(value, key="admin.ssh_authorized_keys"):
    """One OpenSSH public key line: '<type> <base64> [comment]', the key data a whole key of its type."""
    allowed = f"is not an OpenSSH public key: use '<type> <base64> [comment]' with a type of {', '.join(SSH_KEY_TYPES)}"
    if not isinstance(value, str) or not value.strip().isprintable():
        raise AnswersError(key, value, allowed)
    parts = value.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise AnswersError(key, value, allowed)
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise AnswersError(key, value, allowed) from None
    problem = _ssh_key_problem(parts[0], blob)
    if problem:
        raise AnswersError(key, value, f"{allowed} ({problem})")
    return " ".join(parts)


def check_ssh_keys(value, key="admin.ssh_authorized_keys"):
    """A list of OpenSSH public keys (one string is taken as one key)."""
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if value is None:
        return []
    if not isinstance(value, list):
        raise AnswersError(key, value, "must be a list of OpenSSH public keys")
    return [check_ssh_key(item, key) for item in value]


def _effective_length(value):
    """Characters that count for guessing: in a run of equal or consecutive characters (aaaa, abcd,
    4321) only the first two count, so a run adds almost nothing and a random password loses little."""
    count = min(len(value), 2)
    for index in range(2, len(value)):
        step = ord(value[index]) - ord(value[index - 1])
        if not (step in (-1, 0, 1) and step == ord(value[index - 1]) - ord(value[index - 2])):
            count += 1
    return count


def password_problem(value):
    """None when value is a usable typed password, else why not (never quoting it).

    The JWK provisioner's encrypted key is public (GET /1.0/provisioners) and can be attacked
    offline, so length alone is not enough: it also needs variety and no trivial pattern."""
    if not isinstance(value, str):
        return "must be text (quote it in YAML)"
    if len(value) < MIN_PASSWORD:
        return f"needs at least {MIN_PASSWORD} characters (or leave it empty to generate one)"
    if value != value.strip():
        # step-ca trims its password file: a key encrypted with the untrimmed one would never decrypt.
        return "must not begin or end with a space or tab"
    if not value.isprintable():
        return "must be one line of printable characters"
    if len(set(value)) < MIN_PASSWORD_DISTINCT:
        return (f"needs at least {MIN_PASSWORD_DISTINCT} different characters (the provisioner's encrypted "
                "key is public, so a weak password can be guessed offline)")
    if (value + value).find(value, 1) < len(value):
        return "must not be a shorter text repeated (it can be guessed offline)"
    if _effective_length(value) < MIN_PASSWORD:
        return (f"needs at least {MIN_PASSWORD} characters besides runs of equal or consecutive ones "
                "(aaaa, abcd, 4321 count as two: it can be guessed offline)")
    return None


def check_password(value, key="ca.password"):
    """None (generate one) or a one-line password of at least MIN_PASSWORD characters, not space-padded."""
    if value is None or value == "":
        return None
    problem = password_problem(value)
    if problem:
        # Never echo a password back, even a bad one.
        raise AnswersError(key, "<hidden>", f"is not a usable password: it {problem}; null generates one")
    return value


def check_ca_name(value, key="ca.name"):
    """The PKI name: certificate subjects are derived from it."""
    allowed = f"is not a PKI name: 1-{MAX_CA_NAME} printable characters (e.g. Lab CA)"
    if not isinstance(value, str):
        raise AnswersError(key, value, allowed)
    name = " ".join(value.split())
    if not name or len(name) > MAX_CA_NAME or not name.isprintable():
        raise AnswersError(key, value, allowed)
    return name


def check_user_name(value, key="admin.user"):
    """A Linux account name (the image's admin account; the build sets it from admin.user)."""
    if not isinstance(value, str) or not USER_NAME.fullmatch(value):
        raise AnswersError(key, value, "is not a Linux user name (lower case letters, digits, _ -; at most 32)")
    return value


def check_bool(value, key):
    """A yes/no answer: YAML booleans, or the words OVF properties and people use."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise AnswersError(key, value, "must be true or false")


def check_choice(value, key, choices):
    if value not in choices:
        raise AnswersError(key, value, f"must be one of {', '.join(choices)}")
    return value


def check_years(value, key, maximum=MAX_YEARS):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise AnswersError(key, value, f"must be a whole number of years from 1 to {maximum}")
    return value


def duration_seconds(value):
    """Seconds in a Go duration string such as "744h" or "1h30m"."""
    return sum(float(number) * _DURATION_SECONDS[unit] for number, unit in _GO_DURATION_PART.findall(value))


def check_duration(value, key):
    allowed = f"is not a Go duration (e.g. 744h, 24h, 90m) greater than zero and at most {MAX_DURATION_HOURS}h"
    if not isinstance(value, str) or not _GO_DURATION.fullmatch(value.strip()):
        raise AnswersError(key, value, allowed)
    if not 0 < duration_seconds(value.strip()) <= MAX_DURATION_HOURS * 3600:
        raise AnswersError(key, value, allowed)
    return value.strip()


def check_claims(value, key="ca.claims"):
    """Certificate lifetimes per provisioner kind: {acme|jwk: {default, max}}, default <= max."""
    if not isinstance(value, dict):
        raise AnswersError(key, value, "must be a mapping of acme and jwk to {default, max}")
    claims = {}
    for kind in ("acme", "jwk"):
        durations = value.get(kind)
        if not isinstance(durations, dict):
            allowed = "must be a mapping with default and max (e.g. {default: 744h, max: 4320h})"
            raise AnswersError(f"{key}.{kind}", durations, allowed)
        default = check_duration(durations.get("default"), f"{key}.{kind}.default")
        maximum = check_duration(durations.get("max"), f"{key}.{kind}.max")
        if duration_seconds(default) > duration_seconds(maximum):
            allowed = f"must not be longer than {key}.{kind}.max ({maximum})"
            raise AnswersError(f"{key}.{kind}.default", default, allowed)
        claims[kind] = {"default": default, "max": maximum}
    return claims


def check_name_constraints(value, key="ca.name_constraints"):
    """Permitted names for issued certificates: dns domains and ip networks; empty lists permit all."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise AnswersError(key, value, "must be a mapping with dns and ip lists")
    dns, ips = _as_list(value.get("dns") or []), _as_list(value.get("ip") or [])
    if not isinstance(dns, list):
        raise AnswersError(f"{key}.dns", dns, "must be a list of DNS domains (e.g. [lab.example])")
    if not isinstance(ips, list):
        raise AnswersError(f"{key}.ip", ips, "must be a list of IP networks (e.g. [192.168.70.0/24])")
    domains = []
    for item in dns:
        text = item.strip().lower() if isinstance(item, str) else item
        # A leading dot (".lab.example") means subdomains only, as in X.509 name constraints.
        if not isinstance(text, str) or _dns_name_problem(text.removeprefix(".")):
            raise AnswersError(f"{key}.dns", item, "is not a DNS domain (e.g. lab.example or .lab.example)")
        domains.append(text)
    networks = []
    for item in ips:
        allowed = "is not an IP network (e.g. 192.168.70.0/24)"
        if not isinstance(item, str):
            raise AnswersError(f"{key}.ip", item, allowed)
        if "%" in item:
            raise AnswersError(f"{key}.ip", item, "must not carry an IPv6 zone id (%...)")
        try:
            networks.append(str(ipaddress.ip_network(item.strip())))
        except ValueError:
            raise AnswersError(f"{key}.ip", item, allowed) from None
    return {"dns": domains, "ip": networks}


def check_x5c_roots(value, key="ca.x5c_roots", chain=(), bundle=x5c.TRUST_BUNDLES):
    """None (no X5C provisioner) or a PEM bundle of CA certificates from ANOTHER CA (the operator's).

    Whoever holds a certificate chaining to these roots may ask the X5C provisioner for any name,
    so x5c.check_roots refuses this CA's own chain, non-CA certificates and public roots."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise AnswersError(key, value, "must be a PEM bundle of CA certificates, or null for no X5C")
    count = len(x5c.pem_blocks(value))
    placeholder = Placeholder(f"<PEM, {len(value)} characters, {count} certificate{'s' * (count != 1)}>")
    try:
        return x5c.check_roots(value, chain, bundle)
    except x5c.X5CRefused as refused:
        raise AnswersError(key, placeholder, f"{refused}; or null for no X5C") from None


def own_chain(layout):
    """The PEM texts of the CA already under layout (root, intermediate): setup --force replaces it,
    and certificates it issued must not become X5C signers of the new CA either."""
    chain = []
    for path in (layout.root_cert, layout.intermediate_cert):
        try:
            chain.append(Path(path).read_bytes())
        except OSError:
            continue
    return chain


def refuse_own_chain(x5c_roots, chain, key="ca.x5c_roots"):
    """AnswersError when the X5C roots hold a certificate (or key) of this CA's chain (x5c.own_chain_problem)."""
    if not x5c_roots or not chain:
        return
    problem = x5c.own_chain_problem(x5c_roots, chain)
    if problem:
        raise AnswersError(key, Placeholder(f"<PEM, {len(x5c.pem_blocks(x5c_roots))} certificates>"),
                           f"{problem}; or null for no X5C")


def check_ntp(value, key="network.ntp"):
    """The time servers chrony uses, exactly: 1-MAX_NTP_SERVERS host names or IP addresses
    (de-duplicated), or None for the distribution's pool."""
    allowed = (f"must list 1 to {MAX_NTP_SERVERS} NTP servers (host names or IP addresses, e.g. "
               "[ntp1.lab.example, 192.168.70.1]), or be null for the distribution's pool")
    if value is None:
        return None
    value = _as_list(value)
    if not isinstance(value, list) or not value:
        raise AnswersError(key, value, allowed)
    servers = []
    for item in value:
        if not isinstance(item, str):
            raise AnswersError(key, item, allowed)
        text = item.strip().lower().rstrip(".")
        if "%" in text:
            raise AnswersError(key, item, "must not carry an IPv6 zone id (%...): chrony's server lines name none")
        try:
            text = str(ipaddress.ip_address(text))
        except ValueError:
            problem = _dns_name_problem(text)
            if problem:
                raise AnswersError(key, item, f"is neither a host name nor an IP address ({problem})") from None
        if text not in servers:
            servers.append(text)
    if len(servers) > MAX_NTP_SERVERS:
        raise AnswersError(key, value, allowed)
    return servers


def check_network(value, key="network"):
    """DHCP, or a static IPv4 address/prefix with a gateway and DNS servers; either way the time
    servers (network.ntp)."""
    if value is None:
        value = {"mode": "dhcp"}
    if not isinstance(value, dict):
        raise AnswersError(key, value, "must be a mapping: {mode: dhcp} or {mode: static, address, gateway, dns}")
    mode = check_choice(value.get("mode", "dhcp"), f"{key}.mode", NETWORK_MODES)
    # ntp only when given: a seed's network (sources.py) must not set it to null over the defaults'
    time = {"ntp": check_ntp(value["ntp"], f"{key}.ntp")} if "ntp" in value else {}
    if mode == "dhcp":
        return {"mode": "dhcp", **time}
    address = check_ipv4_cidr(value.get("address"), f"{key}.address")
    gateway = check_ipv4(value.get("gateway"), f"{key}.gateway")
    subnet = ipaddress.IPv4Interface(address).network
    if ipaddress.IPv4Address(gateway) not in subnet or gateway == address.split("/")[0]:
        raise AnswersError(f"{key}.gateway", gateway, f"must be another address inside {subnet}")
    servers = _as_list(value.get("dns") or [])
    if not isinstance(servers, list) or not servers:
        raise AnswersError(f"{key}.dns", value.get("dns"), "must list at least one DNS server address")
    servers = [check_ipv4(server, f"{key}.dns") for server in servers]
    return {"mode": "static", "address": address, "gateway": gateway, "dns": servers, **time}


# ---- whole-tree checks: unknown keys and control characters, in every source alike ----


def known_keys(defaults=None):
    """The answers keys that exist, as a key tree: schema.yaml's keys, and only those.

    Contract: a key is added to overlay/usr/lib/ca-appliance/schema.yaml (with `secret:`) and read in
    validate(); a test checks that every schema key is validated and every defaults.yaml key is in the
    schema. Anything else is refused with the closest known key, so a typo never silently falls back
    to a default. (`defaults` is accepted for callers of the older signature and ignored.)"""
    return schema.key_tree()


def check_known_keys(raw, known, path=""):
    """Refuse a key that is not in the known key tree, naming it and the closest known one, never its value."""
    for key, value in raw.items():
        dotted = f"{path}.{_key_text(key)}" if path else _key_text(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), [str(name) for name in known], n=1, cutoff=0.6)
            hint = f"did you mean {path + '.' if path else ''}{close[0]}?" if close else \
                f"known keys here: {', '.join(str(name) for name in known)}"
            raise AnswersError(dotted, Placeholder(schema.NOT_SHOWN), f"is an unknown key ({hint})")
        if isinstance(known[key], dict) and isinstance(value, dict):
            check_known_keys(value, known[key], dotted)


_CONTROL_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


def check_no_control_characters(value, path=""):
    """Refuse control and format characters in every string (they reach /etc/issue, ca.json, logs)."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_no_control_characters(item, f"{path}.{_key_text(key)}" if path else _key_text(key))
    elif isinstance(value, list):
        for item in value:
            check_no_control_characters(item, path)
    elif isinstance(value, str):
        allowed = "\r\n" if path in MULTILINE_KEYS else ""
        bad = next((char for char in value
                    if unicodedata.category(char) in _CONTROL_CATEGORIES and char not in allowed), None)
        if bad is not None:
            raise AnswersError(path, value, f"must not contain control characters (found U+{ord(bad):04X})")


def check_join(value, key="join"):
    """None (a new CA), or {backup: FILE[, passphrase: ...]}: become another node of the CA that FILE backs up."""
    if value is None or value == {} or value == {"backup": None}:
        return None
    allowed = "must be {backup: FILE, passphrase: ...} (a `ca-appliance backup` of a node of the CA to join)"
    if not isinstance(value, dict):
        raise AnswersError(key, value, allowed)
    if not isinstance(value.get("backup"), str) or not value["backup"].strip():
        raise AnswersError(f"{key}.backup", value.get("backup"), allowed)
    passphrase = value.get("passphrase")
    if passphrase is not None and not isinstance(passphrase, str):
        raise AnswersError(f"{key}.passphrase", "<hidden>", "must be text (quote it in YAML)")
    return {"backup": value["backup"].strip(), "passphrase": passphrase}


def secrets_present(raw):
    """The schema's secret keys that raw answers set (to anything but null or empty): sorted."""
    found = []
    for dotted in SECRET_KEYS:
        node = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node not in (None, ""):
            found.append(dotted)
    # restore: FILE and join given as text hold no secret; a DSN given as ca.database's text is one.
    ca = raw.get("ca") if isinstance(raw, dict) else None
    if isinstance(ca, dict) and isinstance(ca.get("database"), str) and ca["database"] not in database.TYPES:
        found.append("ca.database")
    return sorted(found)


def _check_database_shape(value, key="ca.database"):
    """A DSN given as ca.database's text (not under ca.database.dsn) is refused without showing it."""
    if isinstance(value, str) and value.strip() not in database.TYPES:
        raise AnswersError(key, "<hidden>", f"must be one of {', '.join(database.TYPES)} or a mapping "
                           "{type: mysql, dsn: ..., database: ...} (a DSN goes under ca.database.dsn)")
    return value


def check_admin_user(raw, defaults):
    """admin.user names the image's admin account (made at build time, the only one sshd lets in):
    an answer naming another user would lock the admin out, so it must match."""
    image_admin = check_user_name(((defaults or {}).get("admin") or {}).get("user", "admin"), "admin.user")
    admin = raw.get("admin") if isinstance(raw, dict) else None
    if isinstance(admin, dict) and admin.get("user") is not None:
        user = check_user_name(admin["user"], "admin.user")
        if user != image_admin:
            raise AnswersError("admin.user", user, f"must be this image's admin account ({image_admin!r}): the "
                               "account is made when the image is built (build config admin.user)")
    return image_admin


def validate(raw, defaults, chain=()):
    """A new, complete, normalized answers dict: raw merged over defaults, every value checked.
    chain: this CA's own certificates when they exist (X5C must not trust them)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AnswersError("(answers)", Placeholder(f"<{type(raw).__name__}>"),
                           "must be a mapping of hostname, network, ca, admin")
    check_known_keys(raw, known_keys())
    for section in ("ca", "admin"):
        if section in raw and raw[section] is not None and not isinstance(raw[section], dict):
            raise AnswersError(section, raw[section], "must be a mapping")
    admin_user = check_admin_user(raw, defaults)
    # A top-level null (e.g. "network:" left empty) means "use the default".
    merged = deep_merge(defaults or {}, {key: value for key, value in raw.items() if value is not None})
    check_known_keys(merged, known_keys())  # the defaults too: a key the schema lacks would be dropped silently
    check_no_control_characters(merged)
    ca = merged.get("ca") or {}
    admin = merged.get("admin") or {}

    hostname = check_fqdn(merged.get("hostname"), "hostname")
    root_years = check_years(ca.get("root_years"), "ca.root_years")
    return {
        "hostname": hostname,
        "network": check_network(merged.get("network"), "network"),
        "ca": {
            "name": check_ca_name(ca.get("name"), "ca.name"),
            "dns_names": check_dns_names(ca.get("dns_names") or [], "ca.dns_names") or [hostname],
            "address": check_listen_address(ca.get("address"), "ca.address"),
            "provisioner": check_email(ca.get("provisioner"), "ca.provisioner"),
            "password": check_password(ca.get("password"), "ca.password"),
            "ssh": check_bool(ca.get("ssh"), "ca.ssh"),
            "key_type": check_choice(ca.get("key_type"), "ca.key_type", KEY_TYPES),
            "root_key": check_choice(ca.get("root_key"), "ca.root_key", ROOT_KEY_MODES),
            "root_years": root_years,
            # An intermediate must not outlive the root that signs it.
            "intermediate_years": check_years(ca.get("intermediate_years"), "ca.intermediate_years", root_years),
            "name_constraints": check_name_constraints(ca.get("name_constraints"), "ca.name_constraints"),
            "claims": check_claims(ca.get("claims"), "ca.claims"),
            "x5c_roots": check_x5c_roots(ca.get("x5c_roots"), "ca.x5c_roots", chain),
            "database": database.validate(_check_database_shape(ca.get("database"))),
        },
        "join": check_join(merged.get("join")),
        "admin": {
            "user": admin_user if admin.get("user") is None else check_user_name(admin.get("user"), "admin.user"),
            "ssh_authorized_keys": check_ssh_keys(admin.get("ssh_authorized_keys"), "admin.ssh_authorized_keys"),
        },
    }
