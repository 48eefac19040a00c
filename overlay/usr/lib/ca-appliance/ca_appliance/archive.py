"""Reading a backup archive: once, streamed, with limits, every name checked before it is used.

A backup can come from anywhere (a USB stick, the CASEED volume, a file an attacker left), so
nothing in it is trusted before it is checked, and nothing it says can make the appliance spend
unbounded memory, disk or time (issue 21):

- the file is read once, front to back, in chunks: decrypted (format 2), gunzipped and untarred
  as one stream, each member written straight to where the caller stages it;
- limits: the file's size, the unpacked size (and the free space of the target file system), the
  member count, each member's size, the size of tar's own extended headers; the KDF parameters
  of a sealed archive are no larger than the ones this appliance writes (SCRYPT);
- member names are normalised (`./a`, `a//b` -> `a`, `a/b`) before any check; absolute names,
  `..`, control characters, duplicates (after normalisation), a file where another member needs
  a directory, links, devices and FIFOs are refused;
- a sealed archive is authenticated (AES-256-GCM's tag, checked once the last byte is read)
  before the caller may install anything: until then what was written is only staged.

Every refusal is a UserError (exit 2, one line) that never holds the passphrase.
"""
import base64
import json
import os
import stat
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import UserError

MAGIC = b"CA-APPLIANCE-BACKUP\n"
ENCRYPTED_FORMAT = 2
SCRYPT = {"n": 2 ** 17, "r": 8, "p": 1}   # what `ca-appliance backup` writes, and the most a header may ask
TAG_BYTES = 16
NONCE_BYTES = 12
CHUNK = 64 * 1024

# Limits: a real backup (config, keys, a badger database of a busy CA) is far below each.
MAX_FILE_BYTES = 512 * 2 ** 20       # the archive file
MAX_UNPACKED_BYTES = 1024 * 2 ** 20  # the whole tar stream, gunzipped
MAX_MEMBER_BYTES = 512 * 2 ** 20     # one member
MAX_MEMBERS = 20000
MAX_HEADER_BYTES = 1024              # the JSON header line of a sealed archive
MAX_EXTENDED_HEADER = 64 * 1024      # a tar pax or GNU long-name header
DISK_RESERVE = 64 * 2 ** 20          # left free on the target file system
HEADER_KEYS = {"format", "kdf", "n", "r", "p", "cipher", "salt", "nonce"}


def derive(passphrase, salt, n, r, p):
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def is_sealed(path):
    """True when the file starts like a format 2 archive (False when it cannot be read: the reader says why)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def parse_header(line, fail):
    """(n, r, p, salt, nonce) from a sealed archive's header line; fail(why) for anything else."""
    try:
        header = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        fail("damaged backup header (not JSON)")
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        fail(f"damaged backup header (the keys must be {', '.join(sorted(HEADER_KEYS))})")
    if header["format"] != ENCRYPTED_FORMAT or header["kdf"] != "scrypt" or header["cipher"] != "AES-256-GCM":
        fail("unsupported backup header (format 2, scrypt and AES-256-GCM are read)")
    n, r, p = header["n"], header["r"], header["p"]
    if not all(type(value) is int for value in (n, r, p)):
        fail("damaged backup header (n, r and p must be integers)")
    if not (2 <= n <= SCRYPT["n"] and n & (n - 1) == 0):
        fail(f"unsupported backup header: scrypt n {n} (a power of two from 2 to {SCRYPT['n']})")
    if not (1 <= r <= SCRYPT["r"] and 1 <= p <= SCRYPT["p"]):
        fail(f"unsupported backup header: scrypt r {r}, p {p} (at most r {SCRYPT['r']}, p {SCRYPT['p']})")
    try:
        salt = base64.b64decode(header["salt"], validate=True)
        nonce = base64.b64decode(header["nonce"], validate=True)
    except (TypeError, ValueError):
        fail("damaged backup header (salt and nonce must be base64)")
    if not 16 <= len(salt) <= 64 or len(nonce) != NONCE_BYTES:
        fail(f"damaged backup header (a salt of 16 to 64 bytes and a nonce of {NONCE_BYTES} are read)")
    return n, r, p, salt, nonce


class _Source:
    """The archive file, read front to back with a cap (the file may grow while it is read)."""

    def __init__(self, handle, fail):
        self.handle, self.fail, self.count = handle, fail, 0

    def read(self, size):
        data = self.handle.read(size)
        self.count += len(data)
        if self.count > MAX_FILE_BYTES:
            self.fail(f"is larger than {MAX_FILE_BYTES // 2 ** 20} MiB (the most a backup is read from)")
        return data

    def finish(self):
        """Nothing may follow the archive's end."""
        if self.read(1):
            self.fail("damaged (data after the archive's end)")


