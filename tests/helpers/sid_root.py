"""A Debian unstable (sid) root for the newest-userland tier: the guest program's tests run in it
under the newest Python, cryptography, PyYAML and jwcrypto Debian has (Fedora's next generation).

The root is bootstrapped by mmdebstrap once and kept as a tarball in its own tree cache
(image.cache.TreeCache under <cache>/sid-roots, one entry), keyed by the suite, the mirror, the
package list and mmdebstrap's version, and rebuilt after MAX_AGE_DAYS so sid's new uploads get in.
Each run unpacks a fresh copy, copies the working tree in (never the host's .venv: the inner
pytest imports only what the sid root's own packages provide) and runs pytest in it through chroot,
in a private mount namespace: /proc, /sys and /dev are mounted only there, so they end with the
run, also when it fails or is killed.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from image.bases.debian import pack_tree, unpack_tree
from image.cache import TreeCache, cache_dir, cache_key
from image.disk import remove_tree
from image.runner import Runner

SUITE = "sid"
MIRROR = os.environ.get("CA_TEST_SID_MIRROR", "http://deb.debian.org/debian")
MAX_AGE_DAYS = 3
PACKAGES = (
    # the guest program's imports (ca_appliance: stdlib + these)
    "python3", "python3-cryptography", "python3-yaml", "python3-jwcrypto",
    "python3-pymysql", "python3-psycopg2",
    # the tests themselves: pytest, hypothesis (property tests), the wizard driver's pexpect, certbot
    # (the backup test issues a certificate over ACME before it backs the CA up)
    "python3-pytest", "python3-hypothesis", "python3-pexpect", "certbot",
    # the commands the guest runs and the tests call: provision's systemd-sysusers, systemctl --root,
    # useradd/usermod/chpasswd and visudo; the trust store's openssl and update-ca-certificates;
    # ssh-keygen; the seed volumes' mkfs.ext4, losetup/blkid/mount and xorriso
    "systemd", "passwd", "sudo", "openssl", "ca-certificates", "openssh-client",
    "e2fsprogs", "mount", "util-linux", "xorriso", "iproute2", "procps",
)
# no manuals, docs or translations: a smaller tarball to pack and unpack every run
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*", "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
)
# Where the working tree goes inside the root, and the step-ca binary's cache there.
SRC = "/src"
INNER_CACHE = "/var/cache/ca-appliance"


def mmdebstrap_command(rootfs: Path) -> list[str]:
    cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--components=main",
           "--include=" + ",".join(PACKAGES), "--aptopt=Acquire::Retries \"3\"",
           # sid's Release is valid for a week only; a mirror snapshot older than that (this
           # machine's is) would stop the tier, and a test root needs no protection from replays
           "--aptopt=Acquire::Check-Valid-Until \"false\""]
    cmd += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    # no .debs kept in the tree: apt's cache would only make the tarball bigger
    cmd += ["--customize-hook=chroot \"$1\" apt-get clean", SUITE, str(rootfs), f"deb {MIRROR} {SUITE} main"]
    return cmd


def tree_inputs(mmdebstrap_version: str) -> dict:
    return {"tier": "newest-userland", "suite": SUITE, "mirror": MIRROR, "packages": list(PACKAGES),
            "dpkg_excludes": list(DPKG_EXCLUDES), "command": mmdebstrap_command(Path("/@rootfs")),
            "mmdebstrap": mmdebstrap_version}


def tree_cache() -> TreeCache:
    # its own directory: the Debian base's cache keeps its 3 newest entries, and a sid root must not evict them
    return TreeCache(cache_dir() / "sid-roots", keep=1, max_age_days=MAX_AGE_DAYS)


def ensure_sid_root(rootfs: Path, runner: Runner) -> bool:
    """A fresh sid root in rootfs (which must not exist): unpacked from the cache, else bootstrapped
    and stored. True when it came from the cache."""
    version = runner.output(["mmdebstrap", "--version"]).strip()
    inputs = tree_inputs(version)
    key = cache_key(inputs)
    cache = tree_cache()
    tarball = cache.lookup(key)
    if tarball is not None:
        unpack_tree(tarball, rootfs, runner)
        return True
    runner.run(mmdebstrap_command(rootfs))
    cache.store(key, lambda path: pack_tree(rootfs, path, runner), inputs)
    return False


def copy_working_tree(repo: Path, dest: Path) -> None:
    """The repository's tracked and untracked (not ignored) files as they are now: what a commit
    would test, without .venv, build/ or dist/."""
    listing = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout
    dest.mkdir(parents=True)
    # cpio-like copy through tar: modes (the CLI's executable bit) kept; deleted-but-tracked files skipped
    names = [n for n in listing.decode().split("\0") if n and (repo / n).exists()]
    subprocess.run(["tar", "-C", str(repo), "--null", "-T", "-", "-c", "-f", "-"], input="\0".join(names).encode(),
                   check=True, stdout=open(dest.parent / ".src.tar", "wb"))
    subprocess.run(["tar", "-C", str(dest), "-x", "-f", str(dest.parent / ".src.tar")], check=True)
    (dest.parent / ".src.tar").unlink()


# Turns every DeprecationWarning (and cryptography's own, a UserWarning) that the guest package's
# code causes into an error, in every python3 that starts in the root: the inner pytest and each
# guest CLI it runs (those get their environment from the tests, so PYTHONWARNINGS would not reach
# them all). A warning counts as the guest's when the frame it is attributed to (the caller of the
# deprecated API) is in ca_appliance; a third party's own internal deprecations stay warnings.
WARNINGS_MODULE = "ca_appliance_newest_tier_warnings"
WARNINGS_CODE = '''\
import warnings
GUEST = r"ca_appliance(\\.|$)"
warnings.filterwarnings("error", category=DeprecationWarning, module=GUEST)
warnings.filterwarnings("error", category=PendingDeprecationWarning, module=GUEST)
try:
    from cryptography.utils import CryptographyDeprecationWarning
except ImportError:
    pass
else:
    warnings.filterwarnings("error", category=CryptographyDeprecationWarning, module=GUEST)
'''
# pytest resets the warning filters around each test: the same filters again, as its own options
PYTEST_FILTERS = ("error::DeprecationWarning:ca_appliance",
                  "error::PendingDeprecationWarning:ca_appliance",
                  "error::cryptography.utils.CryptographyDeprecationWarning:ca_appliance")


def install_warning_filters(rootfs: Path) -> None:
    site = rootfs / "usr/lib/python3/dist-packages"
    (site / f"{WARNINGS_MODULE}.py").write_text(WARNINGS_CODE)
    (site / "zz-ca-appliance-newest-tier.pth").write_text(f"import {WARNINGS_MODULE}\n")


VERSIONS_CODE = ("import sys, cryptography, yaml, jwcrypto, pymysql, psycopg2, pytest; from importlib.metadata "
                 "import version; print(f'python3 {sys.version.split()[0]}, cryptography {cryptography.__version__}, "
                 "PyYAML {yaml.__version__}, jwcrypto {version(\"jwcrypto\")}, PyMySQL {pymysql.__version__}, "
                 "psycopg2 {psycopg2.__version__.split()[0]}, pytest {pytest.__version__}')")

# /proc, /sys and /dev only in this mount namespace (gone when it ends), a network namespace of its
# own with only loopback (the inner step-ca and certbot ports never clash with the host's), a clean
# environment
CHROOT_SCRIPT = """set -eu
root="$1"; shift
ip link set lo up
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
{binds}
exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin{path} \\
    HOME=/root LANG=C.UTF-8 TMPDIR=/tmp PYTHONDONTWRITEBYTECODE=1 CA_APPLIANCE_CACHE={cache} "$@"
