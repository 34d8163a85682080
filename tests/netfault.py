"""Network faults between the service and its database, for tests and fault runs.

:class:`Relay` is a TCP relay on a loopback port that can freeze: it keeps every connection
open and stops passing bytes, as a server frozen by a storage stall or a paused VM does while
its kernel still acknowledges what it is sent. :class:`Blackhole` drops every packet to or
from a loopback port (``tc``; root and CAP_NET_ADMIN): what a dead host, a cut cable or a
firewall that drops does, where nothing acknowledges anything. It can then keep dropping only
the connections opened before, and let new ones through, as after a failover to a standby
that took the old address.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import subprocess
import threading
from pathlib import Path

from tests.servers import free_port


class Relay:
    """Relay connections from ``port`` (a free loopback port) to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.flowing = threading.Event()
        self.flowing.set()
        self.stopping = False
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.stopping = True
        self.flowing.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while not self.stopping:
                self.flowing.wait()
                for key, _ in selector.select(timeout=0.05):
                    if not self.flowing.is_set():
                        break  # frozen meanwhile: what came stays unread
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


class Blackhole:
    """Silence a loopback TCP port with ``tc``: an htb root on ``lo`` whose dropping class is
    a pfifo of length 0.

    What the port's side sends is dropped: its answers, its acknowledgements, its SYN-ACKs.
    The other side's packets still go out and arrive, so its sends succeed and then meet
    silence, as with a dead host. (Dropping them on their own way out would not do: the
    kernel reports a drop on the way out to the sender at once, a failure no dead host
    gives.)
    """

    RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")

    def __init__(self, port: int) -> None:
        self.port = port
        self.on = False
        self.reserved: str | None = None

    @staticmethod
    def available() -> bool:
        """Whether this run may change ``lo``'s queueing (root, CAP_NET_ADMIN, htb)."""
        try:
            added = subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:",
                                    "htb", "default", "10"], capture_output=True).returncode
        except OSError:
            return False
        if added:
            return False
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
        return True

    def start(self) -> None:
        """Silence the port: every connection to it, open or new."""
        tc = ["tc"]
        self._run(*tc, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default",
                  "10")
        self.on = True
        for classid in ("1:10", "1:20"):
            self._run(*tc, "class", "add", "dev", "lo", "parent", "1:", "classid", classid,
                      "htb", "rate", "100gbit")
        self._run(*tc, "qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:",
                  "pfifo", "limit", "0")
        self._drop("1", "sport", self.port)

    def silence_open_connections(self) -> int:
        """Silence the connections to the port open now, for good; returns how many. With
        :meth:`start` first, and before the port is heard again (:meth:`restore_port`)."""
        ports = sorted(_client_ports(self.port))
        # Here every connection goes from 127.0.0.1 to 127.0.0.1: a new one on a silenced
        # local port would be silenced too, where a real one would reach the standby. So
        # those ports are not given to new connections meanwhile.
        self.reserved = self.RESERVED.read_text().strip()
        self.RESERVED.write_text(",".join([*filter(None, [self.reserved]),
                                           *map(str, ports)]))
        for port in ports:
            self._drop("2", "dport", port)
        return len(ports)

    def restore_port(self) -> None:
        """New connections to the port get answers again (a standby took the address)."""
        self._run("tc", "filter", "del", "dev", "lo", "parent", "1:", "prio", "1")

    def stop(self) -> None:
        if self.on:
            self.on = False
            self._run("tc", "qdisc", "del", "dev", "lo", "root")
        if self.reserved is not None:
            self.RESERVED.write_text(self.reserved or "\n")
            self.reserved = None

    def _drop(self, prio: str, direction: str, port: int) -> None:
        self._run("tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip",
                  "prio", prio, "u32", "match", "ip", direction, str(port), "0xffff",
                  "flowid", "1:20")

    @staticmethod
    def _run(*command: str) -> None:
        subprocess.run(command, check=True, capture_output=True)


def _client_ports(server_port: int) -> set[int]:
    """The local ports of this machine's established TCP connections to ``server_port``."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if int(remote.rsplit(":", 1)[1], 16) == server_port and state == "01":
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
