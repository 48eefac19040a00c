"""A test run only by tests/unit/test_pytest_sigterm.py, in a child pytest it names explicitly (the
file is not test_*.py, so no tier collects it): a fixture with a teardown, and a test that waits."""
import os
import time
from pathlib import Path

import pytest


@pytest.fixture
def marker():
    path = Path(os.environ["CA_TEST_SIGTERM_PROBE"])
    path.write_text("set up\n")
    yield
    path.write_text("torn down\n")   # where a real fixture stops its VM, unmounts, detaches its loop device


def test_waits_to_be_terminated(marker):
    time.sleep(120)
