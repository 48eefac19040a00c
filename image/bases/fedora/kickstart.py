"""The Fedora kickstart and the OEMDRV volume it travels on.

Templates in kickstart/ (Jinja2, StrictUndefined, no autoescape; values in shell and kickstart
lines go through the `shquote` filter) turn the config into ks.cfg; the %post shell lives in
separate *.sh.j2 files so shellcheck can check it once rendered. Every rendered kickstart is
parsed with pykickstart's handler for the release (F45 for Fedora 45) with ksvalidator's rules:
an error or a warning (deprecated or unknown syntax) fails the render.

The chrooted %post only installs the step RPMs (or a local binary) and the payload, then runs the
guest's `ca-appliance provision --base fedora`: users, sudoers, units, firewall zone, growroot,
initramfs drivers, SELinux labels and generalisation are the code the Debian build runs too.

The OEMDRV volume holds ks.cfg, the payload tarball and the step artifacts, flat at its root
under fixed names (step-ca.rpm, step-cli.rpm, or step-ca for a local binary), so the templates
never depend on upstream file names. `invoke render` writes the kickstart, the payload tarball
and payload.json (the volume's file list) without downloading anything.
"""
from __future__ import annotations

import json
import re
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# jinja2 and pykickstart are imported where the kickstart is rendered or parsed: the base's facts
# (packages, units) are read where they are not installed (the newest-userland tier's chroot)
from image.config import PROJECT_ROOT, Config
from image.errors import StepFailed
from image.files import sha256_file
from image.payload import PAYLOAD_TAR_OPTIONS

KICKSTART_DIR = PROJECT_ROOT / "kickstart"
KICKSTART_TEMPLATE = "ks.cfg.j2"
SCRIPT_TEMPLATES = ("post-copy-payload.sh.j2", "post-install.sh.j2", "post-report.sh.j2", "post-hybrid-boot.sh.j2",
                    "post-pmbr.sh.j2")

OEMDRV_LABEL = "OEMDRV"            # Anaconda's dracut looks for ks.cfg on a volume with this label
KICKSTART_NAME = "ks.cfg"
PAYLOAD_NAME = "ca-appliance-payload.tar.gz"
PAYLOAD_LIST_NAME = "payload.json"
STAGING_DIR = "/var/tmp/ca-appliance-install"
INSTALL_DISK = "vda"               # the builder's QEMU attaches the target disk as virtio-blk
ROOT_FSTYPE = "xfs"                # Fedora Server's default; xfs_growfs grows it online
# virtio-serial port the report %post writes to; the builder's QEMU connects it to a file.
RESULT_PORT = "org.ca-appliance.install-result.0"
SUCCESS_MARKER = "ca-appliance-install: ok"
# panic=10: a panicked kernel reboots (the first boot resumes) instead of hanging; the last console is
# /dev/console: serial.
KERNEL_APPEND = "panic=10 console=tty0 console=ttyS0,115200n8"
# The installer's serial console (the builder's QEMU writes it to the serial log it follows); the %post
# scripts copy their output there (kickstart/post-console.sh.j2).
INSTALLER_CONSOLE = "/dev/ttyS0"

# Units the payload must bring (the overlay's; `ca-appliance provision` enables every one it ships).
PAYLOAD_UNITS = ("step-ca.service", "ca-appliance-firstboot.service")
PROVISION_COMMAND = "/usr/bin/ca-appliance provision --base fedora"
# Our own repo ids: Anaconda owns "updates" (and "fedora"); a kickstart repo of that name is lost.
UPDATES_REPO = "ca-appliance-updates"
EVERYTHING_REPO = "ca-appliance-everything"
EXTRA_PACKAGES = (
    "python3-cryptography", "python3-pyyaml",                       # the guest CLI's imports
    "python3-PyMySQL", "python3-psycopg2",                          # the shared-database check
    "NetworkManager", "firewalld", "chrony", "sudo",
    "qemu-guest-agent", "open-vm-tools",                            # KVM and vSphere guests (Everything)
    "cloud-utils-growpart", "xfsprogs",                             # growroot (Everything): partition, xfs
    "alternatives",                                                 # the step CLI RPM's postinstall uses it
    "tar", "policycoreutils", "dracut",                             # %post: unpack, restorecon, initramfs
)
# updates.security: dnf5-automatic installs security updates daily (config: UPDATE_FILES in __init__.py)
UPDATE_PACKAGES = ("dnf5-plugin-automatic",)
# Where a local binary artifact goes in the image (the RPMs put themselves in place).
BINARY_INSTALL_PATHS = {"step-ca": "/usr/bin/step-ca", "step-cli": "/usr/bin/step"}


