"""The guest's test-image verdict (buildinfo.test_image_reason) fails closed, and says the same as
the build's (image.stepca_version): the same fixed-in version and advisory on both sides."""
import pytest
from ca_appliance import buildinfo
from ca_appliance.clientpage import render

from image import stepca_version


@pytest.mark.parametrize("info, installed, test", [
    ({}, None, True),                                              # no build.json, no step-ca: unknown
    ({"step_ca_version": None, "test_only": False}, None, True),   # the old fail-open case
    ({"step_ca_version": "0.30.2", "test_only": False}, None, False),
    ({"step_ca_version": "0.28.9", "test_only": False}, None, True),
    ({"step_ca_version": "0.30.2", "test_only": True}, None, True),  # the build's mark always stands
    ({"step_ca_version": "0.30.2", "test_only": True}, "0.31.0", True),
    ({"step_ca_version": None, "test_only": False}, "0.30.2", False),  # the installed binary says it
    ({"step_ca_version": "0.30.2", "test_only": False}, "0.19.0", True),  # an older one put in place
    ({"step_ca_version": "0.30", "test_only": False}, None, True),
    ({"step_ca_version": "latest", "test_only": False}, None, True),
])
def test_only_a_known_fixed_step_ca_in_an_unmarked_build_is_production(info, installed, test):
    reason = buildinfo.test_image_reason({**buildinfo.DEFAULTS, **info}, installed)
    assert (reason is not None) is test
    if test:
        assert "GHSA-h8cp-697h-8c8p" in reason or "marked" in reason or info.get("test_only")


def test_guest_and_host_name_the_same_fixed_version_and_advisory():
    assert buildinfo.FIXED_IN == stepca_version.FIXED_IN
    assert buildinfo.ADVISORY == stepca_version.ADVISORY


def test_the_page_shows_the_test_image_notice_escaped():
    values = {"name": "Lab CA", "slug": "lab-ca", "ca_url": "https://ca.test", "acme": "https://ca.test/acme",
              "fingerprint": "ab" * 32, "fingerprint_colons": "AB", "base": "http://ca.test",
              "example": "www.test", "not_after": "2036-01-01", "root_pem": b"PEM", "root_der": b"DER"}
    assert 'id="test-image"' not in render({**values, "test_image": None})
    page = render({**values, "test_image": "step-ca <0.19.0> & old"})
    assert 'id="test-image"' in page and buildinfo.TEST_IMAGE_MARK in page
    assert "step-ca &lt;0.19.0&gt; &amp; old" in page and "<0.19.0>" not in page
