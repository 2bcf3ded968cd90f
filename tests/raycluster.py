"""A real two-node Ray cluster on this machine, for the tests.

Two ``ray start --block`` processes, a head and a worker node, each with its own
``--temp-dir`` (so two raylets and two node ids), one CPU and a small object store each,
and every port chosen free (so they never collide with another Ray on the machine).
Each runs in its own session; :meth:`RayCluster.stop` signals those two process groups,
then kills by pid whatever process still runs from this cluster's temp dirs. It never
calls ``ray stop``, which would stop every Ray of this user on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OBJECT_STORE_BYTES = 100 * 2**20
STOP_GRACE_SECONDS = 3
_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class RayCluster:
    """Head plus one worker node; ``address`` is what ``RAY_ADDRESS`` takes."""

    def __init__(self, pythonpath: Path | None = None) -> None:
        #: Put first on the nodes' PYTHONPATH, so Ray workers import the code under test.
        self.pythonpath = pythonpath
        self.address = ""
        self.temp_dirs: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.start_seconds = 0.0
        self.stop_seconds = 0.0

    def start(self, timeout: float = 240) -> RayCluster:
        began = time.monotonic()
        ray = str(Path(sys.executable).with_name("ray"))
        head_port, client_port, *ports = free_ports(2 + 2 * len(_PORT_FLAGS))
        self.address = f"127.0.0.1:{head_port}"
        try:
            for i, role in enumerate(("--head", "--address")):
                temp = Path(tempfile.mkdtemp(prefix=f"capray{i}-"))  # short: Ray's socket paths must fit 107 bytes
                self.temp_dirs.append(temp)
                own = ports[i * len(_PORT_FLAGS) : (i + 1) * len(_PORT_FLAGS)]
                node_ports = [a for flag, p in zip(_PORT_FLAGS, own, strict=True) for a in (flag, str(p))]
                where = (
                    ["--head", "--port", str(head_port), "--ray-client-server-port", str(client_port),
                     "--include-dashboard", "false"]
                    if role == "--head"
                    else ["--address", self.address]
                )
                command = [ray, "start", "--block", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                           "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(temp),
                           "--disable-usage-stats", *node_ports]
                log = open(temp / "ray-start.log", "wb")  # noqa: SIM115 (the process keeps it)
                self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                       env=self.env(), start_new_session=True))
                self._wait_for_nodes(i + 1, began + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def env(self) -> dict[str, str]:
        """The environment of the nodes and of drivers on this cluster: its address, and no token auth.

        Ray 2.5x+ turns token authentication on when a token exists in ``~/.ray``; a loopback
        test cluster has no use for it, and drivers would need the token the head made.
        """
        env = {**os.environ, "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled"}
        if self.pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.pythonpath), env.get("PYTHONPATH")]))
        return env

    def _wait_for_nodes(self, count: int, deadline: float) -> None:
        """Wait until the cluster lists ``count`` live nodes (asked from a short-lived driver process)."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        while time.monotonic() < deadline:
            for proc, temp in zip(self.processes, self.temp_dirs, strict=True):
                if proc.poll() is not None:
                    log = (temp / "ray-start.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log}")
            if count == 1 and not _listening(self.address):
                time.sleep(0.5)
                continue
            out = subprocess.run([sys.executable, "-c", probe, self.address], capture_output=True, text=True,
                                 env=self.env(), timeout=max(10.0, deadline - time.monotonic()))
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise TimeoutError(f"the Ray cluster at {self.address} did not reach {count} nodes in time")

    def stop(self) -> None:
        began = time.monotonic()
        # SIGTERM lets the raylets and the GCS shut down; `ray start --block` itself ignores it,
        # so whatever of the group is left after a grace period is killed.
        for proc in reversed(self.processes):
            _signal_group(proc.pid, signal.SIGTERM)
        time.sleep(STOP_GRACE_SECONDS)
        for proc in reversed(self.processes):
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        # Ray starts some processes in sessions of their own; they carry this cluster's temp dir.
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)
        self.processes = []
        self.stop_seconds = time.monotonic() - began

    def leftover_pids(self) -> list[int]:
        """Processes still running whose command line names one of this cluster's temp dirs."""
        marks = [str(t).encode() for t in self.temp_dirs]
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(mark in cmdline for mark in marks):
                found.append(int(entry.name))
        return found


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0