class _Decrypting:
    """Format 2's ciphertext, decrypted as it is read; finish() checks the tag (the whole file's)."""

    def __init__(self, source, length, key, nonce, header_bytes, fail):
        self.source, self.left, self.fail = source, length, fail
        self.decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
        self.decryptor.authenticate_additional_data(header_bytes)

    def read(self, size):
        if self.left <= 0:
            return b""
        data = self.source.read(min(size, self.left, CHUNK))
        if not data:
            self.fail("is truncated")
        self.left -= len(data)
        return self.decryptor.update(data)

    def finish(self, check_rest=True):
        """The tag, once every byte is read; check_rest: nothing may be left after the gzip stream."""
        while True:
            data = self.read(CHUNK)
            if not data:
                break
            if check_rest:
                self.fail("damaged (data after the compressed archive)")
        tag = self.source.read(TAG_BYTES)
        try:
            self.decryptor.finalize_with_tag(tag)
        except (InvalidTag, ValueError):
            self.fail("the passphrase does not open this backup (or the file was altered)")
        self.source.finish()


class _Gunzip:
    """One gzip member, inflated as it is read, at most MAX_UNPACKED_BYTES; nothing may follow it."""

    def __init__(self, source, budget, fail, over_budget):
        self.source, self.budget, self.fail, self.over_budget = source, budget, fail, over_budget
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.count = 0
        self.pending = b""

    def read(self, size=CHUNK):
        size = max(1, min(size, CHUNK)) if size is not None and size >= 0 else CHUNK
        while True:
            if self.pending:
                data = self._inflate(self.pending, size)
            elif self.inflate.eof:
                if self.inflate.unused_data:
                    self.fail("damaged (data after the compressed archive)")
                return b""
            else:
                raw = self.source.read(CHUNK)
                if not raw:
                    self.fail("is truncated (the compressed stream ends early)")
                data = self._inflate(raw, size)
            if self.inflate.eof and self.inflate.unused_data:
                self.fail("damaged (data after the compressed archive)")
            if data:
                self.count += len(data)
                if self.count > self.budget:
                    self.fail(self.over_budget)
                return data

    def _inflate(self, raw, size):
        # every reader of the stream (tar headers, member data, the drain) gets one line, not zlib's traceback
        try:
            data = self.inflate.decompress(raw, size)
        except zlib.error:
            self.fail("damaged (the compressed stream is corrupt)")
        self.pending = self.inflate.unconsumed_tail
        return data

    def drain(self):
        """What is left after tar's end: only the zero blocks of its padding may be there."""
        while True:
            data = self.read(CHUNK)
            if not data:
                return
            if data.strip(b"\0"):
                self.fail("damaged (data after the archive's end)")


class _BoundedTarInfo(tarfile.TarInfo):
    """tar's extended headers (pax, GNU long names) are read whole by tarfile: bound them first."""

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                         tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.HeaderError("a sparse member")
        return super()._proc_member(tarfile_)


