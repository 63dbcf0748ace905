"""A real Milvus standalone server for tests and benchmarks: PyPI's ``milvus`` package, no Docker.

The package ships Milvus 2.3.5 (``milvus run standalone`` with embedded etcd and RocksMQ) as lzma'd
binaries. :class:`MilvusServer` unpacks them once into ``~/.cache/matryoshka/milvus-server/VERSION``,
writes a config in a temp dir (data, logs, etcd, every port free on 127.0.0.1, every component
advertising 127.0.0.1), starts the binary in its own process group and waits until ``/healthz`` says
OK and a client can list collections. ``stop`` kills the whole group: Milvus ignores SIGTERM for a
while (graceful stop), so SIGKILL follows after a grace period. Several servers may run at once (the
pid file is per ``--alias``; etcd's peer port is set, not the fixed 2380).

Milvus 2.3's gRPC servers bind every interface (``:port``; no setting narrows it); clients here use
only 127.0.0.1, and etcd listens on 127.0.0.1 alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

PORT_KEYS = (
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
START_TIMEOUT = 180.0
STOP_GRACE = 3.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held together while picking, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def milvus_package():
    """PyPI's ``milvus`` package, loaded from its installed files (``bench/milvus.py`` shadows the name
    ``milvus`` on ``sys.path`` when run as a script)."""
    import importlib.metadata
    import importlib.util

    init = Path(str(importlib.metadata.distribution("milvus").locate_file("milvus/__init__.py")))
    spec = importlib.util.spec_from_file_location("_milvus_server_package", init)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def binaries() -> Path:
    """The unpacked Milvus binaries (shared by every server; unpacked once, atomically)."""
    milvus = milvus_package()
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "matryoshka" / "milvus-server"
    target = home / milvus.__version__
    if (target / "bin" / "milvus").exists():
        return target / "bin"
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=home, prefix="unpack-"))
    milvus._initialize_data_files(str(staging))  # writes staging/bin
    try:
        staging.rename(target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
    return target / "bin"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (Linux), so a
    killed test run or benchmark leaves no server behind."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class MilvusServer:
    """One Milvus standalone server on free loopback ports with its own temp data dir."""

    def __init__(self, root: str | os.PathLike | None = None, authorization: bool = False) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="milvus-server-"))
        self.authorization = authorization  # on: clients need the token root:Milvus
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's logs (why it did not start or died)."""
        out = []
        for name in ("milvus-stderr.log", "milvus-stdout.log"):
            path = self.root / "logs" / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()
                out.append(f"--- {name}\n" + "\n".join(line[:300] for line in text[-lines:]))
        return "\n".join(out)

    def _write_config(self) -> None:
        ports = free_ports(len(PORT_KEYS) + 3)
        etcd_client, etcd_peer, self.metrics_port = ports[-3:]
        config = milvus_package().MilvusServerConfig(data_dir=str(self.root), etcd_port=etcd_client)
        config.update(**dict(zip(PORT_KEYS, ports, strict=False)))
        config.set("authorization_enabled", self.authorization)
        for component in COMPONENTS:
            config.set(f"{component}.ip", "127.0.0.1")
        config.resolve()
        self.port = int(config.get("proxy_port"))
        etcd = self.root / "configs" / "etcd.yaml"
        etcd.write_text(
            f"name: matryoshka-test\n"
            f"data-dir: {self.root / 'data' / 'etcd.data'}\n"
            f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
            f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
            f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-cluster: matryoshka-test=http://127.0.0.1:{etcd_peer}\n"
        )
        yaml = self.root / "configs" / "milvus.yaml"
        text = yaml.read_text()
        assert text.count("\netcd:\n") == 1, "unexpected milvus.yaml template"
        yaml.write_text(text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1))

    def start(self, timeout: float = START_TIMEOUT) -> MilvusServer:
        """Start the server and wait until it answers; on failure, raise with its log tail."""
        try:
            bin_dir = binaries()
            self._write_config()
        except BaseException:
            self.stop()  # drops the temp dir
            raise
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.metrics_port),
            "MILVUS_RUN_DIR": str(self.root / "run"),
            "LD_LIBRARY_PATH": f"{bin_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        }
        logs = self.root / "logs"
        with open(logs / "milvus-stdout.log", "w") as out, open(logs / "milvus-stderr.log", "w") as err:
            self.process = subprocess.Popen(
                [str(bin_dir / "milvus"), "run", "standalone", "-alias", f"m{self.port}"],
                cwd=self.root,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as one
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            tail = self.log_tail()
            self.stop(remove=False)
            raise RuntimeError(f"Milvus server in {self.root} did not start:\n{tail}") from None
        return self

    def _wait_ready(self, timeout: float) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("the server exited")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2) as r:
                    healthy = b"OK" in r.read()
            except OSError:
                healthy = False
            if healthy:
                try:
                    token = "root:Milvus" if self.authorization else ""
                    client = MilvusClient(uri=self.uri, token=token, timeout=5)
                    client.list_collections()
                    client.close()
                    return
                except Exception:
                    pass
            time.sleep(0.5)
        raise TimeoutError(f"no answer within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the whole process group now (a server dying under its clients)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, remove: bool = True) -> None:
        """SIGTERM the process group, SIGKILL it after ``STOP_GRACE`` seconds, then drop the data dir."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
            self.process = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # start one by hand: python tests/milvus_server.py
    with MilvusServer() as server:
        print(server.uri, "pid", server.process.pid if server.process else None, flush=True)
        try:
            while server.process and server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
