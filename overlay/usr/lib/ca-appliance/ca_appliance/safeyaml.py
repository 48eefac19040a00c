"""The one YAML loader for everything the appliance reads as YAML (answers from every source, defaults).

Answers come from places an attacker may write (a seed volume, a hypervisor's credential, an
OVF environment), so beyond yaml.SafeLoader this loader refuses:
  - inputs over MAX_BYTES, and nesting deeper than MAX_DEPTH (no memory or recursion blow-up);
  - anchors, aliases and merge keys (a 534-byte alias bomb expands to gigabytes);
  - duplicate keys (the second would silently win);
and its errors give the line and column only: a YAML error message quotes the offending line,
which may hold a password.
"""

import re

import yaml
from yaml.events import AliasEvent

# Answers are a few hundred bytes; the largest honest ones hold some SSH keys.
MAX_BYTES = 256 * 1024
MAX_DEPTH = 16
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLInputError(ValueError):
    """Input that is not YAML this loader accepts: `where` and `message` (no content of the input)."""

    def __init__(self, where, message):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


class _Refused(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(problem="anchors and aliases (& and *) are not allowed", problem_mark=event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(problem=f"nesting deeper than {MAX_DEPTH} levels is not allowed",
                               problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                raise _Refused(problem="merge keys (<<) are not allowed", problem_mark=key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise _Refused(problem="a key must be a plain value", problem_mark=key_node.start_mark) from None
            if duplicate:
                raise _Refused(problem="a key appears twice in this mapping", problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep=deep)




def _problem_without_content(error):
    """The parser's problem, with anything it quotes from the input (characters, tags) left out."""
    problem = str(getattr(error, "problem", "") or "")
    problem = re.sub(r"'[^']*'|\"[^\"]*\"", "...", problem)
    return problem if re.fullmatch(r"[A-Za-z0-9 <>(),.&*!-]{1,100}", problem) else ""


def loads(text, where):
    """The YAML document in text (str or bytes), or None for an empty one; YAMLInputError when refused."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise YAMLInputError(where, f"is larger than {MAX_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise YAMLInputError(where, f"is not UTF-8 text (byte {error.start})") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YAMLInputError(where, f"is larger than {MAX_BYTES} bytes")
    loader = None
    try:
        loader = _StrictLoader(text)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _problem_without_content(error)
        raise YAMLInputError(where, f"is not valid YAML{position}" + (f" ({problem})" if problem else "")) from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise YAMLInputError(where, f"is not valid YAML at line {line}, column {column} "
                                    "(a control character YAML does not allow)") from None
    except yaml.YAMLError:
        raise YAMLInputError(where, "is not valid YAML") from None
    except (ValueError, OverflowError, RecursionError):  # e.g. an integer of more digits than Python converts
        raise YAMLInputError(where, "holds a value that can't be read (a number too large?)") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path, where=None):
    """The YAML document in the file at path (read at most MAX_BYTES + 1 bytes)."""
    where = where or str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as error:
        raise YAMLInputError(where, f"can't be read ({error.strerror})") from None
    return loads(data, where)
