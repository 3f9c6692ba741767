"""What the tests and the benchmarks share: servers to break, and checks of what was stored.

Private Redis and MariaDB servers: the shared test servers must never be stopped, so these
run as child processes, in a temporary directory, on free local ports, and a test or a
benchmark can take them down and back up. A restart keeps the port, so the scripts under
test reconnect to the same URL.

The scripts run with the stream transport as `stream_env` sets it up; the emitter's content
is reproducible: `emitted(count, users, seed)` is what `emitter_args(count, users, seed, rate)`
makes it send (but the time stamps). The checks compare the database with that.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import secrets
import shutil
import signal
import subprocess  # nosec B404 # starts the private servers
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import pymysql
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from sqlalchemy import delete, func, select

import models
from emitter_and_pub import FakeTransactions
from txstream.aggregates import Layout, recorded_layout
from txstream.keys import Keys
from txstream.processes import ROOT, Script, TimedOut, free_port, free_ports, wait_until
from txstream.recent import RECENT_SIZE, RecentLists
from txstream.transaction import Transaction, to_json_text
from txstream.windows import bucket_totals, window_totals

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
OPENSSL = "openssl"
ACL_FILE = ROOT / "deploy" / "redis.acl"  # the Redis users txstream ships, and theirs:
EMITTER_USER, SUBSCRIBER_USER = "txstream-emitter", "txstream-subscriber"
WEB_USER, ADMIN_USER = "txstream-web", "txstream-admin"
MARIADBD = "mariadbd"
SBIN = "/usr/sbin:/usr/local/sbin"  # where mariadbd lives when it is not on PATH
MARIADB_INSTALL_DB = "mariadb-install-db"
CLUSTER_SLOTS = 16384  # every key hashes to one of these
CLUSTER_TIMEOUT = 60  # seconds for a cluster to form, fail over or heal
START_TIMEOUT = 30  # seconds for a server to answer after it was started
STOP_TIMEOUT = 30  # seconds for a graceful shutdown
UNIX_SOCKET_MAX = 100  # bytes: sun_path is 108 on Linux, 104 on macOS
GROUP = "store"  # the stream's consumer group
WINDOW_SECONDS = 6 * 3600  # the scripts run with WINDOW_HOURS=6
CATCH_UP = 60  # seconds for the subscribers to store everything once a fault is over
_COLUMNS = ("user_id", "window_start", "tx_count", "amount_sum", "amount_min", "amount_max")


# --- Private servers -----------------------------------------------------------------------


class ServerMissing(RuntimeError):
    """The server's binary is not installed."""


def require_binary(name: str) -> str:
    """The path of the executable `name`; `ServerMissing` when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        raise ServerMissing(f"{name} is not installed")
    return path


class PrivateServer:
    """A server process of the test's own; subclasses say how to run and ping it.

    `port`: the one to listen on (default: a free one). `new_session`: run it in a session
    of its own, so that a Ctrl-C in the terminal reaches only its parent, which stops it
    when it is ready to (the demo stops its clients first).
    """

    name = "server"

    def __init__(self, directory: Path, port: int | None = None, new_session: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if port is None else port
        self.new_session = new_session
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / f"{self.name}.out"

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def ping(self) -> bool:
        """Whether the server answers a client now."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # nosec B603 # the server's own command line, no shell
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.diagnostics()
                )
            return self.ping()

        wait_until(answers, START_TIMEOUT, f"{self.name} on port {self.port} to answer")

    def stop(self) -> None:
        """Shut the server down gracefully (SIGTERM) and wait until it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {STOP_TIMEOUT} s:\n" + self.diagnostics()
            ) from None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop gracefully, then start again on the same port with the same files."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def diagnostics(self) -> str:
        """The tail of the server's own output, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except FileNotFoundError:
            return "(no output)"


