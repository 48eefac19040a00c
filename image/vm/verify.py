"""`invoke verify`: boot an appliance image, let its first boot configure it, and check it.

The first boot is either unattended (the answers go in as the systemd credential
`ca-appliance.answers`, a 0600 file QEMU hands over through fw_cfg: never on its command line)
or, with --interactive, answered on the serial console the way a person
would, one wrong answer included. Then the checks in tests/vm/ run in this process with pytest
(testinfra over SSH, certbot and the JWK flow from the host); they get the VM as the session
fixture `target`, which this module's pytest plugin (TargetPlugin) hands over through the config's
stash: no module global. A summary table is printed from the JUnit file either way; on failure the
serial log, the journal and step-ca's log are kept under build/verify-logs/<timestamp>/.
"""
from __future__ import annotations

import datetime
import http.client
import re
import secrets
import shutil
import ssl
import sys
import time
import urllib.request
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from image import markers, settings
from image.config import PROJECT_ROOT, Config, read_yaml
from image.errors import StepFailed, UserError
from image.vm.qemu import VM, resolve_accel

BUILD_DIR = PROJECT_ROOT / "build"
VERIFY_DIR = BUILD_DIR / "verify"
JUNIT_FILE = BUILD_DIR / "verify-junit.xml"
LOGS_DIR = BUILD_DIR / "verify-logs"
VM_TESTS = PROJECT_ROOT / "tests" / "vm"
CREDENTIAL_NAME = "ca-appliance.answers"
# certbot's http-01 answer reaches the guest through QEMU's guestfwd: the CA connects to this
# address (the challenge name resolves to it in the guest's /etc/hosts) and QEMU hands the
# connection to a socat on the host that relays it to certbot's standalone server.
CHALLENGE_IP = "10.0.2.100"
GUEST_IP = "10.0.2.15"          # QEMU user networking always leases this address
PAGE_PORT = 80                  # the client page (ca-appliance-page.socket); forwarded as vm.ports["page"]
# Seconds; TCG on a busy machine is slow, so both can be raised (or lowered) from the environment.