"""


def chroot_command(rootfs: Path, *command: str, binds: dict[str, str] | None = None,
                   path: tuple[str, ...] = ()) -> list[str]:
    """`command` run in rootfs; binds {host path: path inside} are mounted read-only for it, and
    `path`'s directories end its PATH."""
    lines = []
    for source, inside in (binds or {}).items():
        target = '"$root"' + shlex.quote(inside)
        lines += [f"mkdir -p {target}", f"mount --bind {shlex.quote(source)} {target}",
                  f"mount -o remount,bind,ro {target}"]
    script = CHROOT_SCRIPT.replace("{binds}", "\n".join(lines)).replace("{cache}", INNER_CACHE)
    script = script.replace("{path}", "".join(f":{shlex.quote(p)}" for p in path))
    return ["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", script,
            "sid-chroot", str(rootfs), *command]


def inner_pytest_command(test_paths: list[str]) -> list[str]:
    cmd = ["python3", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--rootdir", SRC,
           "-c", f"{SRC}/pyproject.toml"]
    # one -o with the lines of the list: pytest splits an overridden linelist option at newlines
    cmd += ["-o", "filterwarnings=" + "\n".join(PYTEST_FILTERS)]
    return cmd + [f"{SRC}/{p}" for p in test_paths]


def remove_root(rootfs: Path, runner: Runner) -> None:
    remove_tree(rootfs, runner)


def describe(cmd: list[str]) -> str:
    return shlex.join(cmd)
