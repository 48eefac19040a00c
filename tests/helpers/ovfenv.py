"""A test double of vSphere's side: the OVF environment document it hands a VM deployed from our
OVA (the guest's ovf-env source reads it). Lives in tests/: the builder never writes one."""
import xml.etree.ElementTree as ET

from image.ova import OVF_ENV_NS, VMW_ENV_NS, _o, _sub


def make_ovf_env(ovf_xml_text: str, values: dict[str, str]) -> str:
    """The OVF environment document vSphere would give a VM deployed from this descriptor: every
    ProductSection property, with `values` (keyed like the properties) over their defaults."""
    descriptor = ET.fromstring(ovf_xml_text)
    props = {p.get(_o("key")): p.get(_o("value"), "") for p in descriptor.iter(_o("Property"))}
    unknown = sorted(set(values) - set(props))
    if unknown:
        raise ValueError(f"not properties of this descriptor: {', '.join(unknown)}")
    e = f"{{{OVF_ENV_NS}}}"
    env = ET.Element(f"{e}Environment", {f"{e}id": "", f"{{{VMW_ENV_NS}}}vCenterId": "vm-1"})
    platform = _sub(env, f"{e}PlatformSection")
    _sub(platform, f"{e}Kind", "VMware ESXi")
    _sub(platform, f"{e}Version", "8.0.0")
    _sub(platform, f"{e}Vendor", "VMware, Inc.")
    _sub(platform, f"{e}Locale", "en")
    section = _sub(env, f"{e}PropertySection")
    for key, default in props.items():
        _sub(section, f"{e}Property", **{f"{e}key": key, f"{e}value": values.get(key, default)})
    ET.indent(env, "   ")
    text = ET.tostring(env, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n"
