"""The first-boot questions on the console, one line each, readable on a serial console.

Modelled on `step ca init`'s prompts; every answer has a default in [brackets], a bad answer
is re-asked with the reason, and a review screen ends with "Apply? [Y/n]". Ctrl-C raises
KeyboardInterrupt untouched: nothing has been written at that point.
"""

import getpass as getpass_module
import ipaddress
import socket
import sys

from . import database, schema, x5c
from .answers import (
    AnswersError,
    check_bool,
    check_ca_name,
    check_dns_names,
    check_email,
    check_fqdn,
    check_ipv4,
    check_ipv4_cidr,
    check_listen_address,
    check_network,
    check_ntp,
    check_ssh_key,
    check_ssh_keys,
    deep_merge,
    password_problem,
    validate,
)

# Keys the wizard asks about; a bad preset value for any other key falls back to its default.
ASKED_KEYS = ("hostname", "network", "ca.name", "ca.dns_names", "ca.address", "ca.provisioner", "ca.password",
              "ca.ssh", "admin.ssh_authorized_keys")


class _Console:
    def __init__(self, input, output, getpass):
        self.input = input
        self.output = output
        self.getpass = getpass

    def read(self, reader, prompt):
        """One reply; end of input (Ctrl-D, a closed console) stops the wizard the way Ctrl-C does."""
        try:
            return reader(prompt)
        except EOFError:
            self.say("")
            raise KeyboardInterrupt from None

    def say(self, text=""):
        print(text, file=self.output, flush=True)

    def ask(self, question, default, check, shown=None):
        """Ask until check() accepts the reply (or the default, on an empty reply)."""
        if shown is None:
            shown = default
        shown = _printable(shown)  # a preset value from a bad source may hold escape sequences
        while True:
            prompt = f"{question} [{shown}]: " if shown not in (None, "") else f"{question}: "
            self.output.flush()
            reply = self.read(self.input, prompt).strip()
            value = reply if reply else default
            if value in (None, ""):
                self.say("  An answer is needed here.")
                continue
            try:
                return check(value)
            except AnswersError as error:
                self.refuse(error)

    def ask_yes_no(self, question, default):
        def check(reply):
            if isinstance(reply, bool):
                return reply
            if reply.lower() in ("y", "yes"):
                return True
            if reply.lower() in ("n", "no"):
                return False
            raise AnswersError("yes/no", reply, "is not an answer here: type y or n")

        return self.ask(question, default, check, shown="Y/n" if default else "y/N")

    def refuse(self, error):
        # str(error) shows the value escaped and shortened (and a password as <hidden>).
        self.say(f"  Not accepted: {str(error).partition(f'{error.key}: ')[2]}. Please try again.")


def run_wizard(defaults, *, error=None, preset=None, input=input, output=sys.stdout, getpass=getpass_module.getpass):
    """Ask the first-boot questions; return validated answers (the shape of answers.validate())."""
    console = _Console(input, output, getpass)
    # Preset answers (from a bad unattended source) become defaults, where they have the right shape.
    preset = {
        key: value
        for key, value in (preset if isinstance(preset, dict) else {}).items()
        if value is not None and (isinstance(value, dict) or not isinstance(defaults.get(key), dict))
    }
    current = deep_merge(defaults, preset)
    # The admin key is asked only when the image (or a usable preset) came with one.
    ask_admin_key = not _usable_keys(current.get("admin", {}).get("ssh_authorized_keys"))

    console.say("\nCertificate authority appliance: first-boot setup")
    console.say("Press Enter to keep the [default]. Ctrl-C stops without changing anything.")
    if error:
        console.say(f"\nThe unattended answers could not be used:\n  {error}\nPlease answer on the console instead.")
    while True:
        asked = _ask_everything(console, current, ask_admin_key)
        result = _validated(console, deep_merge(current, asked), defaults)
        _review(console, result, ask_admin_key)
        if console.ask_yes_no("Apply?", True):
            return result
        console.say("\nStarting over; your answers are the new defaults.")
        # Start over with everything just entered (the merge keeps e.g. a typed password).
        current = deep_merge(current, asked)


def _ask_everything(console, current, ask_admin_key):
    ca = current.get("ca") or {}
    console.say("")
    hostname = console.ask(schema.prompt("hostname"), current.get("hostname"), check_fqdn)
    network = _ask_network(console, current.get("network") or {})
    console.say("")
    name = console.ask(schema.prompt("ca.name"), ca.get("name"), check_ca_name)
    default_names = ca.get("dns_names") or [hostname] + _current_ipv4(network)
    dns_names = console.ask(
        schema.prompt("ca.dns_names"),
        _joined(default_names),
        check_dns_names,
    )
    address = console.ask(schema.prompt("ca.address"), ca.get("address"),
                          check_listen_address)
    provisioner = console.ask(schema.prompt("ca.provisioner"),
                              ca.get("provisioner"), check_email)
    password = _ask_password(console, ca.get("password"))
    ssh = console.ask_yes_no(schema.prompt("ca.ssh"), _as_bool(ca.get("ssh")))
    asked = {
        "hostname": hostname,
        "network": network,
        "ca": {"name": name, "dns_names": dns_names, "address": address, "provisioner": provisioner,
               "password": password, "ssh": ssh},
    }
    if ask_admin_key:
        asked["admin"] = {"ssh_authorized_keys": _ask_admin_key(console, current.get("admin") or {})}
    return asked


