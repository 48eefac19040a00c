"""The steps that change the running system: user, ownership, hostname, network, firewall,
trust store, service. `--no-system` skips every one of them; the files they would describe
(firewalld service, /etc/issue.d) are written by apply under the prefix either way.
"""
import json
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import timing, truststore
from .errors import StepFailed
from .layout import SERVICE, STEP_USER
from .staging import write_file

NM_CONNECTION = "ca-appliance"
FIREWALLD_SERVICE_FILE = Path("/etc/firewalld/services/step-ca.xml")   # Layout.firewalld_service without prefix
TRUST_ANCHORS = {
    # tool that rebuilds the bundle: where it reads extra anchors from
    "update-ca-trust": Path("/etc/pki/ca-trust/source/anchors/ca-appliance-root.crt"),
    "update-ca-certificates": Path("/usr/local/share/ca-certificates/ca-appliance-root.crt"),
}


def run(step, argv, check=True):
    """Run a command; a non-zero exit is StepFailed naming the step and the command's own words."""
    try:
        with timing.timed(step):   # one journal line per command: the first boot's profile
            result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise StepFailed(step, f"{argv[0]} is not installed") from None
    if check and result.returncode != 0:
        output = " ".join(result.stdout.split())[-300:]
        raise StepFailed(step, f"`{' '.join(argv)}` exited {result.returncode}: {output}")
    return result


def ensure_step_user():
    """The unprivileged account step-ca runs as (the unit's User=), created when missing."""
    try:
        return pwd.getpwnam(STEP_USER)
    except KeyError:
        pass
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    run("create user step", ["useradd", "--system", "--user-group", "--home-dir", "/var/lib/step-ca",
                             "--no-create-home", "--shell", nologin, "--comment", "step-ca", STEP_USER])
    return pwd.getpwnam(STEP_USER)


def chown_tree(root, user):
    """Give a tree to user (uid/gid from pwd); symlinks are not followed."""
    for directory, dirnames, filenames in os.walk(root):
        os.lchown(directory, user.pw_uid, user.pw_gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(directory, name), user.pw_uid, user.pw_gid)


def restore_selinux_labels(*paths):
    """Fedora: files renamed into place keep their staging labels; give them their policy's."""
    if shutil.which("restorecon"):
        run("restore SELinux labels", ["restorecon", "-R", *map(str, paths)], check=False)


def set_hostname(hostname, hosts_file=Path("/etc/hosts")):
    """Set the hostname and make it resolve locally (Debian's convention: 127.0.1.1), so the CA's
    own name works on the appliance before DNS knows it."""
    run("set hostname", ["hostnamectl", "set-hostname", hostname])
    current = hosts_file.read_text() if hosts_file.exists() else None
    hosts_file.write_text(hosts_with_hostname(current, hostname))


def hosts_with_hostname(hosts_text, hostname):
    """/etc/hosts with the 127.0.1.1 line naming `hostname` (and its short name), other lines kept."""
    lines = hosts_text.splitlines() if hosts_text else ["127.0.0.1\tlocalhost"]
    entry = f"127.0.1.1\t{hostname} {hostname.split('.')[0]}"
    return "\n".join([line for line in lines if not line.startswith("127.0.1.1")] + [entry]) + "\n"


