"""The bases' facts (packages, units, formats) can be read where only the guest's libraries are:
the newest-userland tier's sid root has no pykickstart, pycdlib or jinja2, yet the payload code its
provision tests call asks the Fedora base for its update units. Checked with Debian's own python3,
which has none of the Fedora builder's libraries either."""
import subprocess

from image.config import PROJECT_ROOT

GUEST_PYTHON = "/usr/bin/python3"


def test_the_fedora_base_imports_without_its_build_libraries():
    missing = subprocess.run([GUEST_PYTHON, "-c", "import pykickstart"], capture_output=True)
    assert missing.returncode != 0, "this python3 has pykickstart: the check would prove nothing"
    result = subprocess.run([GUEST_PYTHON, "-c", "import image.bases.fedora, image.payload; "
                             "from image.bases import get_base; print(get_base('fedora').UPDATE_UNITS)"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, result.stderr
    assert "dnf5-automatic.timer" in result.stdout
