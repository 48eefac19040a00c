"""The appliance configuration: parsed, merged and validated in one place, then passed around frozen.

appliance.yaml (the documented defaults) is loaded first; a user file given with --config is
deep-merged over it. Every leaf is checked against SCHEMA; the result is a Config whose sections
read as attributes (cfg.image.memory_mb) and cannot be changed.
"""
from __future__ import annotations

import base64
import difflib
import functools
import hashlib
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from image.bases import base_names
from image.errors import StepFailed, UserError
from image.formats import format_names
from image.runner import probe

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "appliance.yaml"
# The guest's package directory: its answers rules are run (never imported) to check what a build bakes.
GUEST_LIB = PROJECT_ROOT / "overlay/usr/lib/ca-appliance"

# The answers schema both worlds read (guest: ca_appliance/schema.py): limits, choices, secret flags.
ANSWERS_SCHEMA_FILE = GUEST_LIB / "schema.yaml"

BASES = base_names()   # image/bases/__init__.py's REGISTRY; image.base's check asks it at each load
FORMATS = format_names()   # image/formats.py's table (vhdx: Hyper-V, docs/importing.md)

# The strict loader's limits, the same as the guest's safeyaml (a test feeds both the same documents).
MAX_YAML_BYTES = 256 * 1024
MAX_YAML_DEPTH = 16


class _Shown(str):
    """A value already rendered for an error message (the guest's verdict, or a placeholder)."""

    def __repr__(self):
        return str(self)


NOT_SHOWN = _Shown("<not shown>")


class ConfigError(UserError):
    """One line: the key, its value only when the schema declares the key non-secret, what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        self.shown = shown_for(key, value)
        super().__init__(f"config error: {key}: {self.shown} {allowed}")


# --- leaf checks: each takes (key, value) and returns the normalized value or raises ConfigError


@dataclass(frozen=True)
class Check:
    describe: str | Callable[[], str]   # what is allowed, for the error message (a callable: read when shown)
    convert: Callable[[Any], Any]       # returns the normalized value or raises ValueError
    optional: bool = False              # null allowed
    secret: bool = False                # never shown in a message

    def __call__(self, key: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        try:
            return self.convert(value)
        except (ValueError, TypeError):
            raise ConfigError(key, value, self.describe() if callable(self.describe) else self.describe) from None


def _int(lo: int, hi: int | None = None):
    def convert(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError
        if v < lo or (hi is not None and v > hi):
            raise ValueError
        return v
    return convert


def integer(lo: int, hi: int | None = None, unit: str = "") -> Check:
    bounds = f"at least {lo}" if hi is None else f"{lo} to {hi}"
    return Check(f"is not an integer ({unit + ', ' if unit else ''}{bounds})", _int(lo, hi))


def one_of(*choices: str) -> Check:
    def convert(v):
        if v not in choices:
            raise ValueError
        return v
    return Check(f"is not one of: {', '.join(choices)}", convert)


def registered_base() -> Check:
    """image.base: a base of image.bases' registry (as it is when the config is loaded)."""
    def convert(v):
        if not isinstance(v, str) or v not in base_names():
            raise ValueError
        return v
    return Check(lambda: f"is not one of: {', '.join(base_names())}", convert)


def boolean() -> Check:
    def convert(v):
        if not isinstance(v, bool):
            raise ValueError
        return v
    return Check("is not a boolean (true or false)", convert)


def text(pattern: str, describe: str, optional: bool = False) -> Check:
    rx = re.compile(pattern)

    def convert(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)  # YAML reads 1.0 or 45 as numbers where a string was meant
        if not isinstance(v, str) or not rx.fullmatch(v):
            raise ValueError
        return v
    return Check(describe, convert, optional)


def list_of(item: Callable[[Any], Any], describe: str, allow_empty: bool = True) -> Check:
    def convert(v):
        if not isinstance(v, list) or (not v and not allow_empty):
            raise ValueError
        return tuple(item(x) for x in v)
    return Check(describe, convert)