def install_admin_keys(user_name, keys):
    """Add the answers' SSH keys to the admin's authorized_keys (keys already there are kept)."""
    if not keys:
        return None
    try:
        user = pwd.getpwnam(user_name)
    except KeyError:
        return f"admin account {user_name!r} does not exist: its SSH keys were not installed"
    ssh_dir = Path(user.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    present = authorized.read_text().splitlines() if authorized.exists() else []
    added = [key for key in keys if key not in present]
    if added:
        with open(authorized, "a") as f:
            f.write("".join(f"{key}\n" for key in added))
            f.flush()
            os.fsync(f.fileno())   # appended, not replaced: a power cut must not leave it empty
    authorized.chmod(0o600)
    for path in (ssh_dir, authorized):
        os.chown(path, user.pw_uid, user.pw_gid)
    restore_selinux_labels(ssh_dir)
    return None


def reload_sshd():
    """Make sshd read setup's drop-in (key-only, admin only); a note when there is no sshd."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if sshd is None:
        return "sshd is not installed: its drop-in was written for when it is"
    run("configure sshd", [sshd, "-t"])  # a drop-in sshd would refuse must not lock the admin out
    run("configure sshd", ["systemctl", "try-reload-or-restart", "ssh.service", "sshd.service"], check=False)
    return None


def configure_network(network):
    """DHCP leaves NetworkManager's automatic profile alone; static replaces it with our own."""
    if network["mode"] != "static":
        return
    device = run("find network device", ["nmcli", "-g", "DEVICE,TYPE", "device"]).stdout
    ethernet = [line.split(":")[0] for line in device.splitlines() if line.endswith(":ethernet")]
    if not ethernet:
        raise StepFailed("configure network", "NetworkManager lists no ethernet device")
    run("configure network", ["nmcli", "connection", "delete", NM_CONNECTION], check=False)
    run("configure network", [
        "nmcli", "connection", "add", "type", "ethernet", "con-name", NM_CONNECTION, "ifname", ethernet[0],
        "ipv4.method", "manual", "ipv4.addresses", network["address"], "ipv4.gateway", network["gateway"],
        "ipv4.dns", ",".join(network["dns"]), "ipv6.method", "auto", "connection.autoconnect", "yes",
        "connection.autoconnect-priority", "100"])
    run("configure network", ["nmcli", "connection", "up", NM_CONNECTION])


# firewalld's D-Bus API (the one firewall-cmd itself calls), reached with systemd's busctl: a C
# tool answers in milliseconds where each firewall-cmd start-up (Python, GLib) took ~4 s of an
# emulated first boot, three times over.
FIREWALLD_BUS = "org.fedoraproject.FirewallD1"
FIREWALLD_PATH = "/org/fedoraproject/FirewallD1"
FIREWALLD_CONFIG_PATH = "/org/fedoraproject/FirewallD1/config"
RUNTIME_ZONE = f"{FIREWALLD_BUS}.zone"              # zone methods take the zone's name
PERMANENT_ZONE = f"{FIREWALLD_BUS}.config.zone"     # on the zone's object from getZoneByName


class FirewalldError(Exception):
    """A firewalld D-Bus call failed; the message is busctl's (firewalld's) own words."""


def firewalld_call(method, signature="", *args, interface=FIREWALLD_BUS, path=FIREWALLD_PATH):
    """One method call on the running firewalld; the reply's values (a list, empty for none).
    --auto-start=no: a stopped firewalld is reported, never started by D-Bus activation."""
    argv = ["busctl", "--system", "--json=short", "--auto-start=no", "call", FIREWALLD_BUS, path, interface, method]
    if signature:
        argv += [signature, *map(str, args)]
    try:
        with timing.timed("open firewall"):
            result = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise FirewalldError("busctl is not installed") from None
    if result.returncode != 0:
        raise FirewalldError(" ".join(result.stderr.split())[-300:] or f"busctl exited {result.returncode}")
    return json.loads(result.stdout)["data"] if result.stdout.strip() else []


def running_service_ports(service):
    """{'443/tcp', ...} of the service as the running firewalld defines it; None when it knows none."""
    try:
        (settings,) = firewalld_call("getServiceSettings2", "s", service)
    except FirewalldError:
        return None
    return {f"{port}/{protocol}" for port, protocol in settings.get("ports", {}).get("data", [])}


def written_service_ports(path):
    """{'443/tcp', ...} from a firewalld service XML; None when it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    ports = set()
    for element in re.findall(r"<port\b[^>]*>", text):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', element))
        if "port" in attrs and "protocol" in attrs:
            ports.add(f"{attrs['port']}/{attrs['protocol']}")
    return ports


def open_firewall(firewalld_service_file=FIREWALLD_SERVICE_FILE):
    """Open the CA port (and the client page's) in firewalld's default zone, permanently and in
    the running daemon, through the step-ca firewalld service apply wrote with the right port."""
    if shutil.which("firewall-cmd") is None:
        return "firewalld is not installed: open the CA port yourself"
    services = ["step-ca", *firewall_page_services()]
    try:
        (zone,) = firewalld_call("getDefaultZone")
    except FirewalldError:
        # not running (or no system bus, as in an image build): the offline tool edits the files
        run("open firewall", ["firewall-offline-cmd", *[f"--add-service={name}" for name in services]])
        return "firewalld is not running: step-ca added to its configuration for its next start"
    try:
        # A reload re-applies the whole rule set (the slowest firewall step on a first boot); it is only
        # needed when the running firewalld knows another definition of the service than the one written.
        if running_service_ports("step-ca") != written_service_ports(firewalld_service_file):
            firewalld_call("reload")
        (zone_config,) = firewalld_call("getZoneByName", "s", zone, interface=f"{FIREWALLD_BUS}.config",
                                        path=FIREWALLD_CONFIG_PATH)
        for name in services:
            # adding what is there already is an error (ALREADY_ENABLED): ask first
            if not firewalld_call("queryService", "s", name, interface=PERMANENT_ZONE, path=zone_config)[0]:
                firewalld_call("addService", "s", name, interface=PERMANENT_ZONE, path=zone_config)
            if not firewalld_call("queryService", "ss", zone, name, interface=RUNTIME_ZONE)[0]:
                firewalld_call("addService", "ssi", zone, name, 0, interface=RUNTIME_ZONE)
    except FirewalldError as error:
        raise StepFailed("open firewall", f"firewalld refused: {error}") from None
    return None


def firewall_page_services():
    """The client page's port 80 (ca-appliance-page firewalld service) unless the build turned it off."""
    from . import buildinfo
    return ["ca-appliance-page"] if buildinfo.load().get("client_page", True) else []


def install_trust_anchor(root_cert_path):
    """Put the root in the system trust store (Fedora: update-ca-trust, Debian: update-ca-certificates)."""
    for tool, anchor in TRUST_ANCHORS.items():
        if shutil.which(tool):
            anchor.parent.mkdir(parents=True, exist_ok=True)
            replacing = anchor.exists()
            shutil.copyfile(root_cert_path, anchor)
            os.chmod(anchor, 0o644)
            if tool == "update-ca-certificates" and not replacing:
                with timing.timed("install root in trust store"):
                    if truststore.add_new_anchor(anchor):   # one certificate, not a rebuild of all
                        return anchor
            run("install root in trust store", [tool] if tool == "update-ca-certificates" else [tool, "extract"])
            return anchor
    raise StepFailed("install root in trust store", "neither update-ca-trust nor update-ca-certificates is installed")


def service_state():
    return run("service state", ["systemctl", "is-active", SERVICE], check=False).stdout.strip() or "unknown"


def stop_service():
    """Stop step-ca; True when it was running (so the caller starts it again)."""
    was_active = service_state() in ("active", "activating", "reloading")
    if was_active:
        run("stop step-ca", ["systemctl", "stop", SERVICE])
    return was_active


def start_service(restart=False):
    # enable reloads systemd itself, and only when the unit is not enabled yet (the image enables it):
    # each reload re-reads every unit, seconds on an emulated first boot
    if run("start step-ca", ["systemctl", "is-enabled", SERVICE], check=False).stdout.strip() != "enabled":
        run("start step-ca", ["systemctl", "enable", SERVICE])
    try:
        run("start step-ca", ["systemctl", "restart" if restart else "start", SERVICE])
    except StepFailed as error:
        raise StepFailed("start step-ca", error.detail, log="journalctl -u step-ca") from None


def refresh_console_issue():
    """Make gettys on the console re-read /etc/issue; harmless when none is running."""
    if shutil.which("agetty"):
        run("refresh console", ["agetty", "--reload"], check=False)


# ---- time: chrony uses exactly the answers' network.ntp (null: the distribution's pool) ----

@dataclass(frozen=True)
class ChronyFiles:
    conf: Path              # the distribution's chrony.conf, whose pool line network.ntp replaces
    sources: object         # Path of a sources.d file chrony reads the servers from; None: into conf itself
    keep_sourcedir: tuple   # sourcedir lines that stay (the one `sources` is in); any other (DHCP's) goes
    unit: str               # chronyd's unit, restarted when its configuration changed


CHRONY = {
    "debian": ChronyFiles(Path("/etc/chrony/chrony.conf"), Path("/etc/chrony/sources.d/ca-appliance.sources"),
                          ("/etc/chrony/sources.d",), "chrony.service"),
    "fedora": ChronyFiles(Path("/etc/chrony.conf"), None, (), "chronyd.service"),
}
CHRONY_MARK = "# ca-appliance network.ntp"           # ends the server lines setup wrote
CHRONY_WAS = "# ca-appliance network.ntp replaced: "  # starts a distribution line setup turned off


def chrony_files(base=None):
    """The CHRONY row of this base (build.json's), else of the layout whose chrony.conf exists; None: no chrony."""
    if base is None:
        from . import buildinfo
        base = buildinfo.load().get("base")
    if base in CHRONY:
        return CHRONY[base]
    return next((row for row in CHRONY.values() if row.conf.exists()), None)


def chrony_conf_text(text, servers, files):
    """chrony.conf with exactly `servers` (None: the distribution's lines back as shipped). Lines setup
    wrote before are undone first, so the result depends only on the shipped file and `servers`."""
    shipped = []
    for line in text.splitlines():
        if line.startswith(CHRONY_WAS):
            shipped.append(line[len(CHRONY_WAS):])
        elif not line.rstrip().endswith(CHRONY_MARK):
            shipped.append(line)
    if servers is None:
        return "\n".join(shipped) + "\n"
    result, placed = [], files.sources is not None
    for line in shipped:
        words = line.split()
        is_source = bool(words) and (words[0] in ("pool", "server", "peer") or (
            words[0] == "sourcedir" and (len(words) < 2 or words[1].rstrip("/") not in files.keep_sourcedir)))
        if not is_source:
            result.append(line)
            continue
        if not placed:   # Fedora: our servers where the pool line was
            result.extend(chrony_server_lines(servers))
            placed = True
        result.append(CHRONY_WAS + line)
    if not placed:
        result.extend(chrony_server_lines(servers))
    return "\n".join(result) + "\n"


def chrony_server_lines(servers):
    return [f"server {server} iburst {CHRONY_MARK}" for server in servers]


def configure_chrony(servers, files=None):
    """Make chronyd use exactly `servers` (network.ntp), or the distribution's pool for None;
    restart it when that changed. A note (str) when there is no chrony to configure."""
    files = files or chrony_files()
    if files is None or not files.conf.exists():
        return "chrony is not installed: network.ntp was not applied"
    before = files.conf.read_text()
    after = chrony_conf_text(before, servers, files)
    changed = after != before
    if changed:
        write_file(files.conf, after, files.conf.stat().st_mode & 0o777)
    if files.sources is not None:
        if servers is None:
            changed = files.sources.exists() or changed
            files.sources.unlink(missing_ok=True)
        else:
            text = ("# Written by ca-appliance setup from the answers' network.ntp: chrony uses exactly these.\n"
                    + "".join(f"server {server} iburst\n" for server in servers))
            if not files.sources.exists() or files.sources.read_text() != text:
                write_file(files.sources, text, 0o644)
                changed = True
    if changed:
        restore_selinux_labels(files.conf)
        run("configure chrony", ["systemctl", "try-restart", files.unit], check=False)
    return None
