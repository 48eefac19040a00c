"""Adding the appliance's root to Debian's trust store without the full rebuild.

`update-ca-certificates` re-reads every certificate it knows (about 140) with a few shell commands
each, which takes tens of seconds on an emulated first boot. For one new certificate the result is
three small changes, made here exactly as the tool makes them: the `<name>.pem` link in
/etc/ssl/certs, the certificate appended to the bundle (written beside it and renamed), and the
`<subject hash>.<n>` link `openssl rehash` would make. Whenever that is not the whole story (the
certificate replaces an earlier one, whose PEM is still in the bundle, or hooks such as Java's
keystore want to hear about it), the caller runs the full tool instead.
"""
import os
import subprocess
from pathlib import Path

CERTS_DIR = Path("/etc/ssl/certs")
BUNDLE_NAME = "ca-certificates.crt"
HOOKS_DIR = Path("/etc/ca-certificates/update.d")


def subject_hash(cert_path):
    """OpenSSL's subject name hash (the c_rehash link name), from openssl itself."""
    result = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(cert_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    value = result.stdout.strip()
    return value if result.returncode == 0 and len(value) == 8 else None


def _symlink(target, link):
    """ln -sf: replace whatever is at link, atomically."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def add_new_anchor(anchor, certs_dir=CERTS_DIR, hooks_dir=HOOKS_DIR):
    """Add the certificate file `anchor` (already in /usr/local/share/ca-certificates, new there) to the
    store; False when the full `update-ca-certificates` is needed instead."""
    anchor, certs_dir = Path(anchor), Path(certs_dir)
    bundle = certs_dir / BUNDLE_NAME
    if not bundle.is_file():
        return False
    if Path(hooks_dir).is_dir() and any(os.access(p, os.X_OK) and p.is_file() for p in Path(hooks_dir).iterdir()):
        return False
    digest = subject_hash(anchor)
    if digest is None:
        return False
    pem = anchor.read_text()
    if not pem.endswith("\n"):
        pem += "\n"
    pem_link = certs_dir / (anchor.name[:-len(".crt")] if anchor.name.endswith(".crt") else anchor.name)
    pem_link = pem_link.with_name(pem_link.name.replace(" ", "_") + ".pem")
    _symlink(str(anchor), pem_link)
    current = bundle.read_text()
    if pem not in current:
        tmp = bundle.with_name(f".{BUNDLE_NAME}.tmp")
        tmp.write_text(current + pem)
        os.chmod(tmp, 0o644)
        os.replace(tmp, bundle)
    for index in range(100):   # openssl rehash: the first free <hash>.<n>, unless already linked
        link = certs_dir / f"{digest}.{index}"
        if link.is_symlink() and os.readlink(link) == pem_link.name:
            break
        if not link.exists() and not link.is_symlink():
            os.symlink(pem_link.name, link)
            break
    return True