def _url(v):
    if not isinstance(v, str) or not re.fullmatch(r"(https?|file)://\S+", v):
        raise ValueError
    return v.rstrip("/")


def _sha256(v):
    if not isinstance(v, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", v):
        raise ValueError
    return v.lower()


def _path(v):
    if not isinstance(v, str) or not v:
        raise ValueError
    return str(Path(v).expanduser())


def _existing_file(v):
    p = Path(_path(v))
    if not p.is_file():
        raise ValueError
    return str(p)


_HOST_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = rf"{_HOST_LABEL}(\.{_HOST_LABEL})*"


def _dns_or_ip(v):
    if not isinstance(v, str):
        raise ValueError
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        if re.fullmatch(_DNS_NAME, v) and len(v) <= 253:
            return v.lower()
        raise


def _dns_domain(v):
    if not isinstance(v, str) or not re.fullmatch(r"\.?" + _DNS_NAME, v):
        raise ValueError
    return v.lower()


def _ip_network(v):
    return str(ipaddress.ip_network(v, strict=True))


def _listen_address(v):
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[0-9.]*|[A-Za-z0-9.-]*):(\d{1,5})", v) if isinstance(v, str) else None
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ValueError
    return v


def _duration_hours(v):
    if not isinstance(v, str) or not re.fullmatch(r"[1-9]\d*h", v):
        raise ValueError
    return v


def _ssh_key(v):
    # The shape only; the guest's rules (run by check_with_guest_rules) check the key data itself.
    if not isinstance(v, str) or v.strip().split(" ", 1)[0] not in SSH_KEY_TYPES or not re.fullmatch(
            r"\S+ [A-Za-z0-9+/=]+( .*)?", v.strip()):
        raise ValueError
    return v.strip()


def _crypt_hash(v):
    if not isinstance(v, str) or not re.fullmatch(r"\$(1|5|6|y|2[aby]|gy|7)\$\S+", v):
        raise ValueError
    return v


def _formats(v):
    if not isinstance(v, list) or not v or any(f not in FORMATS for f in v):
        raise ValueError
    return tuple(dict.fromkeys(v))


