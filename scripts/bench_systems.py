"""Processes the bench starts and stops: the nginx mock, trigate, LiteLLM's proxy.

Every server runs in its own session (process group) so that stopping it also stops the
workers it spawned, and nothing else on the machine.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
MASTER_KEY = "sk-bench-master"
UPSTREAM_KEY = "sk-bench-upstream"
CACHE = Path.home() / ".cache" / "trigate-bench"
LITELLM_VENV = CACHE / "litellm-venv"
# Portkey's gateway from npm, pinned: its streams need @hono/node-server held back and one
# line of its bundle patched (see ensure_portkey).
PORTKEY_VERSION = "1.15.2"
PORTKEY_HONO_NODE_SERVER = "1.14.2"
PORTKEY_DIR = CACHE / f"portkey-{PORTKEY_VERSION}"
PORTKEY_BUNDLE = "node_modules/@portkey-ai/gateway/build/start-server.js"
# The header write that throws `TypeError: immutable` on a streamed response (Portkey-AI/
# gateway#1389, #1550), wrapped as its open PR #1390 does: skipped when it cannot be made.
PORTKEY_PATCH = (
    "this.updateHeaders(i,n.cacheStatus,o)",
    "(()=>{try{this.updateHeaders(i,n.cacheStatus,o)}catch(e){}})()",
)
NGINX_MODULES = Path("/usr/lib/nginx/modules")

# Debian package -> a file it installs; nginx's Lua module is what makes the mock scriptable.
APT_PACKAGES = {
    "nginx": Path("/usr/sbin/nginx"),
    "libnginx-mod-http-lua": NGINX_MODULES / "ngx_http_lua_module.so",
    "wrk": Path("/usr/bin/wrk"),
}
# Counting instructions (scenario i, --check) needs valgrind's callgrind too.
VALGRIND = {"valgrind": Path("/usr/bin/valgrind")}

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
load_module @MODULES@/ndk_http_module.so;
load_module @MODULES@/ngx_http_lua_module.so;
events { worker_connections 16000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;
    lua_package_path "@SCRIPTS@/?.lua;;";
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_buffer_size 64k;
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location = /health/readiness { return 200 "ok"; }
        location = /v1/models {
            default_type application/json;
            return 200 '{"object":"list","data":[{"id":"bench-model","object":"model"}]}';
        }
        location = /v1/chat/completions { content_by_lua_block { require("bench_mock").chat() } }
        # Receivers for logging callbacks (`--check --sinks`): generic_api's and Datadog's.
        location = /sink { default_type application/json; return 200 '{}'; }
        location = /api/v2/logs { default_type application/json; return 202 '{}'; }
    }
}
"""


