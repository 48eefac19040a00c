"""The one schema of the answers (../schema.yaml): which keys exist, which are secret, their limits.

The builder reads the same file (image/config.py), so a limit or a secret flag is written once.
A value is shown in a message only when its key is declared `secret: false` here (an allow-list):
an unknown key, a secret key, or a section holding a mapping never has its value printed.
"""

import re
from pathlib import Path

from . import safeyaml

SCHEMA_RELATIVE_PATH = Path("usr/lib/ca-appliance/schema.yaml")
PACKAGED_SCHEMA = Path(__file__).resolve().parent.parent / "schema.yaml"

# What a message shows instead of a value it must not print (or has no useful text for).
NOT_SHOWN = "<not shown>"


class Placeholder(str):
    """Text the code put where a value would go (e.g. '<hidden>', '<PEM, 3 certificates>'): shown as is."""


def _load(path=PACKAGED_SCHEMA):
    data = safeyaml.load_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), dict) or not isinstance(data.get("limits"), dict):
        raise safeyaml.YAMLInputError(str(path), "must be a mapping with `limits` and `keys`")
    for key, entry in data["keys"].items():
        if not isinstance(key, str) or not isinstance(entry, dict) or not (
                entry.get("section") is True or isinstance(entry.get("secret"), bool)):
            raise safeyaml.YAMLInputError(str(path), f"key {key!r} needs `secret: true|false` or `section: true`")
    return data


_SCHEMA = _load()
KEYS = _SCHEMA["keys"]
LIMITS = _SCHEMA["limits"]


def is_section(key):
    return isinstance(KEYS.get(key), dict) and KEYS[key].get("section") is True


def is_shown(key):
    """True only for a key the schema declares `secret: false` (the allow-list)."""
    entry = KEYS.get(key) if isinstance(key, str) else None
    return isinstance(entry, dict) and entry.get("secret") is False


def secret_keys():
    return tuple(key for key, entry in KEYS.items() if entry.get("secret") is True)


def leaf_keys():
    return tuple(key for key in KEYS if not is_section(key))


def key_tree():
    """{key: subtree or None}: the known keys, nested by their dots."""
    tree = {}
    for dotted in KEYS:
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if is_section(dotted):
            node.setdefault(leaf, {})
        else:
            node[leaf] = None
    return tree


def prompt(key):
    return KEYS.get(key, {}).get("prompt") or key


_PLACEHOLDER = re.compile(r"<[a-z][a-z ]{0,20}>")


def shown(value, limit=80):
    """A value as a message shows it: repr (control characters escaped), one line, shortened."""
    if isinstance(value, Placeholder):
        return str(value)[:limit]
    if isinstance(value, dict):
        return "{...}"  # a mapping may hold a secret under any name
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_for(key, value, limit=80):
    """What a message about `key` may show of `value`: the value only when the key is declared
    non-secret; a section's mapping as {...}, its scalar by type (a DSN given where a mapping
    belongs stays unseen); code placeholders such as <hidden> as they are; otherwise <hidden>."""
    if isinstance(value, Placeholder) or (isinstance(value, str) and type(value) is str
                                          and _PLACEHOLDER.fullmatch(value) and value in _CODE_PLACEHOLDERS):
        return str(value)
    if is_shown(key):
        if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
            return "[...]"
        return shown(value, limit)
    if is_section(key):
        scalar = KEYS[key].get("scalar")
        if isinstance(value, str) and scalar and is_shown(f"{key}.{scalar}"):
            return shown(value, limit)
        if isinstance(value, dict):
            return "{...}"
        return f"<{type(value).__name__}>"
    return "<hidden>"


class AnswersError(ValueError):
    """A bad answer: names the key, the value (only when schema.yaml declares the key non-secret)
    and what is allowed, in one line."""

    # True for errors about a source (key: where the answers came from, value: a path or device)
    names_a_source = False

    def __init__(self, key, value, message):
        self.key = key
        self.value = value
        self.message = message
        self.shown_value = shown_source(value) if self.names_a_source else shown_for(key, value)
        super().__init__(f"answers error: {key}: {self.shown_value} {message}")


class SourceProblem(AnswersError):
    """The answers text itself can't be used (not YAML, empty, too large): key is where it came from."""

    names_a_source = True


def shown_source(value, limit=80):
    """A value as error messages show it: repr (control characters escaped), one line, shortened."""
    if isinstance(value, str) and re.fullmatch(r"<[a-z]+>", value):  # <hidden>, <input>, <empty>...
        return value
    return shown(value, limit)


# The placeholders the guest's modules pass as plain strings (none of them is a user's value).
_CODE_PLACEHOLDERS = frozenset(("<hidden>", "<input>", "<empty>", "<file>", "<xml>", "<missing>", "<not shown>"))
