"""Where downloads and locally built artifacts are kept between builds."""
import os
from pathlib import Path


def cache_dir() -> Path:
    """$CA_APPLIANCE_CACHE, else $XDG_CACHE_HOME/ca-appliance, else ~/.cache/ca-appliance."""
    explicit = os.environ.get("CA_APPLIANCE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "ca-appliance"
