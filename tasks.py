"""CA appliance builder: `invoke --list` shows the tasks, `invoke --help TASK` their options.

This file only parses arguments and calls functions in image/. Errors come out as one line:
exit status 2 for bad input, 1 for a failed step (with the path of its log).
"""
import functools
import os
import signal
import sys
import threading

from invoke import task

from image import formats
from image.bases import base_names
from image.errors import ApplianceError

# --base's help names the registered bases (image/bases/__init__.py)
BASE_HELP = f"{', '.join(base_names())} (default: image.base from the config)"


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a CI job's timeout) stops a task as Ctrl-C does, through the same cleanup:
    the VMs, mounts, loop devices and daemons it started go too. Python's default would just exit."""


def _terminated(signum, frame):
    raise Terminated()


def reports_errors(fn):
    """Turn the project's errors into one line on stderr and an exit status, never a traceback;
    SIGTERM becomes Terminated (exit 143) so that cleanup runs; stdout is line-buffered."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # progress lines reach a log file (`nohup invoke soak > log`) as they are printed, not 8 KiB later
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminated)
        try:
            return fn(*args, **kwargs)
        except ApplianceError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except Terminated:
            print("terminated", file=sys.stderr)
            sys.exit(143)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:
            # the reader went away (`invoke step-from-source | head -1`): stop quietly, as cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
    return wrapper


def _config(config, base=None):
    from image.config import load_config
    return load_config(config, {"image": {"base": base}} if base else None)


@task(help={"config": "YAML file merged over appliance.yaml",
            "base": BASE_HELP,
            "out": "directory for the kickstart and payload list (default: build/render)"})
@reports_errors
def render(c, config=None, base=None, out="build/render"):
    """Render the Fedora kickstart and the payload list the build will use, and say where."""
    cfg = _config(config, base)
    from image.bases.fedora.kickstart import render_to
    render_to(cfg, out)


@task(help={"config": "YAML file merged over appliance.yaml",
            "base": BASE_HELP + "; its package format decides which packages"})
@reports_errors
def fetch(c, config=None, base=None):
    """Download the step-ca and step release packages the base needs into the cache, verified."""
    cfg = _config(config, base)
    from image.artifacts import fetch_artifacts
    fetch_artifacts(cfg)


@task(name="step-from-source",
      help={"config": "YAML file merged over appliance.yaml (the versions: artifacts.*.version)",
            "out": "also write the config snippet to this file (atomically)",
            "force": "rebuild even when the binaries are cached"})
@reports_errors
def step_from_source(c, config=None, out=None, force=False):
    """Build the pinned step-ca and step from their Go modules (or reuse the cache); print the --config snippet."""
    cfg = _config(config)
    from image.files import write_atomic
    from image.stepbuild import build_step_binaries, config_snippet
    snippet = config_snippet(build_step_binaries(cfg, force=force))
    if out:
        write_atomic(out, snippet)
        print(f"wrote {out}; use it with:  invoke build --config {out}", file=sys.stderr)
    print(snippet, end="")


@task(help={"format": f"{formats.help_text()}; repeat or comma-separate for several "
                      "(default: image.formats from the config)",
            "base": BASE_HELP,
            "config": "YAML file merged over appliance.yaml",
            "verbose": "show the commands run",
            "sign": "sign the OVA: PEM RSA private key (unencrypted); needs --cert",
            "cert": "sign the OVA: PEM certificate of the --sign key, shipped in the .cert",
            "no-cache": "bootstrap the base afresh instead of reusing the cached base tree"},
      iterable=["format"])
@reports_errors
def build(c, format=None, base=None, config=None, verbose=False, sign=None, cert=None, no_cache=False):
    """Build the appliance disk image into dist/ with SHA256SUMS and a manifest."""
    cfg = _config(config, base)
    formats = [f for item in (format or []) for f in item.split(",") if f]
    signing = {"sign_key": sign, "sign_cert": cert} if sign or cert else {}
    from image.build import build_appliance
    build_appliance(cfg, formats=formats or None, verbose=verbose, use_cache=not no_cache, **signing)


@task(help={"cache": "also remove the cached base trees (downloads and the step-ca build stay)"})
@reports_errors
def clean(c, cache=False):
    """Remove build/ and dist/ (the download cache stays; --cache: the cached base trees go too)."""
    from image.build import clean_cache, clean_outputs
    clean_outputs()
    if cache:
        clean_cache()


@task(help={"image": "the qcow2 (or raw) image to boot",
            "answers": "answers YAML for the first boot (default: generated, with a test SSH key)",
            "interactive": "answer the console wizard over the serial console instead",
            "accel": "auto, kvm or tcg (auto: KVM only when it really works)",
            "keep": "leave the VM running and its files in place afterwards",
            "config": "YAML file merged over appliance.yaml (CPUs, memory)"})
@reports_errors
def verify(c, image, answers=None, interactive=False, accel="auto", keep=False, config=None):
    """Boot an image, let it configure itself, and check it over SSH with testinfra."""
    cfg = _config(config)
    from image.vm.verify import verify_image
    ok = verify_image(cfg, image=image, answers=answers, interactive=interactive,
                      accel=accel, keep=keep)
    sys.exit(0 if ok else 1)


@task(help={"image": "a built Debian qcow2 to measure (default: build one, cold and warm cache, and time it)",
            "accel": "auto, kvm or tcg",
            "out": "JSON file for the results (default: build/bench.json)",
            "clients": "concurrent JWK signing clients (default 4)",
            "seconds": "length of each signing run (default 30)",
            "quick": "skip the cold build, the OVA export and the JWK load (under 15 minutes)"})
@reports_errors
def bench(c, image=None, accel="auto", out="build/bench.json", clients="4", seconds="30", quick=False):
    """Measure builds, image size, boot-to-ready (against a plain Debian boot) and issuance against native step-ca."""
    from image.bench.bench import run_benchmarks
    run_benchmarks(image=image, accel=accel, out=out, clients=clients, seconds=seconds, quick=quick)


@task(help={"image": "a built Debian qcow2 to soak (default: build one into build/soak/dist)",
            "accel": "auto, kvm or tcg (auto: KVM only when it really works)",
            "out": "JSON file for the results, rewritten after every result (default: build/soak.json)",
            "power-cuts": "first boots to cut at random moments, then one cut each during backup, restore and "
                          "renew-intermediate (default 20; 0: none)",
            "disk-full": "fill the appliance's disk: backup, renew-intermediate and restore must fail with one line "
                         "and leave the CA serving, then succeed once space is freed",
            "failover": "two step-ca nodes on MariaDB and on PostgreSQL behind a round-robin proxy, ACME clients "
                        "issuing while one node is killed and restarted",
            "seconds": "how long the failover clients issue, both databases at once (default 300)",
            "seed": "the random seed (default: from the clock; printed and stored, to replay a run)",
            "upgrade": "build the previous release's image (image/soak/upgrade.py: PREVIOUS_RELEASE, cached), "
                       "first-boot it, issue certificates, back it up, then first-boot this image restoring "
                       "the backup: same root and intermediate, the old ACME account renews (not in the default run)",
            "parallel": "VMs booted at a time for the power cuts and the full disk (default auto: one per host core, "
                        "at most 4 and half the memory); the failover runs beside them",
            "vm-cpus": "vCPUs per soak VM (default auto: the host's cores shared out among the VMs at once, at most "
                       "the image's; under TCG an overcommitted host slows every guest)"})
@reports_errors
def soak(c, image=None, accel="auto", out="build/soak.json", power_cuts=None, disk_full=False, failover=False,
         seconds="300", seed=None, upgrade=False, parallel="auto", vm_cpus="auto"):
    """Power cuts, a full disk, node failover and the upgrade from the previous image; prints a table, writes
    build/soak.json. With no campaign named: 20 power cuts, disk full and failover."""
    from image.soak.soak import run_soak
    ok = run_soak(image=image, accel=accel, out=out, power_cuts=power_cuts, disk_full=disk_full, failover=failover,
                  seconds=seconds, seed=seed, upgrade=upgrade, parallel=parallel, vm_cpus=vm_cpus)
    sys.exit(0 if ok else 1)