@dataclass(frozen=True)
class TlsFiles:
    """A certificate authority and a server certificate for 127.0.0.1 that it signed."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A new CA and a server certificate for 127.0.0.1 and localhost, valid for two days."""
    binary = require_binary(OPENSSL)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
    # The extensions a strict verifier (Python 3.13's VERIFY_X509_STRICT) asks for.
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )

    def openssl(*args: object) -> None:
        command = [binary, *map(str, args)]
        subprocess.run(command, check=True, capture_output=True, timeout=60)  # nosec B603

    ca_key, request = d / "ca.key", d / "server.csr"
    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        *("req", "-x509", *new_key, "-keyout", ca_key, "-out", files.ca, "-days", 2),
        *("-subj", "/CN=txstream test CA", "-addext", "keyUsage=critical,keyCertSign"),
    )
    openssl("req", *new_key, "-keyout", files.key, "-out", request, "-subj", "/CN=localhost")
    openssl(
        *("x509", "-req", "-in", request, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial"),
        *("-out", files.cert, "-days", 2, "-extfile", d / "server.ext"),
    )
    return files


def acl_with_passwords(source: Path, target: Path) -> dict[str, str]:
    """Copy the ACL file `source` to `target`, each `>CHANGE-ME-...` placeholder replaced by a
    new random password; {user: password}."""
    passwords = {}
    lines = []
    for line in source.read_text().splitlines():
        words = line.split(" ")
        placeholders = [i for i, w in enumerate(words) if w.startswith(">CHANGE-ME-")]
        if placeholders:
            assert len(placeholders) == 1, f"one password per user: {line}"
            passwords[words[1]] = secrets.token_hex(16)
            words[placeholders[0]] = ">" + passwords[words[1]]
        lines.append(" ".join(words))
    target.write_text("\n".join(lines) + "\n")
    return passwords


@dataclass(frozen=True)
class ClusterMembership:
    """How a PrivateRedis takes part in a Redis Cluster."""

    bus_port: int  # the cluster bus (gossip, failure reports, votes): a port of its own
    node_timeout_ms: int  # how long a node may not answer before it is judged failed


class PrivateRedis(PrivateServer):
    """redis-server with an append-only file, fsynced on every write by default
    (`appendfsync`): a graceful restart loses nothing.

    `acl_file`: Redis users with `>CHANGE-ME-...` passwords (deploy/redis.acl). The server
    runs a copy with a new password for each user (`passwords`), and this object's own
    clients log in as the user `login`. `tls`: it speaks TLS only, with these files.
    `cluster`: it is a Redis Cluster node (see PrivateRedisCluster), its cluster state in
    `nodes.conf` of its directory. `port`, `new_session`: as PrivateServer's.
    """

    name = "redis"

    def __init__(
        self,
        directory: Path,
        acl_file: Path | None = None,
        login: str | None = None,
        tls: TlsFiles | None = None,
        *,
        appendfsync: str = "always",
        cluster: ClusterMembership | None = None,
        port: int | None = None,
        new_session: bool = False,
    ) -> None:
        self.binary = require_binary(REDIS_SERVER)
        super().__init__(directory, port=port, new_session=new_session)
        self.appendfsync = appendfsync
        self.cluster = cluster
        self.tls = tls
        self.acl_file = None if acl_file is None else self.dir / "users.acl"
        self.passwords = {} if acl_file is None else acl_with_passwords(acl_file, self.acl_file)
        self.url = self.url_for(login)

    def url_for(self, user: str | None = None) -> str:
        """The URL of this server, logging in as `user` if given; with TLS, checking it."""
        login = f"{user}:{self.passwords[user]}@" if user else ""  # passwords are hex
        if self.tls is None:
            return f"redis://{login}127.0.0.1:{self.port}/0"
        verify = urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": self.tls.ca})
        return f"rediss://{login}127.0.0.1:{self.port}/0?{verify}"

    def command(self) -> list[str]:
        """The redis-server command line (not daemonized, no RDB snapshots)."""
        command = [
            self.binary,
            *("--bind", "127.0.0.1"),
            *("--appendonly", "yes", "--appendfsync", self.appendfsync),
            *("--dir", str(self.dir), "--save", ""),
        ]
        if self.cluster is not None:
            command += [
                *("--cluster-enabled", "yes", "--cluster-config-file", str(self.nodes_conf)),
                *("--cluster-port", str(self.cluster.bus_port)),
                *("--cluster-node-timeout", str(self.cluster.node_timeout_ms)),
                # A replica that (re)joins is sent the data at once: Redis's default waits
                # 5 s for more replicas to share the transfer; here there is one per master.
                *("--repl-diskless-sync-delay", "0"),
                # A replica that has just been synced refuses SIGTERM ("Writing initial
                # AOF, can't exit") until it has rewritten its AOF: stop it all the same.
                *("--shutdown-on-sigterm", "force"),
                # A replica that was down when its master failed still takes over once it
                # is back (Redis's default: not if it lost touch over 10 node timeouts
                # ago), so a test can lose what only a dead master held, as a crash of
                # both machines would.
                *("--cluster-replica-validity-factor", "0"),
            ]
        if self.tls is None:
            command += ["--port", str(self.port)]
        else:  # TLS only; the clients check the server's certificate, not it theirs
            command += ["--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            command += ["--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        if self.acl_file is not None:
            command += ["--aclfile", str(self.acl_file)]
        return command

    @property
    def nodes_conf(self) -> Path:
        """The cluster state file of a cluster node: its id, epochs, and its peers."""
        return self.dir / "nodes.conf"

    def client(self, **kwargs) -> redis.Redis:
        """A new client of this server."""
        return redis.Redis.from_url(self.url, **kwargs)

    def ping(self) -> bool:
        """Whether PING is answered (not while the AOF is still loading)."""
        with self.client(socket_connect_timeout=1, socket_timeout=1) as client:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return False


class PrivateRedisCluster:
    """A Redis Cluster of the test's own: `masters` masters with `replicas` replicas each,
    every node a PrivateRedis (`nodes`) in `directory`/node-<i>, on free loopback ports, to
    kill and restart as a crash and an orchestrator would; `with` starts and stops it.

    A node that does not answer for `node_timeout_ms` is judged failed (1000 ms: on the
    2-core VM a killed master's replica served its slots 2.1-2.7 s after the SIGKILL, over
    8 runs; Redis's default of 15 s would make each failover test wait that long at least).
    A restarted node reads its `nodes.conf`, learns that its slots moved on, and rejoins as
    a replica of the node that took them over.

    The append-only files are fsynced once a second (everysec, Redis's default), not on
    every write (PrivateRedis's default): a SIGKILL ends the process, not the kernel, so
    what it wrote to its file survives it fsynced or not; and a killed master rejoins as a
    replica, whose data its new master replaces. An fsync per write would only guard
    against a power cut, which no test makes, at the cost of a disk flush per write on each
    of six nodes sharing one disk. Here, what keeps an acknowledged write is its copy on a
    replica (WAIT), as in the system under test.
    """

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000
    ) -> None:
        self.cli = require_binary(REDIS_CLI)
        self.dir = Path(directory)
        self.master_count, self.replica_count = masters, replicas
        size = masters * (1 + replicas)
        ports = free_ports(2 * size)  # a client port and a cluster bus port each
        self.nodes = [
            PrivateRedis(
                self.dir / f"node-{i}",
                appendfsync="everysec",
                cluster=ClusterMembership(ports[2 * i + 1], node_timeout_ms),
                port=ports[2 * i],
                new_session=True,  # stopped by the cluster's owner, after its clients
            )
            for i in range(size)
        ]
        self._slots_of_killed: dict[int, set[int]] = {}  # port: what it served when killed

    def __enter__(self) -> PrivateRedisCluster:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- Starting and stopping ---------------------------------------------------------------

    def start(self) -> None:
        """Start every node, join them into a cluster, and wait until it is healthy; on any
        failure, stop what was started."""
        try:
            for node in self.nodes:
                node.start()
            self._create()
            self.wait_healthy()
        except BaseException:
            with contextlib.suppress(AssertionError):
                self.stop()
            raise

    def _create(self) -> None:
        """`redis-cli --cluster create`: the slots shared among the masters, replicas assigned."""
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        command = [self.cli, "--cluster", "create", *addresses]
        command += ["--cluster-replicas", str(self.replica_count), "--cluster-yes"]
        # bandit B603: redis-cli by its path, with the nodes' addresses; no shell
        result = subprocess.run(  # nosec B603
            command, capture_output=True, text=True, timeout=CLUSTER_TIMEOUT
        )
        (self.dir / "create.out").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise AssertionError(
                f"redis-cli --cluster create exited with {result.returncode}:\n"
                + result.stdout
                + result.stderr
            )

    def stop(self) -> None:
        """Stop every node gracefully (SIGTERM); one that will not is killed, then reported."""
        errors = []
        for node in self.nodes:
            try:
                node.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        if errors:
            raise AssertionError("\n".join(errors))

    def kill(self, node: PrivateRedis) -> None:
        """Kill `node` at once (SIGKILL), as a crash would; wait_for_failover then knows
        which slots it served."""
        self._slots_of_killed[node.port] = self.served_slots(node)
        node.kill()

    def restart(self, node: PrivateRedis) -> None:
        """Start `node` again (after kill, or stopping it) on its port, from its directory;
        returns once it answers. wait_healthy: until it has rejoined."""
        node.restart()

    # --- Who serves what, asked from the servers ---------------------------------------------

    @property
    def url(self) -> str:
        """The URL of a running node (the first): a cluster client finds the others from it."""
        return next(node for node in self.nodes if node.running).url

    def client(self, **kwargs) -> RedisCluster:
        """A new cluster client, which knows every running node to start from."""
        startup = [ClusterNode("127.0.0.1", node.port) for node in self.nodes if node.running]
        return RedisCluster(startup_nodes=startup, **kwargs)

    def masters(self) -> list[PrivateRedis]:
        """The running nodes that say (ROLE) they are masters."""
        return [node for node in self.nodes if node.running and self._role(node) == "master"]

    def replicas(self) -> list[PrivateRedis]:
        """The running nodes that say (ROLE) they are replicas."""
        return [node for node in self.nodes if node.running and self._role(node) == "slave"]

    def replicas_of(self, master: PrivateRedis) -> list[PrivateRedis]:
        """The running replicas that replicate `master`."""
        return [node for node in self.replicas() if self._master_port(node) == master.port]

    def served_slots(self, node: PrivateRedis) -> set[int]:
        """The slots `node` serves, as it sees itself (none if it is a replica)."""
        me = self._myself(node)
        if "master" not in me["flags"]:
            return set()
        return {slot for start, end in me["slots"] for slot in range(int(start), int(end) + 1)}

    def master_of_slot(self, slot: int) -> PrivateRedis:
        """The running master that serves `slot`. Were two to claim it (a restarted master
        that has not yet learnt that its slots moved), the newer claim (config epoch) wins,
        as in the cluster."""
        claims = []
        for node in self.nodes:
            if node.running:
                me = self._myself(node)
                served = any(int(start) <= slot <= int(end) for start, end in me["slots"])
                if "master" in me["flags"] and served:
                    claims.append((int(me["epoch"]), node))
        if not claims:
            raise LookupError(f"no running master serves slot {slot}")
        return max(claims, key=lambda claim: claim[0])[1]

    def node_for_key(self, key: str | bytes) -> PrivateRedis:
        """The running master that serves `key` (by its hash slot)."""
        return self.master_of_slot(key_slot(key.encode() if isinstance(key, str) else key))

    # --- Waiting for the cluster ---------------------------------------------------------------

    def wait_healthy(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until every node runs, every node's cluster_state is ok with all slots
        served, and each of the `masters` masters has its `replicas` replicas online."""
        self._wait(self._health_problem, "the cluster to be healthy", timeout)

    def wait_for_failover(
        self, old_master: PrivateRedis, timeout: float = CLUSTER_TIMEOUT
    ) -> PrivateRedis:
        """Wait until the slots of `old_master` (killed by `kill`) are all served by another
        running master, and every running node's cluster_state is ok; that master."""
        slots = self._slots_of_killed.get(old_master.port)
        assert slots, f"the node on port {old_master.port} was not a master killed by kill()"
        first = min(slots)

        def problem() -> str | None:
            new = self.master_of_slot(first)
            missing = slots - self.served_slots(new)
            if missing:
                return f"{len(missing)} of the old master's slots not served by {new.port}"
            return self._state_problem()

        self._wait(problem, f"the slots of the node on port {old_master.port} to move", timeout)
        return self.master_of_slot(first)

    def _health_problem(self) -> str | None:
        """What keeps the cluster from being healthy now (None: nothing)."""
        down = [node.port for node in self.nodes if not node.running]
        if down:
            return f"nodes not running: {down}"
        problem = self._state_problem()
        if problem:
            return problem
        masters = self.masters()
        if len(masters) != self.master_count:
            return f"{len(masters)} masters, not {self.master_count}"
        for master in masters:
            replication = self._ask(master, "INFO", "replication")
            online = [
                value
                for name, value in replication.items()
                if re.fullmatch(r"slave\d+", name) and value.get("state") == "online"
            ]
            if len(online) < self.replica_count:
                return f"master {master.port} has {len(online)} online replicas"
        for replica in self.replicas():
            if self._ask(replica, "INFO", "replication")["master_link_status"] != "up":
                return f"replica {replica.port} is not linked to its master"
        return None

    def _state_problem(self) -> str | None:
        """A running node whose cluster_state is not ok, misses slots or nodes (None: none)."""
        for node in self.nodes:
            if node.running:
                info = self._ask(node, "CLUSTER INFO")
                if info["cluster_state"] != "ok":
                    return f"node {node.port}: cluster_state {info['cluster_state']}"
                if int(info["cluster_slots_ok"]) != CLUSTER_SLOTS:
                    return f"node {node.port}: {info['cluster_slots_ok']} slots ok"
                if int(info["cluster_known_nodes"]) != len(self.nodes):
                    return f"node {node.port} knows {info['cluster_known_nodes']} nodes"
        return None

    def _wait(self, problem: Callable[[], str | None], what: str, timeout: float) -> None:
        """Poll `problem` until it returns None; fail with the last problem and the logs."""
        last: list[str | None] = ["not asked yet"]

        def solved() -> bool:
            try:
                last[0] = problem()
            except (redis.RedisError, LookupError) as exc:
                last[0] = f"{type(exc).__name__}: {exc}"
            return last[0] is None

        try:
            wait_until(solved, timeout, what, interval=0.1)
        except TimedOut as exc:
            raise TimedOut(f"{exc}: {last[0]}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        """The tail of each node's output, for failure messages."""
        return "\n".join(
            f"--- node on port {node.port} ---\n{node.diagnostics()}" for node in self.nodes
        )

    # --- One node's answers -------------------------------------------------------------------

    @staticmethod
    def _ask(node: PrivateRedis, *command: object):
        """`command`'s answer from `node`, parsed as redis-py parses it."""
        with node.client(socket_connect_timeout=1, socket_timeout=5) as client:
            return client.execute_command(*command)

    def _role(self, node: PrivateRedis) -> str:
        """ "master" or "slave", as ROLE says."""
        return self._ask(node, "ROLE")[0].decode()

    def _master_port(self, replica: PrivateRedis) -> int:
        """The port of the master `replica` replicates, as ROLE says."""
        return int(self._ask(replica, "ROLE")[2])

    def _myself(self, node: PrivateRedis) -> dict:
        """`node`'s own line of CLUSTER NODES: its flags, config epoch and slots."""
        view = self._ask(node, "CLUSTER NODES")
        return next(line for line in view.values() if "myself" in line["flags"])


class PrivateMariaDB(PrivateServer):
    """mariadbd on a datadir of its own; `root` logs in over TCP without a password.

    Each has a tmpdir of its own too: mariadbd deletes every `#sql*` file in its tmpdir as
    it starts, which in a shared /tmp would be the temporary tables of the other servers
    (another test run's, or the shared server's) while they use them.

    `template`: an initialised datadir to copy instead of running mariadb-install-db
    (copying takes milliseconds, installing most of a second). `server_id` and `log_bin`
    (a primary's binary log, which replicas read) are for replication: see `replicate`.
    """

    name = "mariadb"
    database = "txstream_fault"
    # Small buffer pool and redo log: starts in about 0.15 s and takes ~35 MB of disk.
    INNODB = ("--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M")

    def __init__(
        self,
        directory: Path,
        template: Path | None = None,
        server_id: int | None = None,
        log_bin: bool = False,
    ) -> None:
        self.binary = require_binary(MARIADBD)
        super().__init__(directory)
        self.server_id = server_id
        self.log_bin = log_bin
        self.datadir = self.dir / "data"
        self.tmpdir = self.dir / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        self.socket = self.dir / "mysqld.sock"
        if len(str(self.socket)) > UNIX_SOCKET_MAX:
            self.socket = Path(tempfile.gettempdir()) / f"txstream-mariadb-{self.port}.sock"
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/{self.database}"
        if not self.datadir.exists():
            if template is None:
                self.install(self.datadir)
            else:
                shutil.copytree(template, self.datadir)

    @classmethod
    def install(cls, datadir: Path) -> None:
        """Initialise `datadir` (offline): system tables, root without a password, no test db."""
        binary = require_binary(MARIADB_INSTALL_DB)
        with tempfile.TemporaryDirectory(prefix="txstream-mariadb-install-") as tmpdir:
            result = subprocess.run(  # nosec B603 # mariadb-install-db by its path, no shell
                [
                    binary,
                    "--no-defaults",
                    f"--datadir={datadir}",
                    f"--tmpdir={tmpdir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    "--user=root",
                    *cls.INNODB,
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        if result.returncode != 0:
            raise AssertionError(
                f"mariadb-install-db failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def command(self) -> list[str]:
        """The mariadbd command line: TCP on 127.0.0.1 only, no option files read."""
        return [
            self.binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            "--user=root",
            "--skip-name-resolve",
            *self.INNODB,
            f"--log-error={self.dir / 'err.log'}",
            *([f"--server-id={self.server_id}"] if self.server_id is not None else []),
            *(["--log-bin=mariadb-bin"] if self.log_bin else []),
        ]

    def connect(self, **kwargs) -> pymysql.Connection:
        """A new DB-API connection as root, to no database in particular."""
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", **kwargs)

    def ping(self) -> bool:
        """Whether root can log in and run a query."""
        try:
            with self.connect(connect_timeout=1) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        except pymysql.err.OperationalError:
            return False

    def replicate(self, primary: PrivateMariaDB, delay: int = 0) -> None:
        """Replicate `primary` (which has `log_bin`) by GTID, as root; `delay`: apply each
        change that many seconds after the primary made it (MASTER_DELAY)."""
        with self.connect(autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("STOP SLAVE")
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER='root', "
                "MASTER_USE_GTID=slave_pos, MASTER_DELAY=%s",
                (primary.port, delay),
            )
            cur.execute("START SLAVE")

    def catch_up(self, primary: PrivateMariaDB, timeout: float = START_TIMEOUT) -> None:
        """Wait until this replica has applied everything `primary` has written so far."""
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            (position,) = cur.fetchone()
        with self.connect() as conn, conn.cursor() as cur:
            # MariaDB's own wait for a position, with a deadline: 0 reached, -1 timed out.
            cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", (position, timeout))
            (reached,) = cur.fetchone()
        assert reached == 0, f"the replica did not reach {position} in {timeout} s"

    def replication_lag(self) -> int | None:
        """This replica's Seconds_Behind_Master (None: its replication is not running)."""
        with self.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW ALL SLAVES STATUS")
            (status,) = cur.fetchall()
        return status["Seconds_Behind_Master"]

    def diagnostics(self) -> str:
        """The tail of the error log."""
        log = self.dir / "err.log"
        if not log.exists():
            return super().diagnostics()
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])


@contextlib.contextmanager
def replicated(directory: Path, template: Path) -> Iterator[tuple[PrivateMariaDB, PrivateMariaDB]]:
    """A private primary with txstream's schema and a private GTID replica of it, caught
    up: (primary, replica), both killed at the end (their files are thrown away)."""
    primary = PrivateMariaDB(directory / "primary", template=template, server_id=1, log_bin=True)
    replica = PrivateMariaDB(directory / "replica", template=template, server_id=2)
    try:
        primary.start()
        replica.start()
        replica.replicate(primary)
        writer = models.make_engine(primary.url)
        models.create_schema(writer)
        writer.dispose()
        replica.catch_up(primary)
        yield primary, replica
    finally:
        replica.kill()
        primary.kill()


# --- The scripts under test ----------------------------------------------------------------


@functools.cache
def emitted(count: int, users: int, seed: int) -> tuple[Transaction, ...]:
    """What `emitter_and_pub.py --count count --users users --seed seed` sends (but `ts`)."""
    # bandit B311: made-up transactions, replayed from a seed
    source = FakeTransactions(users, random.Random(seed))  # nosec B311
    return tuple(source.next() for _ in range(count))


def emitter_args(count: int, users: int, seed: int, rate: int) -> tuple[str, ...]:
    """The emitter's command line: it sends `emitted(count, users, seed)`, at `rate` per second."""
    return (
        "emitter_and_pub.py",
        *("--count", str(count), "--users", str(users), "--seed", str(seed)),
        *("--rate", str(rate), "--quiet"),
    )


def stream_env(redis_url: str, database_url: str, key_prefix: str, **extra: str) -> dict:
    """The scripts' environment: stream transport, this run's stream, prefix and servers."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "TRANSPORT": "stream",
        "STREAM": stream_name(key_prefix),
        "GROUP": GROUP,
        "KEY_PREFIX": key_prefix,
        "WINDOW_HOURS": "6",
        "BATCH_INTERVAL_MS": "50",
        "CLAIM_IDLE_MS": "1000",
        "MAX_DELIVERIES": "5",
        **extra,
    }


def stream_name(key_prefix: str) -> str:
    """The stream: under the key prefix, so deleting the prefix's keys deletes it."""
    return f"{key_prefix}stream"


def pending(client: redis.Redis, stream: str, consumer: bytes | None = None) -> int:
    """How many entries the group has delivered but not acknowledged (of one consumer)."""
    if consumer is None:
        return client.xpending(stream, GROUP)["pending"]
    rows = client.xpending_range(stream, GROUP, "-", "+", 1_000_000, consumername=consumer)
    return len(rows)


def last_progress(script: Script, name: str) -> int:
    """The value of `name=N` in the script's last progress line."""
    values = re.findall(rf"\b{name}=(\d+)", script.output)
    assert values, f"no progress line with {name}= in:\n{script.output}"
    return int(values[-1])


def wait_for_log(script: Script, pattern: str, timeout: float = 20) -> re.Match:
    """The first line of the script's output matching `pattern`; fail with the output."""
    try:
        return script.wait_for_line(pattern, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{script.output}") from None


# --- What was stored -----------------------------------------------------------------------


def stored_transactions(engine) -> list[Transaction]:
    """Every stored transaction, oldest first (ties by txn_id)."""
    t = models.transactions
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.c.txn_id, t.c.user_id, t.c.amount, t.c.ts).order_by(t.c.ts, t.c.txn_id)
        )
        return [Transaction(*row) for row in rows]


def count_rows(engine) -> int:
    """How many transactions are stored."""
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(models.transactions))


def empty_tables(engine) -> None:
    """Delete every stored transaction, window total and token."""
    with engine.begin() as conn:
        for table in models.Base.metadata.sorted_tables:
            conn.execute(delete(table))


def per_user_totals(engine) -> dict[int, tuple[int, Decimal]]:
    """{user_id: (count, sum)} as the database adds them up."""
    t = models.transactions
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.c.user_id, func.count(), func.sum(t.c.amount)).group_by(t.c.user_id)
        )
        return {user_id: (n, total) for user_id, n, total in rows}