def _ask_network(console, network):
    def check_mode(reply):
        for mode in ("dhcp", "static"):
            if reply.lower() in (mode, mode[0]):
                return mode
        raise AnswersError("network.mode", reply, "must be dhcp or static")

    mode = console.ask(schema.prompt("network.mode"), network.get("mode", "dhcp"), check_mode)
    ntp = network.get("ntp")
    if mode == "dhcp":
        return {"mode": "dhcp", "ntp": _ask_ntp(console, ntp)}
    while True:
        address = console.ask("  " + schema.prompt("network.address"), network.get("address"),
                              check_ipv4_cidr)
        subnet_gateway = str(next(ipaddress.IPv4Interface(address).network.hosts(), ""))
        gateway = console.ask("  " + schema.prompt("network.gateway"), network.get("gateway") or subnet_gateway,
                              lambda reply, address=address: _check_gateway(reply, address))
        servers = console.ask("  " + schema.prompt("network.dns"), _joined(network.get("dns") or [gateway]),
                              check_dns_servers)
        network = {"mode": "static", "address": address, "gateway": gateway, "dns": servers}
        try:
            checked = check_network(network)
        except AnswersError as error:  # e.g. a gateway outside the subnet: ask the three again
            console.refuse(error)
            continue
        checked["ntp"] = _ask_ntp(console, ntp)
        return checked


NTP_POOL_REPLY = "pool"   # the wizard's word for network.ntp: null (the distribution's pool)


def _ask_ntp(console, current):
    """network.ntp: the servers chrony uses, exactly; 'pool' keeps the distribution's pool (null)."""
    def check(reply):
        if isinstance(reply, str) and reply.strip().lower() == NTP_POOL_REPLY:
            return None
        return check_ntp(reply)

    default = NTP_POOL_REPLY if current is None else _joined(current) or current
    return console.ask(schema.prompt("network.ntp"), default, check)


def _check_gateway(reply, address):
    """A gateway inside the address's subnet (check_network's rule, asked right away)."""
    gateway = check_ipv4(reply, "network.gateway")
    check_network({"mode": "static", "address": address, "gateway": gateway, "dns": [gateway]})
    return gateway


def check_dns_servers(reply):
    servers = [item.strip() for item in reply.split(",") if item.strip()]
    if not servers:
        raise AnswersError("network.dns", reply, "must list at least one DNS server address")
    return [check_ipv4(server, "network.dns") for server in servers]


def _ask_password(console, previous):
    if previous is not None and previous != "" and password_problem(previous):
        # A bad preset (from an unattended source) is no default: Enter must not bring it back.
        console.say("The password from the unattended answers can't be used: it "
                    f"{password_problem(previous)}.")
        previous = None
    console.say("Choose a password for your CA keys and first provisioner.")
    generate = console.ask_yes_no("  Generate a random one (shown once, at the end)?", previous is None)
    if generate:
        return None
    while True:
        hint = "Enter: keep the one typed before" if previous else "Enter: generate one after all"
        first = console.read(console.getpass, f"  Password [{hint}]: ")
        if not first:
            return previous
        problem = password_problem(first)
        if problem:
            console.say(f"  Not accepted: a password {problem}. Please try again.")
            continue
        if console.read(console.getpass, "  Password again: ") != first:
            console.say("  The two passwords differ. Please try again.")
            continue
        return first


def _ask_admin_key(console, admin):
    keys = _usable_keys(admin.get("ssh_authorized_keys"))

    def check(reply):
        if reply == "keep" and keys:
            return list(keys)
        if reply.lower() == "none":
            return []
        return [check_ssh_key(reply)]

    console.say("The admin logs in over SSH with a public key (one line, e.g. 'ssh-ed25519 AAAA... you@laptop').")
    return console.ask("  " + schema.prompt("admin.ssh_authorized_keys"), "keep" if keys else "none",
                       check, shown=_short_key(keys[0]) if keys else "none")