DURATION = Check("is not a duration in hours (e.g. 744h)", _duration_hours)
NAME = text(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", "is not a file-name-safe name (letters, digits, . _ -; at most 63)")
VERSION = text(r"\d+(\.\d+){1,3}", "is not a release version like 0.30.2")
SHA256 = Check("is not a SHA-256 digest (64 hex digits)", _sha256, optional=True)
URL = Check("is not an http(s):// or file:// URL", _url)
LOCAL_PATH = Check("is not an existing file", _existing_file, optional=True)


class _Refused(yaml.MarkedYAMLError):
    pass


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the guest's rules (ca_appliance/safeyaml.py): no anchors, aliases or
    merge keys (a few bytes can expand to gigabytes), no duplicate or unhashable keys (the second
    would silently win), nesting at most MAX_YAML_DEPTH; read_yaml adds the size limit."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(problem="anchors and aliases (& and *) are not allowed", problem_mark=event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(problem=f"nesting deeper than {MAX_YAML_DEPTH} levels is not allowed",
                               problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused(problem="merge keys (<<) are not allowed", problem_mark=key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise _Refused(problem="a key must be a plain value", problem_mark=key_node.start_mark) from None
            if duplicate:
                raise _Refused(problem="a key appears twice in this mapping", problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep)


def loads_yaml(data: bytes | str, what: str) -> Any:
    """The YAML document in data by the strict rules, or UserError with one line that quotes none of it."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_YAML_BYTES:
        raise UserError(f"{what} is larger than {MAX_YAML_BYTES} bytes")
    try:
        text_ = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} is not UTF-8 text (byte {e.start})") from None
    loader = None
    try:
        loader = StrictLoader(text_)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        # Line and column only: the parser's message may quote the line, and a line may hold a secret.
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = re.sub(r"'[^']*'|\"[^\"]*\"", "...", str(getattr(e, "problem", "") or ""))
        detail = f" ({problem})" if re.fullmatch(r"[A-Za-z0-9 <>(),.&*!-]{1,100}", problem) else ""
        raise UserError(f"{what} is not valid YAML{where}{detail}") from None
    except yaml.reader.ReaderError as e:
        raise UserError(f"{what} is not valid YAML (a control character YAML does not allow, "
                        f"at character {e.position})") from None
    except yaml.YAMLError:
        raise UserError(f"{what} is not valid YAML") from None
    except (ValueError, OverflowError, RecursionError):  # e.g. an integer of more digits than Python converts
        raise UserError(f"{what} holds a value that can't be read (a number too large?)") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{what}: {str(path)!r} does not exist") from None
    except OSError as e:
        raise UserError(f"{what}: {str(path)!r} cannot be read ({e.strerror})") from None
    loaded = loads_yaml(data, f"{what}: {str(path)!r}")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{what}: {str(path)!r} is not a YAML mapping of sections")
    return loaded


def _load_answers_schema() -> dict:
    data = read_yaml(ANSWERS_SCHEMA_FILE, "answers schema")
    if not isinstance(data.get("keys"), dict) or not isinstance(data.get("limits"), dict):
        raise UserError(f"answers schema: {str(ANSWERS_SCHEMA_FILE)!r} must be a mapping with limits and keys")
    return data


ANSWERS_SCHEMA = _load_answers_schema()
ANSWER_LIMITS = ANSWERS_SCHEMA["limits"]
KEY_TYPES = tuple(ANSWER_LIMITS["key_types"])
SSH_KEY_TYPES = tuple(ANSWER_LIMITS["ssh_key_types"])
USER_NAME_PATTERN = ANSWER_LIMITS["user_name_pattern"]
CA_NAME_MAX = ANSWER_LIMITS["ca_name_max"]
YEARS_MAX = ANSWER_LIMITS["years_max"]


# The whole schema: every key a config may have, with its check. One place for each rule; the ca and
# admin limits come from the answers schema the appliance applies at first boot.
SCHEMA: dict[str, Any] = {
    "image": {
        "name": NAME,
        "version": text(r"[0-9A-Za-z][0-9A-Za-z.+~-]{0,31}", "is not a version (letters, digits, . + ~ -)"),
        "base": registered_base(),
        "disk_gb": integer(4, 2048, "GiB"),
        "cpus": integer(1, 64),
        "memory_mb": integer(1024, 1048576, "MiB"),
        "formats": Check(f"is not a non-empty list of: {', '.join(FORMATS)}", _formats),
    },
    "fedora": {
        "release": integer(40, 99),
        "mirror": URL,
    },
    "debian": {
        "suite": one_of("bookworm", "trixie"),
        "mirror": URL,
    },
    "ova": {
        "virtual_system_type": text(r"vmx-\d{1,2}", "is not a VMware hardware version like vmx-13"),
        "firmware": one_of("bios", "efi"),
    },
    "artifacts": {
        "step_ca": {"version": VERSION, "url": URL, "sha256": SHA256, "path": LOCAL_PATH},
        "step_cli": {"version": VERSION, "url": URL, "sha256": SHA256, "path": LOCAL_PATH, "enabled": boolean()},
    },
    "ca": {
        "name": text(rf"\S.{{0,{CA_NAME_MAX - 1}}}", f"is not a PKI name: 1-{CA_NAME_MAX} characters"),
        "dns_names": list_of(lambda v: _dns_or_ip(v), "is not a list of DNS names and IP addresses"),
        "address": Check("is not a listen address like :443 or 0.0.0.0:8443 (port 1-65535)", _listen_address),
        "provisioner": text(r"[^@\s]+@[^@\s]+\.[^@\s]+", "is not an email address"),
        "ssh": boolean(),
        "key_type": one_of(*KEY_TYPES),
        "root_key": one_of(*ANSWER_LIMITS["root_key_modes"]),
        "root_years": integer(1, YEARS_MAX, "years"),
        "intermediate_years": integer(1, YEARS_MAX, "years"),
        "name_constraints": {
            "dns": list_of(_dns_domain, "is not a list of DNS domains"),
            "ip": list_of(_ip_network, "is not a list of IP networks like 192.168.70.0/24"),
        },
        "claims": {
            "acme": {"default": DURATION, "max": DURATION},
            "jwk": {"default": DURATION, "max": DURATION},
        },
    },
    "admin": {
        "user": text(USER_NAME_PATTERN, "is not a Linux user name (lower case, at most 32)"),
        "ssh_authorized_keys": list_of(_ssh_key, "is not a list of SSH public keys (type base64 [comment])"),
        "password_hash": Check("is not a crypt(3) hash like $6$salt$hash (plaintext passwords are refused)",
                               _crypt_hash, optional=True, secret=True),
    },
    "firstboot": {
        "mode": one_of("interactive", "unattended"),
        "answers": LOCAL_PATH,
    },
    "updates": {
        "security": boolean(),
    },
    "page": {
        "enabled": boolean(),
    },
}


def _schema_entry(key: str) -> Any:
    node: Any = SCHEMA
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def shown_for(key: str, value: Any) -> str:
    """What a message may show of a config value: only a non-secret key's (an allow-list: both the
    build schema's secret flag and the answers schema's must say non-secret); a section's value by
    its type; an unknown key's never."""
    if isinstance(value, _Shown):
        return str(value)
    entry = _schema_entry(key) if isinstance(key, str) else None
    answers_entry = ANSWERS_SCHEMA["keys"].get(key)
    if isinstance(answers_entry, dict) and answers_entry.get("secret") is True:
        return "<hidden>"
    if isinstance(entry, Check) and not entry.secret:
        if isinstance(value, dict):
            return "{...}"
        text_ = repr(value)
        return text_ if len(text_) <= 80 else text_[:77] + "..."
    if isinstance(entry, dict) or key == "":
        return f"<{type(value).__name__}>"
    return "<hidden>"


class Section:
    """A frozen, attribute-access view of one validated mapping."""

    __slots__ = ("_path", "_items")

    def __init__(self, path: str, items: dict):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_items", dict(items))

    def __getattr__(self, name):
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(f"{self._path or 'config'} has no key {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("the configuration is frozen")

    def __getitem__(self, name):
        return self._items[name]

    def __iter__(self):
        return iter(self._items)

    def __eq__(self, other):
        return isinstance(other, Section) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self):
        return f"Section({self._path or 'config'}: {self.to_dict()!r})"

    def to_dict(self) -> dict:
        def plain(v):
            if isinstance(v, Section):
                return v.to_dict()
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v
        return {k: plain(v) for k, v in self._items.items()}


class Config(Section):
    """The whole validated configuration."""

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: the build manifest records it."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def deep_merge(base: dict, over: dict) -> dict:
    """A new dict: `over` merged into `base`, mappings recursively, everything else replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 64 else repr(key)[:40]


def _validate(schema: dict, data: Any, path: str) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(path, data, "is not a mapping of keys")
    for key in data:
        dotted = f"{path}.{key}" if path else _key_text(key)
        if key not in schema and ANSWERS_SCHEMA["keys"].get(dotted, {}).get("secret") is True:
            # a DSN or password: never baked into an image
            raise ConfigError(dotted, NOT_SHOWN, "is not a build setting: a secret is answered on the appliance "
                              "at first boot, never baked into the image (docs/security.md)")
        if dotted == "ca.database":
            raise ConfigError("ca.database", NOT_SHOWN, "is not a build setting: answer it on the appliance "
                              "(first-boot answers; README: Several appliances)")
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(schema)}"
            raise ConfigError(dotted, NOT_SHOWN, f"is an unknown key ({hint})")
    out = {}
    for key, rule in schema.items():
        sub = f"{path}.{key}" if path else key
        if key not in data:
            raise ConfigError(sub, None, "is missing")
        if isinstance(rule, dict):
            out[key] = Section(sub, _validate(rule, data[key], sub))
        else:
            out[key] = rule(sub, data[key])
    return out


def _cross_checks(cfg: Config) -> None:
    for section in ("acme", "jwk"):
        c = cfg.ca.claims[section]
        if int(c.default[:-1]) > int(c.max[:-1]):
            raise ConfigError(f"ca.claims.{section}.default", c.default,
                              f"is longer than ca.claims.{section}.max ({c.max})")
    if cfg.firstboot.mode == "unattended" and cfg.firstboot.answers is None:
        raise ConfigError("firstboot.answers", None,
                          "is required when firstboot.mode is unattended (an answers YAML file)")


def load_config(user_file: str | Path | None = None, overrides: dict | None = None) -> Config:
    """appliance.yaml, with the user's file and then `overrides` (e.g. {'image': {'base': 'debian'}})
    deep-merged over it, validated and frozen."""
    data = read_yaml(DEFAULTS_FILE, "defaults")
    if user_file is not None:
        data = deep_merge(data, read_yaml(Path(user_file), "--config"))
    if overrides:
        data = deep_merge(data, overrides)
    cfg = Config("", _validate(SCHEMA, data, ""))
    _cross_checks(cfg)
    check_with_guest_rules(cfg)
    return cfg


# --- one set of answer rules: the guest's own validator decides what the image may bake


def baked_defaults(cfg: Config) -> dict:
    """The answers defaults the build bakes over the overlay's defaults.yaml (payload.guest_defaults)."""
    return {"ca": cfg.ca.to_dict(),
            "admin": {"user": cfg.admin.user, "ssh_authorized_keys": list(cfg.admin.ssh_authorized_keys)}}


@functools.lru_cache(maxsize=64)
def _run_guest_check(request_json: str) -> str:
    pythonpath = os.pathsep.join(p for p in (str(GUEST_LIB), os.environ.get("PYTHONPATH")) if p)
    # exit 2 is a verdict (on stdout), not a failure: a probe, judged here
    result = probe([sys.executable, "-B", "-m", "ca_appliance.buildcheck"], input=request_json, timeout=120,
                   env={"PYTHONPATH": pythonpath})
    if result is None:
        raise StepFailed("checking the answers with the appliance's rules",
                         f"{sys.executable} -m ca_appliance.buildcheck did not run or answer within 120 s")
    if result.returncode not in (0, 2) or not result.stdout.strip():
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StepFailed("checking the answers with the appliance's rules", detail)
    return result.stdout


def guest_rules_check(defaults: dict | None = None, baked: tuple[str, bytes] | None = None) -> dict:
    """Run the guest's ca_appliance.buildcheck on defaults (and a baked answers file): its limits, or
    ConfigError with the guest's one-line verdict (key, value shown as the guest shows it, what is allowed)."""
    request = {"defaults": defaults or {}, "baked_answers": None}
    if baked is not None:
        request["baked_answers"] = {"name": baked[0], "base64": base64.b64encode(baked[1]).decode()}
    reply = json.loads(_run_guest_check(json.dumps(request, sort_keys=True)))
    if "error" in reply:
        error = reply["error"]
        raise ConfigError(error["key"], _Shown(error["shown"]), error["message"])
    return reply["limits"]


def guest_limits() -> dict:
    """The guest's answer limits (e.g. ca_name_max, which the OVA's MaxLen repeats)."""
    return guest_rules_check()


def check_with_guest_rules(cfg: Config) -> None:
    """The ca/admin defaults and the baked answers file, checked by the rules first boot applies:
    a build never bakes what the appliance would refuse (a 60-character ca.name, a host:443 address)."""
    baked = None
    if cfg.firstboot.answers:
        path = Path(cfg.firstboot.answers)
        try:
            baked = (str(path), path.read_bytes())
        except OSError as e:
            raise ConfigError("firstboot.answers", str(path), f"cannot be read ({e.strerror})") from None
    guest_rules_check(baked_defaults(cfg), baked)


def leaf_keys(schema: dict = SCHEMA, prefix: str = "") -> list[str]:
    """Every dotted key path of the schema, in order (the README reference is checked against it)."""
    keys = []
    for k, v in schema.items():
        p = f"{prefix}.{k}" if prefix else k
        keys.extend(leaf_keys(v, p) if isinstance(v, dict) else [p])
    return keys