def normalise(name, fail):
    """`./a//b/` -> `a/b`; refuses what could point elsewhere or print as something else."""
    if not isinstance(name, str) or not name:
        fail("unexpected member without a name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"unexpected member {name!r:.80}: its name is not UTF-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name:
        fail(f"unexpected member {name!r:.80}: control characters or a backslash in its name")
    if name.startswith("/"):
        fail(f"unexpected member {name!r:.80}: an absolute name")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        fail(f"unexpected member {name!r:.80}: '..' in its name")
    if not parts:
        fail(f"unexpected member {name!r:.80}")
    return "/".join(parts)


def existing_parent(path):
    """path, or its nearest existing parent (whose file system a new file would be on)."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path):
    """Bytes an unprivileged user may still write there (step-ca runs as one): root's reserve excluded."""
    info = os.statvfs(existing_parent(path))
    return info.f_bavail * info.f_frsize


def unpack(archive_path, *, passphrase, allow_unencrypted, accept, destination, in_memory, command="restore",
           space_on=None, small_limit=1024 * 1024):
    """Stream the archive into place; returns ({name: bytes} of the members named in `in_memory`,
    {name: is_dir} of every member). Raises UserError for anything but a sound archive of ours.

    accept(name, is_dir) -> why not (str) or None; destination(name) -> the path to write the member
    to; in_memory: names kept as bytes (at most `small_limit` each); space_on: a path on the file
    system written to (the unpacked size must fit there)."""
    archive_path = str(archive_path)

    def fail(why):
        raise UserError(f"{command}: {archive_path}: {why}")

    try:
        handle = open(archive_path, "rb")
    except OSError as error:
        raise UserError(f"{command}: {archive_path}: cannot be read ({error.strerror})") from None
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            fail("is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            fail(f"is larger than {MAX_FILE_BYTES // 2 ** 20} MiB (the most a backup is read from)")
        source = _Source(handle, fail)
        start = source.read(len(MAGIC))
        if start == MAGIC:
            line = b""
            while not line.endswith(b"\n"):
                byte = source.read(1)
                if not byte or len(line) >= MAX_HEADER_BYTES:
                    fail("damaged backup header")
                line += byte
            n, r, p, salt, nonce = parse_header(line[:-1], fail)
            if not passphrase:
                fail("is an encrypted backup; give its passphrase (--passphrase-file FILE, or run on a "
                     "terminal to be asked)")
            length = info.st_size - len(MAGIC) - len(line) - TAG_BYTES
            if length < 0:
                fail("is truncated")
            key = derive(passphrase, salt, n, r, p)
            stream = _Decrypting(source, length, key, nonce, MAGIC + line, fail)
        else:
            if passphrase and not allow_unencrypted:
                fail("is not encrypted (a plain .tar.gz: nothing proves who wrote it), yet a passphrase was "
                     "given; to restore it anyway add --allow-unencrypted")

            class _Prefixed:   # the bytes read to look for MAGIC are the gzip stream's first
                def __init__(self):
                    self.head = start

                def read(self, size):
                    if self.head:
                        data, self.head = self.head[:size], self.head[size:]
                        return data
                    return source.read(size)

                def finish(self):
                    source.finish()
            stream = _Prefixed()
        budget = MAX_UNPACKED_BYTES
        over_budget = f"unpacks to more than {MAX_UNPACKED_BYTES // 2 ** 20} MiB, the most a CA archive may"
        if space_on is not None and free_bytes(space_on) - DISK_RESERVE < budget:
            free = free_bytes(space_on)
            budget = max(0, free - DISK_RESERVE)
            over_budget = (f"needs more space than {existing_parent(space_on)} has: {free // 2 ** 20} MiB free, "
                           f"of which {DISK_RESERVE // 2 ** 20} MiB stay free for step-ca; free space and run it "
                           "again")
        gunzip = _Gunzip(stream, budget, fail, over_budget)
        try:
            kept, seen = _untar(gunzip, accept, destination, in_memory, small_limit, fail)
            gunzip.drain()
        except UserError:
            if isinstance(stream, _Decrypting):
                stream.finish(check_rest=False)  # a wrong passphrase decrypts to noise: say so, not "damaged"
            raise
        stream.finish()   # the tag: before it, everything written is only staged
    return kept, seen


def _untar(gunzip, accept, destination, in_memory, small_limit, fail):
    kept, seen, files, implied = {}, {}, set(), set()
    try:
        archive = tarfile.open(fileobj=gunzip, mode="r|", tarinfo=_BoundedTarInfo)
    except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError) as error:
        fail(f"not a ca-appliance backup ({_reason(error)})")
    with archive:
        while True:
            try:
                member = archive.next()
            except (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError) as error:
                fail(f"damaged ({_reason(error)})")
            if member is None:
                break
            if len(seen) >= MAX_MEMBERS:
                fail(f"has more than {MAX_MEMBERS} members")
            name = normalise(member.name, fail)
            is_dir = member.type == tarfile.DIRTYPE
            if not is_dir and member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                fail(f"unexpected member {name!r:.80}: only regular files and directories are restored "
                     "(no links, devices or FIFOs)")
            if member.sparse is not None:
                fail(f"unexpected member {name!r:.80}: a sparse file")
            if name in seen:
                fail(f"has two members named {name!r:.80} (after normalisation); which one would count?")
            ancestors = [str(parent) for parent in PurePosixPath(name).parents][:-1]
            if any(parent in files for parent in ancestors) or (not is_dir and name in implied):
                fail(f"unexpected member {name!r:.80}: a file and a directory by the same name")
            why = accept(name, is_dir)
            if why:
                fail(f"unexpected member {name!r:.80}; {why}")
            seen[name] = is_dir
            implied.update(ancestors)
            if is_dir:
                path = destination(name)
                if path is not None:
                    path.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            files.add(name)
            if member.size > MAX_MEMBER_BYTES:
                fail(f"member {name!r:.80} is larger than {MAX_MEMBER_BYTES // 2 ** 20} MiB")
            try:
                data = archive.extractfile(member)
            except (tarfile.TarError, EOFError, ValueError) as error:
                fail(f"damaged ({_reason(error)})")
            if name in in_memory:
                if member.size > small_limit:
                    fail(f"member {name!r:.80} is larger than {small_limit // 1024} KiB")
                kept[name] = _read_all(data, member.size, fail)
                continue
            _copy_to(data, member.size, destination(name), fail)
    return kept, seen


def _read_all(data, size, fail):
    chunks, left = [], size
    while left > 0:
        chunk = _read_member(data, min(CHUNK, left), fail)
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_member(data, size, fail):
    try:
        chunk = data.read(size)
    except (tarfile.TarError, EOFError, ValueError, zlib.error) as error:
        fail(f"damaged ({_reason(error)})")
    if not chunk:
        fail("is truncated (a member ends early)")
    return chunk


def _copy_to(data, size, path, fail):
    """The member's bytes into a new file (never through a link, never into an existing file), 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        left = size
        while left > 0:
            chunk = _read_member(data, min(CHUNK, left), fail)
            handle.write(chunk)
            left -= len(chunk)


def _reason(error):
    """A parser's complaint, one short line (never more than the parser's own words)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:120]
