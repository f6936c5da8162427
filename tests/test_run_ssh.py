"""The SSH transport against a real sshd on loopback: commands, files both ways, one shared
connection, pinned host keys, and each fault a user meets as one line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edgeprune.errors import RemoteError
from edgeprune.run.ssh import SSHHost, remote_path

from . import sshd as sshd_mod

pytestmark = pytest.mark.skipif(not sshd_mod.available(), reason="openssh-server not installed (.ci/run installs it)")


@pytest.fixture()
def board(tmp_path):
    server = sshd_mod.make_sshd(tmp_path / "sshd").start()
    yield server
    server.stop()


@pytest.fixture()
def host(board):
    with SSHHost(board.alias, ssh_config=board.ssh_config) as h:
        yield h


def test_runs_commands_and_tells_exit_codes_apart(host, tmp_path):
    assert host.run("echo hello $((6*7))").stdout == b"hello 42\n"
    assert host.run("cat", stdin=b"bytes in").stdout == b"bytes in"
    assert host.run("exit 3", check=False).returncode == 3
    with pytest.raises(RemoteError, match=r"failed with exit 3: oops"):
        host.run("echo oops >&2; exit 3")


def test_push_and_pull_round_trip_with_home_expansion(host, tmp_path):
    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 100)
    (tmp_path / "b.json").write_text('{"x": 1}')
    workdir = f"~/.cache/edgeprune-test-{tmp_path.name}"
    try:
        host.push({"a.bin": tmp_path / "a.bin", "in/b.json": tmp_path / "b.json"}, workdir)
        home = host.run("echo $HOME").stdout.decode().strip()
        assert host.run(f"ls {remote_path(workdir)}/in").stdout == b"b.json\n"
        got = host.pull(f"{home}/.cache/edgeprune-test-{tmp_path.name}", ["a.bin", "in/b.json"], tmp_path / "back")
        assert [p.read_bytes() for p in got] == [(tmp_path / "a.bin").read_bytes(), b'{"x": 1}']
    finally:
        host.run(f"rm -rf {remote_path(workdir)}", check=False)


def client_connections(port: int) -> int:
    """Established TCP connections from a client to ``port`` on loopback, read from /proc/net/tcp."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, remote, state = line.split()[:4]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            n += 1
    return n


def test_one_multiplexed_connection_per_run(host, board):
    assert not host.connected and client_connections(board.port) == 0
    for _ in range(5):
        host.run("true")
    assert host.connected                            # the master stays up between calls...
    assert client_connections(board.port) == 1       # ...and all five calls rode one TCP connection
    host.close()
    assert not host.connected
    deadline = time.monotonic() + 5
    while client_connections(board.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client_connections(board.port) == 0


def test_new_host_key_is_pinned_and_a_changed_one_refused(board, host):
    assert not board.known_hosts.exists() or board.known_hosts.read_text() == ""
    host.run("true")
    assert "ssh-ed25519" in board.known_hosts.read_text()     # accepted once, written down
    host.close()
    board.rotate_host_key()
    with SSHHost(board.alias, ssh_config=board.ssh_config) as again:
        with pytest.raises(RemoteError, match="host key of board is not the one pinned"):
            again.run("true")


def test_refused_key_is_an_authentication_error(board, tmp_path):
    board.root.joinpath("authorized_keys").write_text("")
    with SSHHost(board.alias, ssh_config=board.ssh_config) as h:
        with pytest.raises(RemoteError, match="^authentication refused by board"):
            h.run("true")


def test_unreachable_host(board, tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text(board.ssh_config.read_text().replace(f"Port {board.port}", f"Port {sshd_mod.free_port()}"))
    with SSHHost(board.alias, ssh_config=cfg, connect_timeout=3) as h:
        with pytest.raises(RemoteError, match="^board is unreachable"):
            h.run("true")
    with pytest.raises(RemoteError, match="ssh config file not found"):
        SSHHost("board", ssh_config=tmp_path / "missing")
    with pytest.raises(RemoteError, match="not a host name"):
        SSHHost("-oProxyCommand=touch x")


def test_connection_cut_mid_run(host, board):
    host.run("true")
    errors: list[Exception] = []

    def long_command():
        try:
            host.run("sleep 20")
        except RemoteError as e:
            errors.append(e)

    t = threading.Thread(target=long_command)
    t.start()
    time.sleep(1.0)
    board.kill_sessions()
    t.join(30)
    assert not t.is_alive()
    assert errors and str(errors[0]).startswith("connection to board lost"), errors


def test_full_disk_on_the_board(host):
    """/dev/full answers every write with the kernel's ENOSPC, as a full workdir does."""
    with pytest.raises(RemoteError, match="^the disk on board is full"):
        host.run("head -c 100000 /dev/zero > /dev/full")
