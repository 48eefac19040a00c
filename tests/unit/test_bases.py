"""Both bases implement the one declared interface (image.bases.Base), names and signatures alike."""
import inspect

import pytest

from image.bases import Base, get_base
from image.config import BASES
from image.errors import UserError


@pytest.mark.parametrize("name", ["debian", "fedora"])
def test_base_implements_the_protocol(name):
    module = get_base(name)
    assert isinstance(module, Base)
    assert module.PROVISION_BASE == name
    assert isinstance(module.NEEDS_ROOT, bool)
    assert all(isinstance(k, str) and len(v) == 2 for k, v in module.REQUIRED_TOOLS.items())
    for method in ("build_raw", "check_host"):
        declared = list(inspect.signature(getattr(Base, method)).parameters.values())[1:]   # without self
        actual = list(inspect.signature(getattr(module, method)).parameters.values())
        assert [(p.name, p.kind) for p in actual] == [(p.name, p.kind) for p in declared], (name, method)


def test_every_configurable_base_is_covered_and_an_unknown_one_is_a_user_error():
    assert set(BASES) == {"debian", "fedora"}
    with pytest.raises(UserError, match="base: 'arch' is not one of"):
        get_base("arch")


def test_a_module_lacking_a_member_does_not_pass_for_a_base():
    import types
    fake = types.SimpleNamespace(REQUIRED_TOOLS={}, NEEDS_ROOT=False, PROVISION_BASE="x", build_raw=lambda: None)
    assert not isinstance(fake, Base)   # no check_host
