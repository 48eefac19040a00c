"""A build that fails or is interrupted half-way leaves nothing behind: no loop device, no mount, no
partial output, the previous good output untouched, and it says where its log is.

Both tests run a real Debian build (mmdebstrap from the warm package cache, about two minutes each).
"""
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from image_fixture import PROJECT_ROOT, debian_test_config

from image import disk
from image.build import build_appliance, output_stem
from image.errors import StepFailed

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="a Debian build needs root (loop devices, mounts)")]

PREVIOUS = b"the previous good build"


def small_config():
    from image.config import load_config
    base = debian_test_config()
    return load_config(overrides={"image": {"base": "debian", "disk_gb": 4, "formats": ["qcow2"]},
                                  "artifacts": {"step_ca": {"path": base.artifacts.step_ca.path},
                                                "step_cli": {"enabled": False}}})


def assert_nothing_left(tmp_path: Path, dist: Path, stem: str):
    assert disk.mounts_under(tmp_path) == [], "a mount was left behind"
    assert disk.loops_backed_by(tmp_path) == [], "a loop device was left attached"
    assert disk.processes_rooted_under(tmp_path) == [], "a process still runs in the chroot"
    assert not any((tmp_path / "build").glob("work-*")), "the work directory was left behind"
    assert sorted(p.name for p in dist.iterdir()) == [f"{stem}.qcow2"], "a partial output is in dist/"
    assert (dist / f"{stem}.qcow2").read_bytes() == PREVIOUS


def test_a_step_failing_with_the_disk_attached_and_mounted_cleans_up(tmp_path, monkeypatch):
    """grub-install really fails (asked for a module that does not exist) while the whole-disk, ESP
    and root partition loop devices are attached and the root file system is mounted."""
    cfg = small_config()
    stem = output_stem(cfg)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / f"{stem}.qcow2").write_bytes(PREVIOUS)
    monkeypatch.setattr(disk, "GRUB_MODULES", "part_msdos ext2 no_such_grub_module")
    attached = []
    real_mounted = disk.mounted

    def mounted_and_seen(*args, **kwargs):   # record that the failure really happened mid-mount
        attached.append((disk.loops_backed_by(tmp_path), args[1]))
        return real_mounted(*args, **kwargs)

    monkeypatch.setattr(disk, "mounted", mounted_and_seen)
    out = io.StringIO()
    with pytest.raises(StepFailed) as failure:
        build_appliance(cfg, dist_dir=dist, build_dir=tmp_path / "build", out=out)
    assert len(attached) == 1 and len(attached[0][0]) == 3, attached   # disk, ESP and root loops were up
    log = Path(failure.value.log)
    assert log.is_file() and "no_such_grub_module" in log.read_text()
    assert "grub-install" in str(failure.value) and str(log) in str(failure.value)
    assert f"log: {log}" in out.getvalue()
    assert_nothing_left(tmp_path, dist, stem)


def test_ctrl_c_during_the_bootstrap_cleans_up_the_chroot(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while dpkg runs in the chroot
    with /proc, /sys and /dev mounted inside it."""
    cfg_stem = output_stem(small_config())
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / f"{cfg_stem}.qcow2").write_bytes(PREVIOUS)
    script = (
        "from pathlib import Path\n"
        "from image.build import build_appliance\n"
        "from test_build_failure import small_config\n"
        # use_cache=False: the bootstrap must really run (a cached base tree would skip mmdebstrap)
        f"build_appliance(small_config(), dist_dir=Path({str(dist)!r}), build_dir=Path({str(tmp_path / 'build')!r}),"
        " use_cache=False)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{PROJECT_ROOT}/tests/image:{PROJECT_ROOT}/tests:{PROJECT_ROOT}")
    out_file = tmp_path / "build-output.txt"
    with open(out_file, "w") as out:   # a file, not a pipe: nobody reads a pipe while the build runs
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env,
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list((tmp_path / "build" / "logs").glob("*.log"))
            if logs and "installing remaining packages" in logs[0].read_text(errors="replace") \
                    and disk.processes_rooted_under(tmp_path / "build"):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the build ended before it could be interrupted:\n" + out_file.read_text()
        assert disk.mounts_under(tmp_path / "build"), "expected the chroot's mounts while dpkg runs"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    (log,) = (tmp_path / "build" / "logs").glob("*.log")
    output = out_file.read_text()
    assert f"log: {log}" in output and "interrupted" in output
    assert_nothing_left(tmp_path, dist, cfg_stem)
