"""A board at the end of an SSH connection, driven through the user's own OpenSSH client.

Like labgrid's SSHDriver and Ansible's ssh connection, this calls the system `ssh` rather than a
Python SSH library, so the user's `~/.ssh/config` (or `--ssh-config`), aliases, jump hosts, keys and
agents all work as they do in a terminal. Every call is non-interactive (`BatchMode=yes`) and rides
one multiplexed connection per run (`ControlMaster=auto`, `ControlPersist`); a host key seen for the
first time is accepted and pinned in known_hosts (`StrictHostKeyChecking=accept-new`), a changed one
is refused. Files travel as tar streams over that connection, so the board needs only `sh` and `tar`.

`ssh` exits 255 when ssh itself failed (unreachable, refused, cut) and otherwise with the remote
command's status; the two are told apart and each becomes one `RemoteError` line.
"""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from edgeprune.errors import RemoteError

SSH_FAILED = 255
CONNECT_TIMEOUT_S = 10

# What ssh prints (stderr, exit 255) -> what the user is told. First match wins.
_SSH_FAULTS = (
    (("Permission denied", "Too many authentication failures", "no matching host key type"),
     "authentication refused by {host}"),
    (("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "host key for"),
     "the host key of {host} is not the one pinned in known_hosts (reinstalled board, or someone in between?)"),
    (("Could not resolve hostname", "Name or service not known", "Connection refused", "timed out",
      "No route to host", "Network is unreachable"),
     "{host} is unreachable"),
)


def remote_path(path: str) -> str:
    """A remote path for `sh`: quoted, but with a leading `~` left for the board's shell to expand."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


def _last_line(text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class SSHHost:
    """One board, reached as ``host`` (anything ``ssh`` takes: an alias, ``user@host``, ``host``).

    Use as a context manager (or call ``close``) to end the shared connection."""

    def __init__(self, host: str, ssh_config: str | Path | None = None, connect_timeout: int = CONNECT_TIMEOUT_S):
        if not host or host.startswith("-"):
            raise RemoteError(f"'{host}' is not a host name ssh can take")
        if shutil.which("ssh") is None:
            raise RemoteError("the OpenSSH client 'ssh' is not installed on this machine")
        if ssh_config is not None and not Path(ssh_config).expanduser().is_file():
            raise RemoteError(f"ssh config file not found: {ssh_config}")
        self.host = host
        self.ssh_config = Path(ssh_config).expanduser() if ssh_config else None
        self.connect_timeout = connect_timeout
        # A short private directory: a control socket's path must fit in 104 bytes.
        self._control_dir = Path(tempfile.mkdtemp(prefix="ep-ssh-", dir="/tmp"))

    # ------------------------------------------------------------------ the ssh command line
    def options(self) -> list[str]:
        opts = ["-F", str(self.ssh_config)] if self.ssh_config else []
        for key, value in (("BatchMode", "yes"), ("StrictHostKeyChecking", "accept-new"),
                           ("ControlMaster", "auto"), ("ControlPath", str(self._control_dir / "%C")),
                           ("ControlPersist", "60"), ("ConnectTimeout", str(self.connect_timeout)),
                           ("ServerAliveInterval", "5"), ("ServerAliveCountMax", "3")):
            opts += ["-o", f"{key}={value}"]
        return opts

    def command(self, remote: str) -> list[str]:
        return ["ssh", *self.options(), self.host, "--", remote]

    # ------------------------------------------------------------------ running
    def run(self, remote: str, *, stdin: bytes | None = None, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``remote`` (a shell command line) on the board; bytes in, bytes out.

        RemoteError when ssh itself fails, or (``check``) when the command exits non-zero."""
        try:
            p = subprocess.run(self.command(remote), input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.host}: '{remote[:80]}' did not finish within {timeout:g} s") from None
        if p.returncode == SSH_FAILED:
            raise self._ssh_fault(p.stderr)
        if check and p.returncode != 0:
            raise self.command_fault(remote, p)
        return p

    def _ssh_fault(self, stderr: bytes) -> RemoteError:
        text = stderr.decode(errors="replace")
        for needles, message in _SSH_FAULTS:
            if any(n in text for n in needles):
                return RemoteError(f"{message.format(host=self.host)} (ssh: {_last_line(text)})")
        return RemoteError(f"connection to {self.host} lost (ssh: {_last_line(text) or 'exit 255'})")

    def command_fault(self, remote: str, p: subprocess.CompletedProcess) -> RemoteError:
        err = _last_line(p.stderr) or _last_line(p.stdout)
        # tar names the full disk on an earlier line and ends with a generic "Exiting with failure".
        full = [ln.strip() for ln in p.stderr.decode(errors="replace").splitlines()
                if "No space left on device" in ln or "Disk quota exceeded" in ln]
        if full:
            return RemoteError(f"the disk on {self.host} is full ({full[-1][:300]})")
        return RemoteError(f"on {self.host}, '{remote[:80]}' failed with exit {p.returncode}: {err or 'no output'}")

    # ------------------------------------------------------------------ files
    def push(self, files: dict[str, Path], remote_dir: str, timeout: float | None = None) -> None:
        """Copy local ``files`` ({name on the board: local path}) into ``remote_dir`` (created)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, local in files.items():
                tar.add(str(local), arcname=name)
        d = remote_path(remote_dir)
        self.run(f"mkdir -p {d} && tar -xf - -C {d}", stdin=buf.getvalue(), timeout=timeout)

    def pull(self, remote_dir: str, names: list[str], local_dir: Path, timeout: float | None = None) -> list[Path]:
        """Copy ``names`` from ``remote_dir`` into ``local_dir``. The board is not trusted with paths:
        members are extracted with tarfile's ``data`` filter (no absolute paths, no ``..``, no links out)."""
        quoted = " ".join(shlex.quote(n) for n in names)
        p = self.run(f"tar -cf - -C {remote_path(remote_dir)} {quoted}", timeout=timeout)
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(p.stdout), mode="r") as tar:
                tar.extractall(local_dir, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise RemoteError(f"could not unpack what {self.host} sent ({e})") from None
        return [local_dir / n for n in names]

    # ------------------------------------------------------------------ lifetime
    @property
    def connected(self) -> bool:
        """Whether the shared (multiplexed) connection is up."""
        p = subprocess.run(["ssh", *self.options(), "-O", "check", self.host], capture_output=True)
        return p.returncode == 0

    def close(self) -> None:
        subprocess.run(["ssh", *self.options(), "-O", "exit", self.host], capture_output=True)
        shutil.rmtree(self._control_dir, ignore_errors=True)

    def __enter__(self) -> "SSHHost":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