@dataclass
class Target:
    """What tests/vm need to reach and judge the appliance under test."""
    vm: VM
    user: str
    key_file: Path
    answers: dict                      # the answers as given to the first boot
    mode: str                          # 'unattended' | 'interactive'
    workdir: Path                      # build/verify: keys, ssh_config, certbot state
    challenge_port: int                # host port certbot's http-01 server listens on
    ssh_timeout: float = field(default_factory=settings.verify_ssh_timeout)
    ready_timeout: float = field(default_factory=settings.verify_ready_timeout)
    boot_times: dict = field(default_factory=dict)
    ssh_reached: bool = False          # SSH worked at least once (so the journal can be fetched)
    first_boot_cut: bool = False       # the power was cut during first-boot setup (cut_first_boot)
    _host: object = None

    @property
    def hostname(self) -> str:
        return self.answers["hostname"]

    @property
    def ca_name(self) -> str:
        """The name clients use for the CA (its first DNS name)."""
        names = self.answers.get("ca", {}).get("dns_names") or [self.hostname]
        return names[0]

    @property
    def ca_port(self) -> int:
        """The CA's port on the host (forwarded to the guest's)."""
        return self.vm.ports["ca"]

    @property
    def guest_ca_port(self) -> int:
        return ca_port_of(self.answers)

    @property
    def password(self) -> str | None:
        return self.answers.get("ca", {}).get("password")

    @property
    def ssh_config(self) -> Path:
        path = self.workdir / "ssh_config"
        path.write_text(f"Host appliance\n  HostName 127.0.0.1\n  Port {self.vm.ports['ssh']}\n"
                        f"  User {self.user}\n  IdentityFile {self.key_file}\n  StrictHostKeyChecking no\n")
        return path

    def host(self):
        """A testinfra host (paramiko, sudo) for the running boot; a new one after a reboot."""
        if self._host is None:
            import testinfra
            self._host = testinfra.get_host("paramiko://appliance", ssh_config=str(self.ssh_config), sudo=True)
        return self._host

    def forget_connection(self) -> None:
        """Drop the SSH connection (the VM reboots or dies). testinfra.get_host() caches the host and
        its backend caches the client, so the client itself must go for the next call to reconnect."""
        if self._host is not None:
            backend = self._host.backend
            client = backend.__dict__.pop("client", None)
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - the VM may already be gone
                    pass
        self._host = None

    def wait_ready(self, label: str) -> None:
        """Wait for SSH and then for the boot to finish (first boot included); records the times."""
        start = time.monotonic()
        client = self.vm.wait_for_ssh(self.user, self.key_file, self.ssh_timeout)
        ssh_at = time.monotonic() - start
        self.ssh_reached = True
        try:
            _, out, _ = client.exec_command("sudo systemctl is-system-running --wait", timeout=self.ready_timeout)
            state = out.read().decode().strip()
        finally:
            client.close()
        # systemd calls step-ca started when it is exec'd; it answers once it has opened its keys
        if self.answers_ca(deadline=start + self.ssh_timeout + self.ready_timeout):
            state += ", CA answering"
        self.boot_times[label] = (ssh_at, time.monotonic() - start, state)

    def answers_ca(self, deadline: float) -> bool:
        """Whether step-ca's /health answers through the forwarded CA port before `deadline`."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE   # only: does it answer?
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.vm.ports['ca']}/health", timeout=5,
                                            context=context) as response:
                    if response.status == 200:
                        return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(1)
        return False

    def reboot(self) -> None:
        """A clean reboot from inside the guest; returns when it is up again."""
        self._restart_from_inside("reboot", "systemctl reboot")

    def kernel_panic(self) -> None:
        """Panic the guest's kernel (sysrq 'c', as root); the appliance's panic=10 must reboot it by
        itself (QEMU resets on a guest reboot, as libvirt, vSphere and Hyper-V do). Returns when it is up again."""
        # detached, a second later: the SSH command returns before the kernel stops answering
        self._restart_from_inside("kernel panic", "nohup sh -c 'sleep 1; echo c > /proc/sysrq-trigger' "
                                                  ">/dev/null 2>&1 &", wait_for=self.ssh_timeout + 10)

    def _restart_from_inside(self, what: str, command: str, wait_for: float | None = None) -> None:
        old_boot = self.host().file("/proc/sys/kernel/random/boot_id").content_string.strip()
        self.host().run(command)
        self.forget_connection()
        deadline = time.monotonic() + (wait_for or self.ssh_timeout)
        while True:
            time.sleep(5)
            self.vm.check_alive(what)   # QEMU still running: the guest reset instead of halting
            self.wait_ready(what)
            self.forget_connection()
            boot = self.host().file("/proc/sys/kernel/random/boot_id").content_string.strip()
            if boot != old_boot:
                return
            if time.monotonic() > deadline:
                raise StepFailed(what, "the guest did not boot again", self.vm.serial_log)

    def power_cut(self) -> None:
        """SIGKILL QEMU (nothing flushed, nothing shut down), then boot the same disk again."""
        self.forget_connection()
        self.vm.kill()
        self.vm.start()
        self.wait_ready("after power cut")


# What the guest's setup prints on the console right after the CA is committed (apply.setup).
COMMITTED_LINE = markers.COMMITTED   # setup prints it once the CA's files are committed
KERNEL_BANNER = "Linux version"   # the guest's kernel started (console=ttyS0 on both bases)


def cut_first_boot(target: Target, say=print) -> None:
    """Power cut (SIGKILL QEMU) during first-boot setup, right after the CA's files are committed and
    before its system steps are done; then boot the same disk again. The first-boot unit must run
    again (no completion marker yet) and finish; tests/vm then check the CA as after any first boot."""
    booted_by = time.monotonic() + target.ssh_timeout
    while KERNEL_BANNER not in target.vm.serial_log.read_text(errors="replace"):
        target.vm.check_alive("first boot (waiting for the kernel)")
        if time.monotonic() > booted_by:   # nothing booted: no cut; the SSH wait reports it as ever
            say("no kernel on the console: the power cut during setup is skipped")
            return
        time.sleep(0.5)
    deadline = time.monotonic() + target.ssh_timeout + target.ready_timeout
    while COMMITTED_LINE not in target.vm.serial_log.read_text(errors="replace"):
        target.vm.check_alive("first boot (waiting for setup to commit)")
        if time.monotonic() > deadline:
            raise StepFailed("first boot", "setup never reported its CA committed", target.vm.serial_log)
        time.sleep(0.1)
    target.vm.kill()
    target.first_boot_cut = True
    say("power cut during first-boot setup (after the commit, during the system steps); booting again")
    target.vm.start()


# ---- inputs: the test key, the answers


def ensure_admin_key(directory: Path) -> Path:
    """An ed25519 key pair for the admin login (build/verify/admin_ed25519{,.pub}), made once."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key_file = directory / "admin_ed25519"
    if not key_file.exists() or not key_file.with_suffix(".pub").exists():
        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        key_file.with_suffix(".pub").write_text(public.decode() + " verify@ca-appliance\n")
    return key_file