def ensure_apt_packages(*, with_valgrind: bool = False) -> list[str]:
    """Install the Debian packages the bench needs, only those missing; returns what it added."""
    wanted = APT_PACKAGES | (VALGRIND if with_valgrind else {})
    missing = [name for name, path in wanted.items() if not path.exists()]
    if not missing:
        return []
    if os.geteuid() != 0:
        raise SystemExit(f"bench: needs Debian packages {missing}; run as root or install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    return missing


def ensure_litellm() -> Path:
    """LiteLLM's proxy in a venv of its own, cached across runs; returns its `litellm` path.

    A stamp marks a finished install, so an interrupted one is redone rather than trusted.
    """
    stamp = LITELLM_VENV / ".bench-installed"
    if not stamp.exists():
        print(f"bench: installing litellm[proxy] into {LITELLM_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        for args in (["--upgrade", "pip"], ["litellm[proxy]"]):
            done = subprocess.run([*pip, *args], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"bench: pip install {args} failed:\n{done.stderr[-3000:]}")
        stamp.touch()
    return LITELLM_VENV / "bin" / "litellm"


def ensure_portkey() -> Path:
    """Portkey's gateway (pinned) in a directory of its own, cached across runs; returns the
    path of its server bundle.

    Two changes make its streams work here at all, both from its issue tracker: npm's
    `overrides` hold @hono/node-server at 1.14.2 (streams break on later ones, #1389), and
    the bundle's `updateHeaders` call after a response is built is wrapped in a try/catch,
    which is what its open PR #1390 does (otherwise every stream fails with `TypeError:
    immutable`, #1389 and #1550). Neither changes what a request costs it.
    A stamp marks a finished install, so an interrupted one is redone rather than trusted.
    """
    stamp = PORTKEY_DIR / ".bench-installed"
    bundle = PORTKEY_DIR / PORTKEY_BUNDLE
    if stamp.exists():
        return bundle
    if not shutil.which("npm"):
        raise SystemExit("bench: --compare portkey needs node and npm (Debian's nodejs, npm)")
    print(f"bench: installing @portkey-ai/gateway into {PORTKEY_DIR} ...", file=sys.stderr)
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    package = {
        "name": "trigate-bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
        "overrides": {"@hono/node-server": PORTKEY_HONO_NODE_SERVER},
    }
    (PORTKEY_DIR / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    npm = ["npm", "install", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"]
    done = subprocess.run(npm, cwd=PORTKEY_DIR, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench: npm install failed:\n{done.stderr[-3000:]}")
    text = bundle.read_text()
    old, new = PORTKEY_PATCH
    if text.count(old) != 1:
        raise SystemExit(f"bench: {bundle} no longer has the one line the bench patches")
    bundle.write_text(text.replace(old, new))
    stamp.touch()
    return bundle


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A started server process (and its process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        """SIGTERM the whole group (workers too), SIGKILL whatever is left after 15 s."""
        deadline = time.monotonic() + 15
        self._signal(signal.SIGTERM)
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        self.popen.wait()

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return

    def _group_alive(self) -> bool:
        """Any live (non-zombie) process left in the group? Workers can outlive the parent."""
        self.popen.poll()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.popen.pid and fields[0] != "Z":
                return True
        return False


@contextmanager
def serving(
    name: str,
    argv: list[str],
    port: int,
    log: Path,
    env: dict[str, str],
    ready_timeout: float,
    ready_path: str = "/health/readiness",
) -> Iterator[Server]:
    """Start argv beside its log (files it writes stay out of the repo), wait until
    GET `ready_path` answers 200, stop it on exit."""
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = Server(name, popen, port, log)
    try:
        _wait_ready(server, ready_timeout, ready_path)
        yield server
    finally:
        server.stop()


def _wait_ready(server: Server, timeout: float, path: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited early; see {server.log}:\n{_tail(server.log)}"
            )
        if _status(server.port, path) == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s; see {server.log}")


def limited_key(port: int) -> str:
    """A virtual key with every limit set (rpm, tpm, parallel requests, a budget), too
    high to refuse anything: requests with it pay for every check on the hot path."""
    body = json.dumps({
        "rpm_limit": 10**9, "tpm_limit": 10**12, "max_parallel_requests": 10**6,
        "max_budget": 10.0**9,
    })  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
        conn.request("POST", "/key/generate", body, headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"/key/generate answered {response.status}: {answer}")
        return str(answer["key"])
    finally:
        conn.close()


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def mock_server(workdir: Path) -> Iterator[Server]:
    """The nginx + Lua mock upstream (see bench_mock.lua), on a free port."""
    port = free_port()
    home = workdir / "mock"
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "nginx.conf"
    text = NGINX_CONF
    for key, value in {
        "@DIR@": str(home),
        "@MODULES@": str(NGINX_MODULES),
        "@SCRIPTS@": str(SCRIPTS),
        "@PORT@": str(port),
    }.items():
        text = text.replace(key, value)
    conf.write_text(text)
    argv = ["nginx", "-p", str(home), "-e", str(home / "error.log"), "-c", str(conf)]
    with serving("mock", argv, port, home / "stdout.log", dict(os.environ), 10) as server:
        yield server


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """argv run on the given CPUs only (taskset's list syntax), or anywhere for None."""
    return ["taskset", "-c", cpus, *argv] if cpus else argv


@contextmanager
def floor_server(workdir: Path, cpus: str | None = None) -> Iterator[Server]:
    """hypercorn alone, answering as the mock does (see bench_floor.py), on a free port."""
    port = free_port()
    argv = pinned([sys.executable, str(SCRIPTS / "bench_floor.py"), str(port)], cpus)
    log = workdir / f"floor{'-pinned' if cpus else ''}.log"
    with serving("floor", argv, port, log, dict(os.environ), 30) as server:
        yield server


@contextmanager
def portkey_server(bundle: Path, workdir: Path, cpus: str | None = None) -> Iterator[Server]:
    """Portkey's gateway (see ensure_portkey) on a free port, answering GET / when ready.
    It needs no config: each request names its provider and upstream in headers."""
    port = free_port()
    argv = pinned(["node", str(bundle), f"--port={port}", "--headless"], cpus)
    env = {**os.environ, "NODE_ENV": "production"}
    log = workdir / "portkey.log"
    with serving("portkey", argv, port, log, env, 60, ready_path="/") as server:
        yield server


@contextmanager
def otlp_receiver(workdir: Path) -> Iterator[Server]:
    """A local OTLP/HTTP receiver that discards what it gets (see bench_otlp.py)."""
    port = free_port()
    argv = [sys.executable, str(SCRIPTS / "bench_otlp.py"), str(port)]
    with serving("otlp", argv, port, workdir / "otlp.log", dict(os.environ), 30) as server:
        yield server


def write_gateway_config(
    path: Path,
    mock_port: int,
    upstream_models: dict[str, str],
    translated: set[str],
    redis: str | None = None,
    callbacks: list[str] | None = None,
    cache: dict[str, Any] | None = None,
) -> None:
    """One LiteLLM-shaped config.yaml that both gateways read unchanged. The `translated`
    model names' deployments do not speak the Responses API (the mock does not). With
    `redis`, limits are shared through it (under a prefix of this run's own); with
    `callbacks`, finished requests go to those logging callbacks (`sink_environ`); with
    `cache`, LiteLLM's response cache is on with those `cache_params`."""
    config: dict[str, Any] = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{upstream}",
                    "api_base": f"http://127.0.0.1:{mock_port}/v1",
                    "api_key": UPSTREAM_KEY,
                },
                **({"model_info": {"supports_responses_api": False}} if name in translated else {}),
            }
            for name, upstream in upstream_models.items()
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }
    if redis:
        prefix = f"trigate-bench-{os.getpid()}:"
        config["router_settings"] = {"redis_url": redis, "redis_key_prefix": prefix}
    litellm: dict[str, Any] = {}
    if callbacks:
        litellm["callbacks"] = callbacks
    if cache is not None:
        litellm.update(cache=True, cache_params=cache)
    if litellm:
        config["litellm_settings"] = litellm
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# Two logging callbacks on, sent to the mock's receivers: `scripts/bench --check --sinks`.
SINKS = ["generic_api", "datadog"]


def sink_environ(mock_port: int) -> tuple[tuple[str, str], ...]:
    """Where `SINKS` send: the mock's /sink and its Datadog-shaped intake."""
    base = f"http://127.0.0.1:{mock_port}"
    return (
        ("GENERIC_LOGGER_ENDPOINT", f"{base}/sink"),
        ("DD_API_KEY", "bench-datadog-key"),
        ("DD_SITE", "datadoghq.com"),
        ("DD_BASE_URL", base),
    )


@dataclass(frozen=True)
class Gateway:
    """How to launch one gateway under test."""

    name: str
    exe: Path
    # Where trigate sends its spans; None leaves tracing as the environment has it.
    otlp_endpoint: str | None = None
    # Variables added to the gateway's environment (the logging callbacks' settings).
    environ: tuple[tuple[str, str], ...] = ()

    def argv(self, config: Path, port: int, workers: int) -> list[str]:
        where = ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        if self.name == "litellm":
            return [str(self.exe), *where, "--num_workers", str(workers)]
        return [str(self.exe), "serve", *where, "--workers", str(workers)]

    def env(self) -> dict[str, str]:
        """Same master key for both; LiteLLM is kept off the network and quiet."""
        env = {**os.environ, "TRIGATE_MASTER_KEY": MASTER_KEY, "LITELLM_MASTER_KEY": MASTER_KEY}
        if self.name == "litellm":
            env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        if self.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        env.update(self.environ)
        return env

    def version(self) -> str:
        python = self.exe.parent / "python"
        dist = "litellm" if self.name == "litellm" else "trigate"
        code = f"import importlib.metadata as m; print(m.version({dist!r}))"
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
        return done.stdout.strip() or "unknown"

    @contextmanager
    def run(
        self, config: Path, workers: int, workdir: Path, tag: str, cpus: str | None = None
    ) -> Iterator[Server]:
        """The gateway serving on a free port (on `cpus` only, if given); its output goes to
        <name>-<tag>-<N>w.log."""
        port = free_port()
        log = workdir / f"{self.name}-{tag}-{workers}w.log"
        argv = pinned(self.argv(config, port, workers), cpus)
        with serving(self.name, argv, port, log, self.env(), 120) as server:
            yield server

    @contextmanager
    def run_counted(self, config: Path, workdir: Path, *, seeded: bool = False) -> Iterator[Server]:
        """One worker under callgrind, counting nothing until `callgrind_control -i on`;
        its counts go to callgrind-<name>.<pid>. Starting takes a minute or two.

        `seeded` (trigate only) runs the CLI through bench_counted.py, which seeds trio's
        scheduler and `random`, with a fixed PYTHONHASHSEED and without the environment's
        TRIGATE_* and OTEL_* settings: the same requests then take the same paths, so
        counts repeat from run to run and machine to machine."""
        port = free_port()
        callgrind = [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir / f'callgrind-{self.name}'}.%p",
        ]
        python = str(self.exe.parent / "python")
        program = self.argv(config, port, 1)
        env = self.env()
        if seeded:
            program = [str(SCRIPTS / "bench_counted.py"), *program[1:]]
            # The same setup wherever it runs: the config file's SQLite store in `workdir`,
            # no Redis, no tracing, whatever the environment says.
            env = {
                name: value
                for name, value in env.items()
                if not name.startswith(("TRIGATE_", "OTEL_")) or name == "TRIGATE_MASTER_KEY"
            }
            env["PYTHONHASHSEED"] = "0"
        log = workdir / f"{self.name}-callgrind.log"
        with serving(self.name, [*callgrind, python, *program], port, log, env, 900) as server:
            yield server


def group_pids(server: Server) -> list[int]:
    """The server's process and all its descendants."""
    return _descendants(server.pid, _children())


def tool_versions() -> dict[str, str]:
    """What measured: recorded in the JSON so runs on other machines can be told apart."""
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {"nginx": nginx, "wrk": wrk[0] if wrk else "unknown", "python": sys.version.split()[0]}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(root: int, tree: dict[int, list[int]]) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _port_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _holds(pid: int, inodes: set[str]) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        links = [os.readlink(fd) for fd in fd_dir.iterdir()]
    except OSError:
        return False
    return any(link[8:-1] in inodes for link in links if link.startswith("socket:["))


def worker_pids(server: Server) -> list[int]:
    """The processes serving the port: the deepest holders of its sockets in the tree.

    With one worker hypercorn and uvicorn serve in the started process; with more, the
    parent keeps the listening socket too, so holders whose descendants hold it are skipped.
    """
    tree = _children()
    pids = _descendants(server.pid, tree)
    inodes = _port_inodes(server.port)
    holders = {pid for pid in pids if _holds(pid, inodes)}
    return sorted(pid for pid in holders if not holders.intersection(_descendants(pid, tree)[1:]))


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB of 10^6 bytes (VmRSS from /proc, in KiB)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def raise_fd_limit() -> None:
    """1,000 held streams need thousands of sockets here and in every child."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds spent in user space and in the kernel (on the processes' behalf)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, earlier: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - earlier.user, self.system - earlier.system)


def stat_ticks(stat: str) -> tuple[int, int]:
    """(user, system) clock ticks of one /proc/PID/stat line, its reaped children's
    included: utime + cutime and stime + cstime, fields 14 and 16, 15 and 17. The fields
    are counted after the command's closing parenthesis, since a command may hold spaces."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])


def cpu_times(pids: list[int]) -> CpuTimes:
    """CPU time the processes have used, with that of their reaped children, split into
    user and system time. A process gone since is skipped."""
    user = system = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ticks = stat_ticks(stat)
        user += ticks[0]
        system += ticks[1]
    return CpuTimes(user / CLOCK_TICKS, system / CLOCK_TICKS)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used, with that of their reaped children."""
    return cpu_times(pids).total