def expected_totals(txns) -> dict[int, tuple[int, Decimal]]:
    """{user_id: (count, sum)} of `txns`, added up here."""
    counts: Counter[int] = Counter()
    sums: dict[int, Decimal] = {}
    for tx in txns:
        counts[tx.user_id] += 1
        sums[tx.user_id] = sums.get(tx.user_id, Decimal(0)) + tx.amount
    return {user_id: (counts[user_id], sums[user_id]) for user_id in counts}


def wait_until_stored(engine, n: int, scripts: list[Script]) -> None:
    """Wait until `n` rows are stored; fail early, with output, if a script dies."""

    def done() -> bool:
        for script in scripts:
            if script.proc.poll() not in (None, 0):
                raise AssertionError(f"{script.proc.args} failed:\n{script.output}")
        return count_rows(engine) >= n

    wait_until(done, CATCH_UP, f"{n} rows stored")


def assert_totals_match_raw_rows(engine, window_seconds: int) -> None:
    """Every aggregate table must equal the totals rebuilt from the raw rows: the windows
    of `window_seconds`, the buckets of its layout, and the layout recorded."""
    layout = Layout.for_window(window_seconds)
    stored = stored_transactions(engine)
    expected_windows = [
        tuple(getattr(t, c) for c in _COLUMNS) for t in window_totals(stored, window_seconds)
    ]
    w, b = models.user_window_totals, models.user_bucket_totals
    with engine.connect() as conn:
        windows = conn.execute(
            select(*(w.c[c] for c in _COLUMNS)).order_by(w.c.user_id, w.c.window_start)
        ).all()
        buckets = conn.execute(
            select(b.c.user_id, b.c.bucket_start, b.c.tx_count, b.c.amount_sum).order_by(
                b.c.user_id, b.c.bucket_start
            )
        ).all()
        recorded = recorded_layout(conn)
    assert [tuple(row) for row in windows] == expected_windows
    assert [tuple(row) for row in buckets] == bucket_totals(stored, layout.bucket_seconds)
    if stored:
        assert recorded == layout


