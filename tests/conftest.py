"""Fixtures more than one tier uses."""
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def debian_image() -> Path:
    """The Debian test qcow2 (tests/image_fixture.py): built once per code version, minutes."""
    if os.geteuid() != 0:
        pytest.skip("building the Debian image needs root (mmdebstrap, loop devices)")
    from image_fixture import ensure_debian_test_image  # only when a test needs the image
    return ensure_debian_test_image()