@dataclass(frozen=True)
class VolumeFile:
    """One file at the root of the OEMDRV volume."""
    name: str                    # its name on the volume
    role: str                    # 'kickstart' | 'payload' | 'step-ca' | 'step-cli'
    kind: str                    # 'kickstart' | 'tarball' | 'rpm' | 'binary'
    version: str | None
    source: Path | None          # the host file that goes there; None: fetched later by the build
    sha256: str | None
    state: str                   # 'rendered' | 'cached' | 'local' | 'to be fetched by the build'

    @property
    def install_path(self) -> str | None:
        return BINARY_INSTALL_PATHS.get(self.role) if self.kind == "binary" else None


def tree_url(mirror: str, release: int) -> str:
    """The Fedora Server installation tree (holds .treeinfo, images/pxeboot, the repodata)."""
    return f"{mirror.rstrip('/')}/releases/{release}/Server/x86_64/os/"


def updates_url(mirror: str, release: int) -> str:
    return f"{mirror.rstrip('/')}/updates/{release}/Everything/x86_64/"


def everything_url(mirror: str, release: int) -> str:
    """The release's Everything tree: packages in no Server group (growpart, the guest agents)."""
    return f"{mirror.rstrip('/')}/releases/{release}/Everything/x86_64/os/"


def kickstart_repositories(mirror: str, release: int) -> dict[str, str]:
    """Every repository the kickstart installs from ({what it is: its URL}): Anaconda needs all of
    them, so an air-gapped mirror must carry each one, repodata/ and packages."""
    return {"Server tree": tree_url(mirror, release), "Everything tree": everything_url(mirror, release),
            "updates": updates_url(mirror, release)}


def mirror_layout(release: int) -> str:
    """What a mirror of fedora.release must carry below fedora.mirror, as the messages and docs say it."""
    paths = [url.removeprefix("/") for url in kickstart_repositories("", release).values()]
    return f"{', '.join(paths[:-1])} and {paths[-1]} (each with its repodata/)"


def listen_port(address: str) -> int:
    """The TCP port of a listen address like ':443' or '[::]:8443' (validated by the config)."""
    return int(address.rsplit(":", 1)[1])


def kickstart_syntax(release: int) -> str:
    """pykickstart's handler for a Fedora release: its own, else the newest this pykickstart knows
    that is not newer than the release."""
    from pykickstart.version import versionMap
    known = sorted(int(k[1:]) for k in versionMap if re.fullmatch(r"F\d+", k))
    usable = [v for v in known if v <= release]
    return f"F{usable[-1] if usable else known[0]}"


def shquote(value) -> str:
    """Quote a value for a POSIX shell or a kickstart command line (pykickstart splits with shlex)."""
    return shlex.quote(str(value))


def artifact_volume_file(artifact) -> VolumeFile:
    """Where an image.artifacts.Artifact goes on the volume."""
    if artifact.kind not in ("rpm", "binary"):
        raise StepFailed("render kickstart", f"{artifact.name} is a .{artifact.kind}; the fedora base installs "
                                             f"an RPM or an x86-64 binary")
    name = f"{artifact.name}.rpm" if artifact.kind == "rpm" else artifact.name
    state = "local" if artifact.version == "local" else "cached"
    return VolumeFile(name, artifact.name, artifact.kind, artifact.version, Path(artifact.path),
                      artifact.sha256, state)