def assert_recent_lists_match_db(engine, client, keys: Keys | str) -> None:
    """Each user's Redis list holds their latest 5 stored transactions, newest first, as
    the JSON texts the API returns for them (`keys`: the names, or their prefix)."""
    by_user: dict[int, list[Transaction]] = {}
    for tx in reversed(stored_transactions(engine)):
        by_user.setdefault(tx.user_id, []).append(tx)
    keys = Keys(keys) if isinstance(keys, str) else keys
    for user_id, txns in by_user.items():
        listed = client.lrange(keys.recent(user_id), 0, -1)
        expected = [to_json_text(tx).encode() for tx in txns[:RECENT_SIZE]]
        assert listed == expected, f"user {user_id}"
        assert RecentLists(client, keys).read(user_id) == txns[:RECENT_SIZE]


def assert_stored_exactly(engine, expected, *, with_ts: bool = False) -> None:
    """The database holds `expected` and nothing else, each once, with right totals."""
    stored = stored_transactions(engine)
    assert len(stored) == len(expected)
    assert {tx.txn_id for tx in stored} == {tx.txn_id for tx in expected}
    if with_ts:
        assert stored == sorted(expected, key=lambda tx: (tx.ts, tx.txn_id))
    else:  # the emitter stamps "now": compare everything else
        content = {tx.txn_id: (tx.user_id, tx.amount) for tx in stored}
        assert content == {tx.txn_id: (tx.user_id, tx.amount) for tx in expected}
    assert per_user_totals(engine) == expected_totals(expected)
    assert_totals_match_raw_rows(engine, WINDOW_SECONDS)
