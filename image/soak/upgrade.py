"""`invoke soak --upgrade`: the upgrade from the previous appliance image, for real.

The previous image is built from this repository's history (PREVIOUS_RELEASE, exported with
`git archive`, built by its own `invoke build` with its own cache), first-booted under QEMU, given
an ACME account and certificates by certbot, and backed up with its own `ca-appliance backup`
(encrypted, --passphrase-file). The archive is copied off, the old VM shut down, and the current
image first-boots with the documented upgrade answers: a CASEED volume holding `ca-appliance.yaml`
(`restore: {archive: ..., passphrase: ...}`, network, admin key) next to the archive (docs/running.md,
"Upgrade to a newer appliance"). Then: same root, same intermediate, the old certificates verify
against the restored root, the old ACME account (the same certbot config dir and account key)
renews its certificates, and `ca-appliance status` is the new program's.

Every check is recorded in the report as it is known (`upgrade`, `upgrade_passed`); on failure the
serial log and the disk of the VM that was up are kept under build/soak/failures/.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

from image.cache import cache_dir
from image.config import PROJECT_ROOT
from image.errors import StepFailed, UserError
from image.runner import Runner, checked_output, probe, tail
from image.soak import appliance
from image.vm.verify import (
    CHALLENGE_IP,
    Target,
    ensure_admin_key,
    load_answers,
)

# No release tags exist: the previous round's final commit (2026-12-02 09:34) is the release users run
# today; it builds here offline with the pinned step-ca 0.30.2 / step 0.30.6 given as local binaries.
PREVIOUS_RELEASE = "689b9df0db0f0ee106d2f4808851d23e3df4f7ae"
UPGRADE_DIR = appliance.SOAK_DIR / "upgrade"
CERTBOT = Path(sys.executable).parent / "certbot"
# the names certbot gets certificates for; the guests resolve them to QEMU's guestfwd address
CERT_NAMES = ("client.verify.test", "old.verify.test")
ARCHIVE_NAME = "ca-backup.tar.gz"           # the name docs/running.md uses
GUEST_ARCHIVE = f"/root/{ARCHIVE_NAME}"
PASSPHRASE_FILE = "/root/soak-passphrase"
PASSPHRASE = "soak-passphrase-not-secret-0123456789"   # a test archive's; the same one powercut.py uses
OLD_BUILD_TIMEOUT = 3600


def resolve_commit(commit: str = PREVIOUS_RELEASE, repo: Path = PROJECT_ROOT) -> str:
    """The full hash of `commit` when this clone has it; UserError (a shallow clone, say) otherwise."""
    result = probe(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"])
    if result is None or result.returncode != 0:
        raise UserError(f"soak --upgrade: the previous release {commit} is not in this clone's history "
                        "(a shallow clone? run `git fetch --unshallow`)")
    return result.stdout.strip()


def previous_dir(commit: str) -> Path:
    """Where the previous image of `commit` is built and kept (reused by every later run)."""
    return cache_dir() / "previous-release" / commit


def old_build_config(step_ca: Path, step: Path) -> dict:
    """The --config the old `invoke build` gets: the Debian base (the offline one) and the pinned
    step-ca and step as local binaries (its default downloads them from GitHub, unreachable here)."""
    return {"image": {"base": "debian", "formats": ["qcow2"]},
            "artifacts": {"step_ca": {"path": str(step_ca)}, "step_cli": {"path": str(step)}}}


def _seed_apt_cache(cache: Path, suite: str = "bookworm") -> None:
    """Hard-link (else copy) the main cache's downloaded .debs into the old build's own cache: the old
    build keeps its own base-tree cache (its eviction must not touch the current one's entries)."""
    source = cache_dir() / "debian" / suite / "archives"
    target = cache / "debian" / suite / "archives"
    if target.exists() or not source.is_dir():
        return
    target.mkdir(parents=True)
    for deb in source.glob("*.deb"):
        try:
            os.link(deb, target / deb.name)
        except OSError:
            shutil.copy2(deb, target / deb.name)


def build_previous(commit: str, say=print) -> tuple[Path, float | None]:
    """(the previous image, seconds its build took; None when reused)."""
    home = previous_dir(commit)
    image = home / "previous.qcow2"
    if image.is_file():
        say(f"previous image ({commit[:12]}): reusing {image}")
        return image, None
    from image.stepbuild import pinned_binaries
    binaries = pinned_binaries()
    src = home / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    archive = home / "src.tar"
    checked_output("export the previous release",
                   ["git", "-C", str(PROJECT_ROOT), "archive", "-o", str(archive), commit])
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="tar")
    archive.unlink()
    config = home / "build-config.yaml"
    config.write_text(yaml.safe_dump(old_build_config(binaries["step_ca"], binaries["step_cli"])))
    own_cache = home / "cache"
    _seed_apt_cache(own_cache)
    log = home / "build.log"
    say(f"previous image ({commit[:12]}): building with its own `invoke build` (log: {log})")
    started = time.monotonic()
    log.unlink(missing_ok=True)
    result = Runner(log).run([sys.executable, "-m", "invoke", "build", "--config", str(config)], cwd=src,
                             env={"CA_APPLIANCE_CACHE": str(own_cache), "PYTHONPATH": str(src)}, check=False,
                             timeout=OLD_BUILD_TIMEOUT)
    took = time.monotonic() - started
    built = sorted((src / "dist").glob("*.qcow2"))
    if result.returncode != 0 or not built:
        last = " ".join(tail(log, 3).split())[-300:]
        raise StepFailed(f"build the previous image ({commit[:12]})", f"exit {result.returncode}: {last}", log)
    os.replace(built[0], image)
    shutil.rmtree(src, ignore_errors=True)   # the image is what is kept; the sources are in git
    say(f"previous image built in {took:.0f} s: {image}")
    return image, took


