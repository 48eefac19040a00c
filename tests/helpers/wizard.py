"""Driving the first-boot wizard the way a person at the console does, for the tests that run the
real CLI under a pseudo-terminal.

QUESTIONS lists the wizard's questions in the order it asks them on the DHCP path (the static
network's three questions, asked between the network mode and the time servers, and the typed
password's two come only after the answers that call for them), each named by the words of its
prompt that come before the [default].
"""
import os
from pathlib import Path

import pexpect
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "overlay/usr/bin/ca-appliance"
GUEST_PYTHON = "/usr/bin/python3"  # the oldest target's interpreter (Debian 12), with apt's modules
NEEDS_GUEST_PYTHON = f"{GUEST_PYTHON} (Debian's python3 with python3-yaml) runs the guest CLI"

QUESTIONS = {
    "hostname": "Host name of this appliance (fully qualified)",
    "network": "Network: dhcp or static?",
    "ntp": "Time servers (NTP, comma-separated; 'pool' for the distribution's)",
    "name": "name your new PKI? (e.g. Lab CA)",
    "dns_names": "DNS names and IP addresses for your new CA (comma-separated)",
    "address": "listen at? (e.g. :443)",
    "provisioner": "first provisioner? (an email)",
    "generate": "Generate a random one (shown once, at the end)?",
    "ssh": "sign SSH host and user certificates?",
    "admin_key": "Admin's SSH public key ('none' for console login only)",
}


def guest_env():
    """The caller's environment without systemd's credentials directory (a test must not pick up
    the host's), as the first-boot unit would run the CLI."""
    return {key: value for key, value in os.environ.items() if key != "CREDENTIALS_DIRECTORY"}


def start_setup(prefix, timeout=20):
    """`ca-appliance setup --prefix PREFIX --no-system` on a pseudo-terminal of its own."""
    env = guest_env()
    env["TERM"] = "dumb"
    return pexpect.spawn(GUEST_PYTHON, [str(CLI), "setup", "--prefix", str(prefix), "--no-system"], env=env,
                         encoding="utf-8", timeout=timeout, dimensions=(50, 200))


def answer(child, question, reply):
    child.expect_exact(question)
    child.sendline(reply)


def walk(child, replies=None, *, shown=None, start="hostname", stop=None):
    """Answer the questions from `start` up to (not including) `stop`, in the wizard's order:
    replies[key] where given, Enter (the default) for the others. shown[key] is the default the
    prompt must offer, checked as "[value]: "; a question the test does not name may offer any."""
    replies, shown = replies or {}, shown or {}
    keys = list(QUESTIONS)
    for key in keys[keys.index(start):keys.index(stop) if stop else None]:
        prompt = QUESTIONS[key] + (f" [{shown[key]}]: " if key in shown else "")
        answer(child, prompt, replies.get(key, ""))


def finish(child):
    """Wait for the CLI to end; its exit status."""
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def bake(prefix, answers):
    """Answers baked into the image at /etc/ca-appliance/answers.yaml: YAML text as given (bad
    YAML included), or a mapping dumped as YAML."""
    path = Path(prefix) / "etc/ca-appliance/answers.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(answers if isinstance(answers, str) else yaml.safe_dump(answers))
    return path


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))
