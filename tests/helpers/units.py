"""Reading systemd unit files as systemd does, for the tests of the units the image ships."""
from pathlib import Path


def directives(path: Path) -> dict[tuple[str, str], list[str]]:
    """Every `Key=value` of the unit as {(section, key): [values]} (keys repeat in systemd units)."""
    result, section = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        result.setdefault((section, key), []).append(value)
    return result