def make_seed(directory: Path, answers: dict, archive: Path) -> Path:
    """A CASEED volume (ext4, made by mkfs.ext4 -d) with ca-appliance.yaml and the archive side by side."""
    content = directory / "caseed"
    shutil.rmtree(content, ignore_errors=True)
    content.mkdir(parents=True)
    (content / "ca-appliance.yaml").write_text(yaml.safe_dump(answers))
    (content / "ca-appliance.yaml").chmod(0o600)
    shutil.copy2(archive, content / ARCHIVE_NAME)
    volume = directory / "caseed.img"
    volume.unlink(missing_ok=True)
    size_mb = max(32, 2 * archive.stat().st_size // 2**20 + 16)
    checked_output("make the CASEED volume", ["mkfs.ext4", "-q", "-F", "-L", "CASEED", "-d", content,
                                              volume, f"{size_mb}M"])
    return volume


def restore_answers(public_key: str) -> dict:
    """The upgrade's answers, as docs/running.md gives them: restore, network and the admin key."""
    return {"restore": {"archive": ARCHIVE_NAME, "passphrase": PASSPHRASE},
            "network": {"mode": "dhcp"}, "admin": {"ssh_authorized_keys": [public_key]}}


class Certbot:
    """certbot against one CA URL with one config dir: one ACME account, kept across the upgrade."""

    def __init__(self, workdir: Path, ca_port: int, root_pem: Path):
        self.workdir, self.ca_port, self.root_pem = workdir, ca_port, root_pem
        self.config_dir = workdir / "config"

    def run(self, *args) -> subprocess.CompletedProcess:
        dirs = ["--config-dir", self.config_dir, "--work-dir", self.workdir / "work",
                "--logs-dir", self.workdir / "logs"]
        result = probe([str(CERTBOT), *args, "-n", *map(str, dirs),
                        "--server", f"https://127.0.0.1:{self.ca_port}/acme/acme/directory"],
                       env={"REQUESTS_CA_BUNDLE": str(self.root_pem)}, timeout=600)
        if result is None:
            raise StepFailed(f"certbot {args[0] if args else ''}".strip(), "did not run or did not finish within 600 s")
        return result

    def accounts(self) -> list[str]:
        """The ids of the ACME accounts certbot holds (accounts/<server>/<path>/<id>/private_key.json)."""
        return sorted(p.parent.name for p in self.config_dir.glob("accounts/**/private_key.json"))

    def leaf(self, name: str) -> Path:
        return self.config_dir / "live" / name / "cert.pem"

    def chain(self, name: str) -> Path:
        return self.config_dir / "live" / name / "chain.pem"


def _ok(run: subprocess.CompletedProcess, what: str) -> None:
    if run.returncode != 0:
        said = " ".join((run.stderr or run.stdout).split())[-300:]
        raise StepFailed(what, f"exit {run.returncode}: {said}")


def serial_of(pem: Path) -> str:
    from cryptography import x509
    return format(x509.load_pem_x509_certificate(pem.read_bytes()).serial_number, "x")


def openssl_verify(root: Path, chain: Path, leaf: Path) -> tuple[bool, str]:
    result = probe(["openssl", "verify", "-CAfile", str(root), "-untrusted", str(chain), str(leaf)])
    if result is None:
        return False, "openssl did not run"
    return result.returncode == 0, " ".join((result.stdout + result.stderr).split())[-200:]


def _names_resolve(target: Target) -> None:
    for name in CERT_NAMES:
        line = f"{CHALLENGE_IP} {name}"
        appliance.run(target, f"grep -qxF '{line}' /etc/hosts || echo '{line}' >> /etc/hosts")


def _ca_facts(status: dict) -> dict:
    return {"root_fingerprint": str(status.get("root_fingerprint", "")).replace(":", "").lower(),
            # subject and expiry (days_left moves with the clock)
            "intermediate": {k: v for k, v in (status.get("intermediate") or {}).items() if k != "days_left"},
            "provisioners": status.get("provisioners"),
            "appliance": status.get("appliance"), "step_ca_version": status.get("step_ca_version")}


class Upgrade:
    """One run: the steps and checks, each recorded in report.data['upgrade'] as soon as known."""

    def __init__(self, image: Path, cfg, accel: str, report, say=print):
        self.image, self.cfg, self.accel, self.report, self.say = image, cfg, accel, report, say
        self.run_dir = UPGRADE_DIR / "run"
        self.data = {"previous_release": None, "previous_image": None, "current_image": str(image),
                     "steps": [], "checks": [], "error": None}
        self.target: Target | None = None

    def _save(self) -> None:
        self.report.set("upgrade", self.data)

    def step(self, name: str, started: float, **facts) -> None:
        self.data["steps"].append({"step": name, "seconds": round(time.monotonic() - started, 1), **facts})
        self.say(f"  {name}: {time.monotonic() - started:.0f} s")
        self._save()

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.data["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        self.say(f"  check {'ok  ' if ok else 'FAIL'} {name}: {detail}")
        self._save()

    def boot(self, target: Target, label: str) -> None:
        self.target = target
        started = time.monotonic()
        target.vm.start()
        target.wait_ready(label)
        if not target.answers_ca(deadline=time.monotonic() + target.ready_timeout):
            raise StepFailed(label, "step-ca's /health does not answer", target.vm.serial_log)
        self.step(label, started)

    def shut_down(self, target: Target) -> None:
        """A clean poweroff from inside (the old appliance as an operator retires it); SIGKILL after 3 minutes."""
        target.forget_connection()
        try:
            target.host().run("systemctl poweroff")
        except Exception:  # noqa: BLE001 - the connection drops as the guest goes down
            pass
        target.forget_connection()
        deadline = time.monotonic() + 180
        while target.vm.is_running() and time.monotonic() < deadline:
            time.sleep(1)
        appliance.discard(target)
        self.target = None

    def run(self) -> bool:
        started = time.monotonic()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - recorded as one line, the VM kept
            first = (str(e).strip().splitlines() or [""])[0]
            self.data["error"] = f"{type(e).__name__}: {first}"[:400]
            self.say(f"  upgrade failed: {self.data['error']}")
            if self.target is not None:
                self.data["kept"] = str(appliance.keep_for_inspection(self.target, "upgrade", self.say))
                self.target = None
        finally:
            if self.target is not None:
                appliance.discard(self.target)
            self.data["seconds"] = round(time.monotonic() - started, 1)
            passed = self.data["error"] is None and bool(self.data["checks"]) and \
                all(c["ok"] for c in self.data["checks"])
            self._save()
            self.report.set("upgrade_passed", passed)
        return self.report.data["upgrade_passed"]

    def _run(self) -> None:
        say = self.say
        commit = resolve_commit()
        self.data["previous_release"] = commit
        started = time.monotonic()
        old_image, built_in = build_previous(commit, say)
        self.data["previous_image"] = str(old_image)
        self.step("previous image", started, built_s=None if built_in is None else round(built_in, 1),
                  reused=built_in is None)

        # ---- the previous appliance: first boot, an ACME account, certificates, its backup
        public_key = ensure_admin_key(appliance.SOAK_DIR).with_suffix(".pub").read_text().strip()
        answers = load_answers(None, public_key)
        old = appliance.new_target(old_image, self.run_dir / "old-vm", self.cfg, self.accel, say, answers=answers)
        self.boot(old, "first boot of the previous image")
        old_status = appliance.status(old)
        before = _ca_facts(old_status)
        self.data["previous_status"] = before
        root = self.run_dir / "root_ca.crt"
        from image.bench.jwk_client import fetch_root
        root.write_bytes(fetch_root(f"https://127.0.0.1:{old.ca_port}"))
        certbot = Certbot(self.run_dir / "certbot", old.ca_port, root)
        _names_resolve(old)
        started = time.monotonic()
        _ok(certbot.run("register", "--agree-tos", "--register-unsafely-without-email"), "certbot register")
        for name in CERT_NAMES:
            _ok(certbot.run("certonly", "--standalone", "-d", name, "--cert-name", name, "--http-01-address",
                            "127.0.0.1", "--http-01-port", str(old.challenge_port)), f"certbot certonly {name}")
        accounts = certbot.accounts()
        old_serials = {name: serial_of(certbot.leaf(name)) for name in CERT_NAMES}
        kept = self.run_dir / "old-certs"
        kept.mkdir()
        for name in CERT_NAMES:   # the files as issued (live/ points at the renewed ones later)
            shutil.copy(certbot.leaf(name), kept / f"{name}.crt")
            shutil.copy(certbot.chain(name), kept / f"{name}.chain.pem")
        self.step("certbot on the previous image", started, account=accounts, serials=old_serials)

        started = time.monotonic()
        appliance.run(old, f"umask 077; echo {PASSPHRASE} > {PASSPHRASE_FILE}")
        rc, out, err = appliance.run(old, f"ca-appliance backup --out {GUEST_ARCHIVE} --passphrase-file "
                                          f"{PASSPHRASE_FILE}")
        if rc != 0:
            said = " ".join((err or out).split())[-300:]
            raise StepFailed("ca-appliance backup (previous image)", f"exit {rc}: {said}")
        rc, out, err = appliance.run(old, f"base64 -w0 {GUEST_ARCHIVE}")
        if rc != 0:
            raise StepFailed("copy the backup off", f"exit {rc}: {' '.join(err.split())[-200:]}")
        archive = self.run_dir / ARCHIVE_NAME
        archive.write_bytes(base64.b64decode(out))
        archive.chmod(0o600)
        self.step("backup of the previous image", started, archive_bytes=archive.stat().st_size)
        started = time.monotonic()
        self.shut_down(old)
        self.step("previous image shut down", started)

        # ---- the current image, first boot restoring that archive from a CASEED volume
        seed = make_seed(self.run_dir, restore_answers(public_key), archive)
        new = appliance.new_target(self.image, self.run_dir / "new-vm", self.cfg, self.accel, say, answers=answers,
                                   credential=False, seed=seed, ca_port=old.ca_port,
                                   challenge_port=old.challenge_port)
        self.boot(new, "first boot of the current image (restore)")
        status = appliance.status(new)
        after = _ca_facts(status)
        self.data["current_status"] = after
        self.check("same root", after["root_fingerprint"] == before["root_fingerprint"] != "",
                   f"{after['root_fingerprint']} (was {before['root_fingerprint']})")
        new_root = self.run_dir / "root_ca.restored.crt"
        new_root.write_bytes(fetch_root(f"https://127.0.0.1:{new.ca_port}"))
        self.check("same root served", new_root.read_bytes().strip() == root.read_bytes().strip(),
                   "/roots.pem of the restored appliance is byte-identical to the previous one's")
        for name in CERT_NAMES:
            ok, said = openssl_verify(new_root, kept / f"{name}.chain.pem", kept / f"{name}.crt")
            self.check(f"old certificate {name} verifies", ok, f"serial {old_serials[name]}: {said}")

        _names_resolve(new)
        started = time.monotonic()
        # as a renewal timer runs it, minus its random wait of up to 8 minutes (non-interactive renewals)
        renew = certbot.run("renew", "--force-renewal", "--no-random-sleep-on-renew")
        renewed = {name: serial_of(certbot.leaf(name)) for name in CERT_NAMES}
        self.step("certbot renew on the current image", started, serials=renewed)
        said = " ".join((renew.stderr or renew.stdout).split())[-200:]
        self.check("old ACME account renews", renew.returncode == 0 and certbot.accounts() == accounts
                   and all(renewed[n] != old_serials[n] for n in CERT_NAMES),
                   f"certbot renew exit {renew.returncode}; account {certbot.accounts()} (was {accounts}); "
                   f"serials {renewed}" + ("" if renew.returncode == 0 else f"; {said}"))
        for name in CERT_NAMES:
            ok, said = openssl_verify(new_root, certbot.chain(name), certbot.leaf(name))
            self.check(f"renewed certificate {name} verifies", ok, said)
        same_intermediate = all(certbot.chain(n).read_bytes() == (kept / f"{n}.chain.pem").read_bytes()
                                for n in CERT_NAMES)
        self.check("same intermediate", same_intermediate and after["intermediate"] == before["intermediate"],
                   f"the renewed certificates' chain is the old one byte for byte; status: {after['intermediate']}")
        version = (after.get("appliance") or {}).get("version")
        old_version = (before.get("appliance") or {}).get("version")
        self.check("status is the new version", version == self.cfg.image.version and version != old_version
                   and "clock" in status and "clock" not in old_status,
                   f"appliance {after.get('appliance')} (was {before.get('appliance')}); reports the clock "
                   f"({(status.get('clock') or {}).get('state', status.get('clock'))}), which "
                   f"{commit[:7]}'s status did not")
        if all(c["ok"] for c in self.data["checks"]):
            appliance.discard(new)
        else:   # a failed check keeps the restored appliance's serial log and disk
            self.data["kept"] = str(appliance.keep_for_inspection(new, "upgrade", say))
        self.target = None