def _validated(console, raw, defaults):
    """validate(); a bad preset value the wizard does not ask about falls back to its default."""
    dropped = set()
    while True:
        try:
            return validate(raw, defaults)
        except AnswersError as error:
            unknown = error.message.startswith("is an unknown key")
            if not unknown and any(error.key == key or error.key.startswith(key + ".") for key in ASKED_KEYS):
                raise  # asked answers were checked one by one: this is a bug, not a bad answer
            key = error.key
            while key in dropped and "." in key:  # e.g. ca.database.dsn missing once dropped: drop ca.database
                key = key.rsplit(".", 1)[0]
            console.say(f"  Using the default for {key}: {error}")
            _drop(raw, key)
            dropped.add(key)


def _drop(raw, dotted_key):
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        raw = raw.get(part) or {}
    if isinstance(raw, dict):
        raw.pop(leaf, None)


def _review(console, result, ask_admin_key):
    ca = result["ca"]
    network = result["network"]
    if network["mode"] == "static":
        network_text = f"static {network['address']}, gateway {network['gateway']}, DNS {', '.join(network['dns'])}"
    else:
        network_text = "DHCP"
    keys = result["admin"]["ssh_authorized_keys"]
    constraints = ca["name_constraints"]
    claims = ca["claims"]
    rows = [
        ("Host name", result["hostname"]),
        ("Network", network_text),
        ("Time servers", ", ".join(network["ntp"]) if network.get("ntp") else "the distribution's NTP pool"),
        ("PKI name", ca["name"]),
        ("CA names", ", ".join(ca["dns_names"])),
        ("Listen address", ca["address"]),
        ("First provisioner", ca["provisioner"]),
        ("Password", "generated, shown once when setup is done" if ca["password"] is None else "as typed (hidden)"),
        ("SSH certificates", "yes" if ca["ssh"] else "no"),
        ("Key type", ca["key_type"]),
        ("Root key", "kept on the appliance" if ca["root_key"] == "keep" else "offline (removed after setup)"),
        ("Lifetimes", f"root {ca['root_years']} years, intermediate {ca['intermediate_years']} years"),
        ("Certificates", f"ACME {claims['acme']['default']} (max {claims['acme']['max']}), "
                         f"JWK {claims['jwk']['default']} (max {claims['jwk']['max']})"),
        ("Name constraints", ", ".join(constraints["dns"] + constraints["ip"]) or "none (any name)"),
        ("Database", database.describe(ca.get("database") or database.DEFAULT)),  # never the DSN's password
        ("Admin account", result["admin"]["user"]),
        ("Admin SSH key", ", ".join(_short_key(key) for key in keys) if keys else "none (console login only)"),
    ]
    # X5C lets any holder of a certificate under these roots obtain any name: show each one.
    roots = x5c.summary(ca["x5c_roots"]) if ca.get("x5c_roots") else []
    rows.append(("X5C roots", f"{len(roots)}: whoever holds a certificate under them may get ANY name"
                 if roots else "none (no X5C provisioner)"))
    rows.extend((f"  root {number}", _printable(root)) for number, root in enumerate(roots, 1))
    if result.get("join"):
        rows.append(("Join", f"another node of the CA backed up in {_printable(result['join']['backup'])}"))
    console.say("\nPlease review:")
    for label, value in rows:
        console.say(f"  {label + ':':<19}{value}")
    console.say("")


def _usable_keys(keys):
    try:
        return check_ssh_keys(keys)
    except AnswersError:
        return []


def _joined(values):
    """A list default as the comma-separated reply it stands for (a bad preset may be a string or hold numbers)."""
    if isinstance(values, str):
        return values
    return ", ".join(str(value) for value in values) if isinstance(values, list) else ""


def _printable(value):
    if value is None:
        return None
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(value))


def _as_bool(value):
    try:
        return check_bool(value, "ca.ssh")
    except AnswersError:
        return True


def _short_key(key):
    parts = str(key).split()
    if len(parts) < 2:
        return str(key)[:40]
    comment = f" {parts[2]}" if len(parts) > 2 else ""
    return f"{parts[0]} ...{parts[1][-8:]}{comment}"


def _current_ipv4(network):
    """This machine's address (static, or the one the default route uses now), as a list."""
    if network.get("mode") == "static":
        return [network["address"].split("/")[0]]
    try:
        # A UDP "connect" sends nothing; it only asks the kernel which source address it would use.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
    except OSError:
        return []
    return [] if address.startswith("127.") or address == "0.0.0.0" else [address]


def clock_confirmation(out, input=input):
    """setup's clock check, after the wizard: show the time on the wizard's console and ask whether
    to go on with it (a console Terminal reads its own input; else this terminal's)."""
    reader = getattr(out, "input", None) or input

    def confirm(text):
        print(f"\n{text}", file=out, flush=True)
        try:
            reply = reader("Create the CA with this clock anyway? [y/N]: ")
        except EOFError:
            return False
        return reply.strip().lower() in ("y", "yes")
    return confirm
