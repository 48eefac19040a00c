"""Every registered base implements the one declared interface (image.bases.Base), names and signatures
alike, its facts well-formed, and the guest's provision has its DISTROS row (a base is one module and one
table row: docs/bases.md, Adding a base). The registry itself: tests/unit/test_base_registry.py."""
import inspect

import pytest
from ca_appliance import provision

from image.artifacts import PACKAGE_FORMATS
from image.bases import REGISTRY, Base, base_names, get_base
from image.config import BASES
from image.errors import UserError


@pytest.mark.parametrize("name", base_names())
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


@pytest.mark.parametrize("name", base_names())
def test_base_facts_are_well_formed_and_the_guest_has_its_row(name):
    module = get_base(name)
    assert module.PACKAGE_KIND in PACKAGE_FORMATS
    assert module.UPDATE_UNITS and all(u.endswith((".timer", ".service")) for u in module.UPDATE_UNITS)
    assert module.UPDATE_SERVICE.endswith(".service")
    assert module.UPDATE_FILES and all(not p.startswith("/") and text.endswith("\n")
                                       for p, text in module.UPDATE_FILES.items())
    os_id, vmw_os, text = module.OVA_GUEST_OS
    assert isinstance(os_id, int) and vmw_os.endswith("Guest") and text
    assert module.PROVISION_BASE in provision.DISTROS


def test_every_configurable_base_is_registered_and_an_unknown_one_is_a_user_error():
    assert BASES == base_names() == tuple(REGISTRY)
    assert set(BASES) == set(provision.DISTROS)   # each base has its guest row, and no row lacks a base
    with pytest.raises(UserError, match="base: 'arch' is not one of"):
        get_base("arch")


def test_a_module_lacking_a_member_does_not_pass_for_a_base():
    import types
    fake = types.SimpleNamespace(REQUIRED_TOOLS={}, NEEDS_ROOT=False, PROVISION_BASE="x", build_raw=lambda: None)
    assert not isinstance(fake, Base)   # no check_host
