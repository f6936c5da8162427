"""A real OpenSSH server on loopback for the remote path's tests: Debian's `sshd` with its own
config, a throw-away host key and user key, a free port on 127.0.0.1, and an ssh_config that a
client reads with `-F` (so the user's own ~/.ssh is never touched)."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class Sshd:
    root: Path
    port: int
    alias: str
    ssh_config: Path
    known_hosts: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        Path("/run/sshd").mkdir(exist_ok=True)   # sshd's privilege-separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.kill_sessions()

    def kill_sessions(self) -> None:
        """Cut every open connection (what a dropped link does), leaving the listener up if it is."""
        out = subprocess.run(["pgrep", "-f", f"sshd.*{self.root}|sshd: .*@|sshd-session"],
                             capture_output=True, text=True).stdout.split()
        listener = self.proc.pid if self.proc else -1
        for pid in map(int, out):
            if pid != listener and _is_child_of(pid, listener):
                os.kill(pid, signal.SIGKILL)

    def rotate_host_key(self) -> None:
        """A new host key, as a reinstalled board (or a man in the middle) would present."""
        for p in self.root.glob("host_key*"):
            p.unlink()
        keygen(self.root / "host_key")
        self.stop()
        self.start()


def _is_child_of(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False


def make_sshd(root: Path, alias: str = "board") -> Sshd:
    root.mkdir(parents=True, exist_ok=True)
    keygen(root / "host_key")
    keygen(root / "user_key")
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    port = free_port()
    (root / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {root / 'host_key'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    known_hosts = root / "known_hosts"
    config = root / "ssh_config"
    config.write_text(f"""\
Host {alias}
  HostName 127.0.0.1
  Port {port}
  User {getpass.getuser()}
  IdentityFile {root / 'user_key'}
  IdentitiesOnly yes
  UserKnownHostsFile {known_hosts}
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
""")
    return Sshd(root, port, alias, config, known_hosts)