def default_answers(public_key: str, password: str) -> dict:
    return {
        "hostname": "ca.verify.test",
        "network": {"mode": "dhcp"},
        "ca": {
            "name": "Verify CA",
            "dns_names": ["ca.verify.test", "localhost", "127.0.0.1", GUEST_IP],
            "address": ":443",
            "provisioner": "verify@ca.verify.test",
            "password": password,
            "ssh": True,
        },
        "admin": {"ssh_authorized_keys": [public_key]},
    }


def load_answers(path: str | Path | None, public_key: str) -> dict:
    """The answers for the first boot: the user's file (with our test key added so the checks can
    log in) or the defaults with a generated password."""
    if path is None:
        return default_answers(public_key, secrets.token_urlsafe(24))
    answers = read_yaml(Path(path), "--answers")
    keys = list(answers.setdefault("admin", {}).get("ssh_authorized_keys") or [])
    answers["admin"]["ssh_authorized_keys"] = [*keys, public_key] if public_key not in keys else keys
    if not answers.get("hostname"):
        raise UserError(f"--answers: {str(path)!r} has no hostname (the checks need the appliance's name)")
    ca_port_of(answers, str(path))
    return answers


def ca_port_of(answers: dict, where: str = "answers") -> int:
    address = str(answers.get("ca", {}).get("address") or ":443")
    m = re.fullmatch(r".*:(\d{1,5})", address)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise UserError(f"--answers: {where}: ca.address {address!r} is not a listen address like :443")
    return int(m.group(1))


# ---- the console wizard, answered as a person would


BRACKET = r"( \[[^\]\n]*\])?: "     # an optional [default] and the colon that ends every prompt
APPLY_PROMPT = r"Apply\? \[Y/n\]: "


def wizard_script(answers: dict, wrong_hostname: str = "not a host name!") -> list[tuple[str, str]]:
    """(prompt regex, reply) in the order the first-boot wizard asks (overlay/.../wizard.py); each
    regex ends where the prompt does, so nothing is typed before the guest reads. The first reply
    is wrong on purpose: the wizard must refuse it and ask again."""
    ca = answers["ca"]
    keys = answers.get("admin", {}).get("ssh_authorized_keys") or []
    hostname_prompt = r"Host name of this appliance \(fully qualified\)" + BRACKET
    script = [
        # offered on every console; a person at the serial one presses Enter to take it
        (re.escape(markers.wizard_offer("ttyS0")), ""),
        (hostname_prompt, wrong_hostname),
        (r"Not accepted: [^\n]*" + re.escape(repr(wrong_hostname)) + r".*" + hostname_prompt, answers["hostname"]),
        (r"Network: dhcp or static\?" + BRACKET, "dhcp"),
        (r"Time servers \(NTP[^)\n]*\)" + BRACKET,
         ", ".join((answers.get("network") or {}).get("ntp") or []) or "pool"),
        (r"name your new PKI\? \(e\.g\. Lab CA\)" + BRACKET, ca["name"]),
        (r"DNS names and IP addresses for your new CA \(comma-separated\)" + BRACKET, ", ".join(ca["dns_names"])),
        (r"What address will your new CA listen at\? \(e\.g\. :443\)" + BRACKET, ca["address"]),
        (r"first provisioner\? \(an email\)" + BRACKET, ca["provisioner"]),
        (r"Generate a random one \(shown once, at the end\)\?" + BRACKET, "n"),
        (r"Password \[Enter: [^\]\n]*\]: ", ca["password"]),
        (r"Password again: ", ca["password"]),
        (r"sign SSH host and user certificates\?" + BRACKET, "y" if ca.get("ssh", True) else "n"),
        # asked only when the image has no admin key of its own; else the review comes next
        (r"\('none' for console login only\)" + BRACKET + "|" + APPLY_PROMPT, keys[0] if keys else "none"),
        (APPLY_PROMPT, "y"),
    ]
    return script