def planned_artifacts(cfg: Config) -> list[VolumeFile]:
    """The step artifacts a fedora build will put on the volume, found without downloading:
    a local `path` as it is, a release RPM from the cache when it is there, else by name only."""
    from image.artifacts import detect_kind, release_asset_name, release_dir
    wanted = [("step-ca", cfg.artifacts.step_ca)]
    if cfg.artifacts.step_cli.enabled:
        wanted.append(("step-cli", cfg.artifacts.step_cli))
    planned = []
    for role, section in wanted:
        if section.path is not None:
            path = Path(section.path)
            kind = detect_kind(path) or "unknown"
            planned.append(VolumeFile(role if kind == "binary" else f"{role}.{kind}", role, kind, "local", path,
                                      sha256_file(path), "local"))
            continue
        cached = release_dir(role, section.version) / release_asset_name(role, section.version, "rpm")
        if cached.is_file():
            planned.append(VolumeFile(f"{role}.rpm", role, "rpm", section.version, cached, sha256_file(cached),
                                      "cached"))
        else:
            planned.append(VolumeFile(f"{role}.rpm", role, "rpm", section.version, None, section.sha256,
                                      "to be fetched by the build"))
    return planned


def template_environment(template_dir: Path = KICKSTART_DIR):
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["shquote"] = shquote
    return env


def kickstart_context(cfg: Config, artifacts: Sequence[VolumeFile], mirror: str | None = None) -> dict:
    """Everything the templates may use. `mirror` replaces cfg.fedora.mirror as the guest sees it
    (a file:// mirror is served to the installer over HTTP)."""
    mirror = mirror or cfg.fedora.mirror
    release = cfg.fedora.release
    bad = [a for a in artifacts if a.kind not in ("rpm", "binary")]
    if bad:
        raise StepFailed("render kickstart", f"{bad[0].role} is a {bad[0].kind} file ({bad[0].source}); "
                                             f"the fedora base installs an RPM or an x86-64 binary")
    return {
        "image_name": cfg.image.name, "image_version": cfg.image.version,
        "release": release, "ks_version": kickstart_syntax(release),
        "tree_url": tree_url(mirror, release), "updates_url": updates_url(mirror, release),
        "everything_url": everything_url(mirror, release),
        "updates_repo": UPDATES_REPO, "everything_repo": EVERYTHING_REPO,
        "install_disk": INSTALL_DISK, "root_fstype": ROOT_FSTYPE,
        "kernel_append": KERNEL_APPEND,
        "packages": list(EXTRA_PACKAGES) + (list(UPDATE_PACKAGES) if cfg.updates.security else []),
        "oemdrv_label": OEMDRV_LABEL, "staging_dir": STAGING_DIR, "payload_name": PAYLOAD_NAME,
        "volume_files": [PAYLOAD_NAME] + [a.name for a in artifacts],
        "artifacts": [{"volume_name": a.name, "kind": a.kind, "role": a.role, "install_path": a.install_path}
                      for a in artifacts],
        "payload_tar_options": list(PAYLOAD_TAR_OPTIONS), "provision_command": PROVISION_COMMAND,
        "result_port": RESULT_PORT, "success_marker": SUCCESS_MARKER, "installer_console": INSTALLER_CONSOLE,
    }


def _render(template_dir: Path, name: str, context: dict) -> str:
    import jinja2
    try:
        return template_environment(template_dir).get_template(name).render(context)
    except jinja2.TemplateSyntaxError as e:
        raise StepFailed("render kickstart", f"{e.filename or name} line {e.lineno}: {e.message}") from None
    except jinja2.UndefinedError as e:
        raise StepFailed("render kickstart", f"{template_dir / name}: {e.message}") from None
    except jinja2.TemplateNotFound as e:
        raise StepFailed("render kickstart", f"template {e.name} is missing from {template_dir}") from None


