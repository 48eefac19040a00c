"""One way to download for every stage: streamed to a temporary file beside the target, its
length and SHA-256 checked, then moved into place. A failure of any kind leaves nothing behind,
and every error is one line that says what to do (missing: a user error; unreachable: a hint).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from image.errors import StepFailed, UserError

USER_AGENT = "ca-appliance-builder"
DOWNLOAD_TIMEOUT_S = 60
CHUNK = 256 * 1024


def download_verified(url: str, target: Path, *, step: str, expected_sha256: str | None, digest_source: str,
                      missing: Callable[[bool], UserError], unreachable_hint: str,
                      progress: bool = False, out=None) -> str:
    """Download url to target and return its sha256.

    digest_source names where expected_sha256 came from ("the release's checksums.txt");
    missing(http_404) is the user error for a URL that does not exist (HTTP 404, or a file:// path);
    unreachable_hint ends the message when the host cannot be reached."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    fd, part = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            digest, received, length = _stream(request, f, url=url, step=step, label=target.name,
                                               missing=missing, unreachable_hint=unreachable_hint,
                                               progress=progress, out=out)
        if length is not None and received != length:
            raise StepFailed(step, f"download of {url} was cut short: got {received} of {length} bytes")
        if expected_sha256 is not None and digest != expected_sha256:
            raise StepFailed(step, f"{target.name} from {url} does not match {digest_source}: "
                                   f"expected sha256 {expected_sha256}, got {digest} (the file was deleted)")
        os.replace(part, target)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return digest


def _stream(request, f, *, url, step, label, missing, unreachable_hint, progress, out):
    host = urlsplit(url).netloc or url
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            bar = ProgressBar(label, expected, out) if progress else None
            h = hashlib.sha256()
            received = 0
            while chunk := response.read(CHUNK):
                f.write(chunk)
                h.update(chunk)
                received += len(chunk)
                if bar:
                    bar.update(received)
            if bar:
                bar.done(received)
            return h.hexdigest(), received, expected
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise missing(True) from None
        raise StepFailed(step, f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError):  # file:// mirrors
            raise missing(False) from None
        raise StepFailed(step, f"cannot reach {host} ({_reason(e.reason)}); {unreachable_hint}") from None
    except (OSError, http.client.HTTPException) as e:  # reset, timed out or cut off mid-body
        raise StepFailed(step, f"download of {url} failed: {_reason(e)}") from None

def _reason(reason) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


class ProgressBar:
    """Percentage and MB on one updating line on a terminal; a line per quarter otherwise (logs)."""

    def __init__(self, label: str, total: int | None, out):
        self.label, self.total, self.out = label, total, out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.shown = -1

    def _line(self, received: int) -> str:
        mb = received / 1e6
        if self.total:
            return f"{self.label} {100 * received // self.total:3d}% {mb:.1f}/{self.total / 1e6:.1f} MB"
        return f"{self.label} {mb:.1f} MB"

    def update(self, received: int) -> None:
        # a terminal redraws on every whole percent; a log gets a line per quarter (or per 10 MB untold)
        if self.tty:
            step = 100 * received // self.total if self.total else received // 100_000
        else:
            step = 4 * received // self.total if self.total else received // 10_000_000
        if step == self.shown:
            return
        self.shown = step
        if self.tty:
            self.out.write("\r" + self._line(received))
            self.out.flush()
        elif not self.total or step < 4:
            print(self._line(received), file=self.out, flush=True)

    def done(self, received: int) -> None:
        if self.tty:
            self.out.write("\r" + self._line(received) + "\n")
        else:
            print(self._line(received), file=self.out)
        self.out.flush()