def answer_wizard(vm: VM, answers: dict, log_to: Path, timeout: float | None = None, say=print) -> None:
    timeout = settings.verify_ssh_timeout() if timeout is None else timeout
    """Type the answers into the first-boot wizard on the serial console."""
    import pexpect
    log_to.parent.mkdir(parents=True, exist_ok=True)
    with open(log_to, "w") as log:
        console = vm.console(timeout=timeout, logfile=log)
        try:
            for pattern, reply in wizard_script(answers):
                try:
                    console.expect(re.compile(pattern, re.DOTALL))
                except (pexpect.TIMEOUT, pexpect.EOF):
                    raise StepFailed("answer the console wizard",
                                     f"no prompt matching {pattern!r} within {timeout:.0f}s; console, last lines:\n"
                                     f"{vm.serial_tail()}", log_to) from None
                if pattern.startswith("Not accepted"):
                    say("wizard: a wrong answer was refused and asked again")
                if console.match.group(0).startswith("Apply?"):
                    reply = "y"  # the admin key question did not come: the review did
                time.sleep(0.5)  # a person reads before typing
                console.send(reply + "\r")
                if reply == "y" and console.match.group(0).startswith("Apply?"):
                    break
            console.expect(re.compile(r"\n"))  # the last reply reached the guest
        finally:
            console.close()


# ---- the summary


@dataclass
class CheckResult:
    name: str
    outcome: str        # 'passed' | 'failed' | 'error' | 'skipped'
    message: str = ""


def read_junit(path: Path) -> list[CheckResult]:
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = f"{module}::{case.get('name')}" if module else case.get("name", "?")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or node.text or "").strip()
                break
        results.append(CheckResult(name, outcome, message))
    return results


def render_summary(results: list[CheckResult], width: int = 110) -> str:
    """One line a check: its result, its name and, for anything but a pass, why."""
    label = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}
    name_width = min(max((len(r.name) for r in results), default=5), 60)
    lines = [f"{'result':<6}  {'check':<{name_width}}  detail", f"{'-' * 6}  {'-' * name_width}  {'-' * 6}"]
    for r in results:
        detail = " ".join(r.message.split())
        if r.outcome == "skipped":
            detail = re.sub(r"^Skipped:\s*", "", detail)
        room = max(width - name_width - 10, 20)
        detail = detail if len(detail) <= room else detail[:room - 3] + "..."
        lines.append(f"{label.get(r.outcome, r.outcome):<6}  {r.name:<{name_width}}  {detail}".rstrip())
    counts = {o: sum(r.outcome == o for r in results) for o in ("passed", "failed", "error", "skipped")}
    lines.append(", ".join(f"{n} {o}" for o, n in counts.items() if n) or "no checks ran")
    return "\n".join(lines)


def all_passed(results: list[CheckResult]) -> bool:
    return bool(results) and not any(r.outcome in ("failed", "error") for r in results)


# ---- logs kept on failure


def collect_logs(target: Target | None, vm: VM, say=print) -> Path:
    """Copy what explains a failure to build/verify-logs/<timestamp>/ and return the directory."""
    out = LOGS_DIR / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    for src in (vm.serial_log, vm.qemu_log):
        if src.exists():
            shutil.copyfile(src, out / src.name)
    if target is not None and target.ssh_reached and vm.is_running():
        commands = {"journal.txt": "journalctl -b --no-pager",
                    "step-ca.log": "journalctl -b -u step-ca --no-pager",
                    "firstboot.log": "journalctl -b -u ca-appliance-firstboot --no-pager",
                    "failed-units.txt": "systemctl --failed --no-pager"}
        try:
            client = vm.wait_for_ssh(target.user, target.key_file, timeout=60)
            try:
                for name, command in commands.items():
                    _, stdout, _ = client.exec_command(f"sudo {command}", timeout=120)
                    (out / name).write_bytes(stdout.read())
            finally:
                client.close()
        except Exception as e:  # noqa: BLE001 - keep what we have; say why the rest is missing
            (out / "journal-unavailable.txt").write_text(f"could not fetch the guest's journal: {e}\n")
    say(f"logs kept in {out}")
    return out


# ---- the whole run