def validate_kickstart(text: str, syntax: str, source: str = KICKSTART_NAME):
    """Parse with pykickstart as `ksvalidator -v SYNTAX` would (warnings are errors too);
    returns the handler, whose attributes tests read back."""
    from pykickstart.errors import KickstartError, KickstartParseWarning
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion
    handler = makeVersion(syntax)
    parser = KickstartParser(handler, followIncludes=False, errorsAreFatal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KickstartParseWarning)
        try:
            parser.readKickstartFromString(text)
        except (KickstartError, KickstartParseWarning) as e:
            detail = " ".join(str(e).split())
            raise StepFailed("render kickstart", f"{source} is not a valid {syntax} kickstart: {detail}") from None
    if parser.errorsCount:
        raise StepFailed("render kickstart", f"{source} is not a valid {syntax} kickstart "
                                             f"({parser.errorsCount} errors)")
    return handler


def render_kickstart(cfg: Config, artifacts: Sequence[VolumeFile], *, mirror: str | None = None,
                     template_dir: Path = KICKSTART_DIR) -> str:
    """ks.cfg for cfg and these artifacts, validated for the release's kickstart syntax."""
    context = kickstart_context(cfg, artifacts, mirror)
    text = _render(Path(template_dir), KICKSTART_TEMPLATE, context)
    validate_kickstart(text, context["ks_version"], f"{Path(template_dir) / KICKSTART_TEMPLATE} (rendered)")
    return text


def render_scripts(cfg: Config, artifacts: Sequence[VolumeFile], *, mirror: str | None = None,
                   template_dir: Path = KICKSTART_DIR) -> dict[str, str]:
    """Each shell template rendered on its own ({'post-install.sh': text, ...}), for shellcheck."""
    context = kickstart_context(cfg, artifacts, mirror)
    return {name.removesuffix(".j2"): _render(Path(template_dir), name, context) for name in SCRIPT_TEMPLATES}


def payload_list(files: Sequence[VolumeFile], cfg: Config) -> dict:
    def entry(f: VolumeFile) -> dict:
        d = asdict(f)
        d["source"] = str(f.source) if f.source else None
        return d
    return {"volume_label": OEMDRV_LABEL, "kickstart_syntax": kickstart_syntax(cfg.fedora.release),
            "tree": tree_url(cfg.fedora.mirror, cfg.fedora.release), "files": [entry(f) for f in files]}


@dataclass(frozen=True)
class Rendered:
    kickstart: Path
    payload: Path
    payload_list: Path
    files: list[VolumeFile]


def render_to(cfg: Config, out: str | Path, out_stream=None) -> Rendered:
    """`invoke render`: ks.cfg, the payload tarball and payload.json in `out`, and say where.
    Downloads nothing: artifacts not in the cache are listed by name and version."""
    from image.payload import write_payload_tarball
    out_stream = sys.stdout if out_stream is None else out_stream
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = planned_artifacts(cfg)
    kickstart = out / KICKSTART_NAME
    kickstart.write_text(render_kickstart(cfg, artifacts))
    payload = write_payload_tarball(cfg, out / PAYLOAD_NAME)
    files = [VolumeFile(KICKSTART_NAME, "kickstart", "kickstart", None, kickstart, sha256_file(kickstart), "rendered"),
             VolumeFile(PAYLOAD_NAME, "payload", "tarball", cfg.image.version, payload, sha256_file(payload),
                        "rendered"),
             *artifacts]
    listing = out / PAYLOAD_LIST_NAME
    listing.write_text(json.dumps(payload_list(files, cfg), indent=2) + "\n")
    print(f"kickstart: {kickstart} (valid {kickstart_syntax(cfg.fedora.release)})", file=out_stream)
    print(f"payload:   {payload}", file=out_stream)
    print(f"list:      {listing} (what goes on the {OEMDRV_LABEL} volume)", file=out_stream)
    for f in files:
        where = f.source if f.source else f"{f.role} {f.version}"
        print(f"  {f.name:<28} {f.state}: {where}", file=out_stream)
    if cfg.image.base != "fedora":
        print(f"note: image.base is {cfg.image.base}; only the fedora base uses the kickstart", file=out_stream)
    return Rendered(kickstart, payload, listing, files)
