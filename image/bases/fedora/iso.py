"""The OEMDRV volume: an ISO 9660 image, written in Python (pycdlib), no host tools.

Anaconda's dracut finds a volume labelled OEMDRV by itself; the kickstart is read from its
root. Files keep their real names through Rock Ridge (what Linux reads) and Joliet; the plain
ISO 9660 names underneath are generated 8.3 names that nobody needs to know.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from image.errors import StepFailed


def iso9660_name(name: str, index: int, taken: set[str]) -> str:
    """A level-1 name (8.3, A-Z 0-9 _) for `name`, unique among `taken`."""
    stem, _, ext = name.rpartition(".") if "." in name else (name, "", "")
    clean = lambda s, n: re.sub(r"[^A-Z0-9_]", "_", s.upper())[:n]  # noqa: E731
    candidate = f"{clean(stem, 8) or 'FILE'}.{clean(ext, 3)}"
    if candidate in taken:
        candidate = f"FILE{index:04d}.{clean(ext, 3)}"
    taken.add(candidate)
    return candidate


def write_volume_iso(dest: Path, files: Mapping[str, Path], label: str) -> Path:
    """Write an ISO labelled `label` with `files` ({name at the root: host file}) to dest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        if "/" in name or not name:
            raise StepFailed("write OEMDRV volume", f"{name!r} is not a file name for the volume's root")
        if not Path(source).is_file():
            raise StepFailed("write OEMDRV volume", f"{source} (for {name}) does not exist")
    import pycdlib  # here, not at import: the base's facts are read where pycdlib is not installed
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=label, rock_ridge="1.09", joliet=3,
            app_ident_str="ca-appliance builder")
    taken: set[str] = set()
    tmp = dest.with_name(dest.name + ".part")
    try:
        for index, (name, source) in enumerate(sorted(files.items())):
            iso_name = iso9660_name(name, index, taken)
            iso.add_file(str(source), iso_path=f"/{iso_name};1", rr_name=name, joliet_path=f"/{name}")
        iso.write(str(tmp))
        os.replace(tmp, dest)
    except (OSError, pycdlib.pycdlibexception.PyCdlibException) as e:
        raise StepFailed("write OEMDRV volume", f"{dest}: {e}") from None
    finally:
        iso.close()
        tmp.unlink(missing_ok=True)
    return dest
