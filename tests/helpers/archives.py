"""Reading the archives the builder writes, as an importer would."""
import tarfile
from pathlib import Path


def members(path: Path, dest: Path) -> dict[str, Path]:
    """Extract an OVA (a plain tar) into dest: {member name: extracted path}."""
    with tarfile.open(path) as tar:
        tar.extractall(dest, filter="data")
        return {m.name: dest / m.name for m in tar.getmembers()}