class TargetPlugin:
    """A pytest plugin that hands the booted appliance to tests/vm: their `target` fixture reads
    it from the config's stash (tests/vm/conftest.py); without it they skip and say why."""

    def __init__(self, target: Target):
        self.target = target

    def pytest_configure(self, config) -> None:
        config.stash[target_key()] = self.target


def target_key():
    """The stash key both sides use (created once: pytest compares keys by identity)."""
    global _TARGET_KEY
    if _TARGET_KEY is None:
        import pytest
        _TARGET_KEY = pytest.StashKey[Target]()
    return _TARGET_KEY


_TARGET_KEY = None


def run_checks(target: Target, junit: Path) -> int:
    """tests/vm under pytest in this process (so the persistence checks can reboot and kill the VM)."""
    import pytest
    return pytest.main([str(VM_TESTS), f"--junitxml={junit}", "-p", "no:cacheprovider",
                        "-o", "junit_family=xunit1", "-v", f"--rootdir={PROJECT_ROOT}"],
                       plugins=[TargetPlugin(target)])


def verify_image(cfg: Config, *, image, answers=None, interactive=False, accel="auto", keep=False,
                 ssh_timeout: float | None = None, say=print) -> bool:
    ssh_timeout = settings.verify_ssh_timeout() if ssh_timeout is None else ssh_timeout
    image = Path(image)
    if not image.is_file():
        raise UserError(f"--image: {str(image)!r} does not exist (give a built .qcow2 image)")
    choice = resolve_accel(accel)
    say(f"accelerator: {choice.accel} ({choice.reason})")
    key_file = ensure_admin_key(VERIFY_DIR)
    public_key = key_file.with_suffix(".pub").read_text().strip()
    first_boot = load_answers(answers, public_key)
    mode = "interactive" if interactive else "unattended"
    workdir = VERIFY_DIR / f"vm-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    from image.vm.qemu import free_port
    challenge_port = free_port()
    vm = VM(image, workdir, cpus=cfg.image.cpus, memory_mb=cfg.image.memory_mb, accel=choice.accel,
            ports={"ssh": 22, "ca": ca_port_of(first_boot), **({"page": PAGE_PORT} if cfg.page.enabled else {})},
            guestfwds={(CHALLENGE_IP, 80): f"socat - TCP:127.0.0.1:{challenge_port}"},
            credentials={} if interactive else {CREDENTIAL_NAME: yaml.safe_dump(first_boot).encode()},
            keep=keep, say=say)
    target = Target(vm=vm, user=cfg.admin.user, key_file=key_file, answers=first_boot, mode=mode,
                    workdir=VERIFY_DIR, challenge_port=challenge_port, ssh_timeout=ssh_timeout)
    JUNIT_FILE.unlink(missing_ok=True)
    ok = False
    with vm:
        try:
            say(f"booting {image} ({mode} first boot; ssh on 127.0.0.1:{vm.ports['ssh']}, "
                f"CA on 127.0.0.1:{vm.ports['ca']}; console log {vm.serial_log})")
            started = time.monotonic()
            vm.start()
            if interactive:
                answer_wizard(vm, first_boot, log_to=VERIFY_DIR / "wizard-session.log", say=say)
            else:
                cut_first_boot(target, say)
            target.wait_ready("first boot")
            ssh_at, ready_at, state = target.boot_times["first boot"]
            say(f"first boot: SSH after {ssh_at:.0f}s, boot finished ({state}) after "
                f"{time.monotonic() - started:.0f}s")
            run_checks(target, JUNIT_FILE)
            results = read_junit(JUNIT_FILE) if JUNIT_FILE.exists() else []
            say("\n" + render_summary(results))
            for label, (ssh_s, ready_s, state) in target.boot_times.items():
                say(f"boot time ({label}): SSH {ssh_s:.0f}s, ready ({state}) {ready_s:.0f}s")
            say(f"JUnit XML: {JUNIT_FILE}")
            ok = all_passed(results)
        except (StepFailed, OSError) as e:
            # the boot itself failed: still a table, with the one check that could run
            say("\n" + render_summary([CheckResult("boot and first boot", "failed", str(e).splitlines()[0])]))
            say(f"verify failed: {e}")
        finally:
            if not ok:
                collect_logs(target, vm, say)
    return ok



if __name__ == "__main__":  # pragma: no cover - handy while developing: python -m image.vm.verify IMAGE
    from image.config import load_config
    sys.exit(0 if verify_image(load_config(), image=sys.argv[1], accel="tcg") else 1)
