"""Every external command of the host side goes through image/runner.py (Runner.run, checked_output, probe,
stop_process): logged or judged in one place, never a CalledProcessError traceback. A long-lived child
(QEMU, the installer, a benchmark's server) may be started with subprocess.Popen, with the reason on a
comment just above it saying `long-lived`."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "image/runner.py"
DIRECT = {"run", "call", "check_call", "check_output", "getoutput", "getstatusoutput", "Popen"}


def direct_commands(path: Path) -> list[tuple[int, str]]:
    """(line, what) of each subprocess/os call that starts a program directly."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name):
            owner, name = node.func.value.id, node.func.attr
            if (owner == "subprocess" and name in DIRECT) or (owner == "os" and name in ("system", "popen")):
                found.append((node.lineno, f"{owner}.{name}"))
    return found


def test_commands_go_through_the_runner_or_say_why_not():
    offenders = []
    for path in sorted((ROOT / "image").rglob("*.py")):
        if path == RUNNER:
            continue
        lines = path.read_text().splitlines()
        for line, what in direct_commands(path):
            above = " ".join(lines[max(0, line - 4):line - 1])
            if what == "subprocess.Popen" and "long-lived" in above:
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not offenders, "use image.runner (run, checked_output, probe) or say why not: " + "; ".join(offenders)


def test_the_check_finds_a_direct_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os, subprocess\nsubprocess.run(['true'])\nos.system('true')\n")
    assert direct_commands(sample) == [(2, "subprocess.run"), (3, "os.system")]
