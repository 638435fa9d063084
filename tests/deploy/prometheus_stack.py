"""Run the Debian `prometheus` (and `prometheus-alertmanager`) binaries for a test.

Both listen on free loopback ports with a temporary config: scrape and evaluation interval
1 s, the given scrape targets and rule files, and Alertmanager (when started) as the alert
target, posting to the given webhook URL (or with the given Alertmanager configuration).
`query(expr)` evaluates PromQL through the HTTP API. Use it as a context manager; `stop()`
ends both processes (and only them).

    with PrometheusStack(targets={"churn-stream": ["127.0.0.1:6066"]}) as stack:
        stack.wait_for('up{job="churn-stream"} == 1')
        print(stack.query("churn_customers_start"))
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"
READY_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    """A binary is missing, did not become ready, or an API call failed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(
            f"{name} is not installed: run scripts/install-system-deps.sh "
            "(Debian packages prometheus and prometheus-alertmanager)"
        )
    return path


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class _Process:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise StackError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                _get(url, timeout=1.0)
                return
            time.sleep(0.1)
        raise StackError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class PrometheusStack:
    """Prometheus (and optionally Alertmanager) on loopback for one test or session."""

    def __init__(
        self,
        targets: Mapping[str, Iterable[str]] | None = None,
        rule_files: Iterable[Path] = (),
        *,
        alertmanager: bool = False,
        webhook_url: str = "http://127.0.0.1:9/unused",
        alertmanager_config: Mapping[str, Any] | None = None,
        interval_seconds: float = 1.0,
    ) -> None:
        """`alertmanager_config` replaces the default Alertmanager configuration (one
        webhook receiver, `webhook_url`, for every alert, 1 s group wait and interval)."""
        self.targets = {job: list(addresses) for job, addresses in (targets or {}).items()}
        self.rule_files = [Path(path).resolve() for path in rule_files]
        self.with_alertmanager = alertmanager
        self.webhook_url = webhook_url
        self.alertmanager_config = alertmanager_config
        self.interval = f"{interval_seconds:g}s"
        self.prometheus_port = 0
        self.alertmanager_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._processes: list[_Process] = []

    # ---- lifecycle

    def __enter__(self) -> PrometheusStack:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        prometheus = _binary(PROMETHEUS)
        alertmanager = _binary(ALERTMANAGER) if self.with_alertmanager else None
        self._tmp = tempfile.TemporaryDirectory(prefix="prometheus-stack-")
        root = Path(self._tmp.name)
        try:
            if alertmanager is not None:
                self._start_alertmanager(alertmanager, root, timeout)
            self._start_prometheus(prometheus, root, timeout)
        except BaseException:
            self.stop()
            raise

    def _default_alertmanager_config(self) -> dict[str, Any]:
        return {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname"],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {
                    "name": "webhook",
                    "webhook_configs": [{"url": self.webhook_url, "send_resolved": True}],
                }
            ],
        }

    def _start_alertmanager(self, binary: str, root: Path, timeout: float) -> None:
        config = (
            self._default_alertmanager_config()
            if self.alertmanager_config is None
            else dict(self.alertmanager_config)
        )
        path = root / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.alertmanager_port = free_port()
        process = _Process(
            "alertmanager",
            [
                binary,
                f"--config.file={path}",
                f"--storage.path={root / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                "--cluster.listen-address=",  # no gossip port
            ],
            root / "alertmanager.log",
        )
        self._processes.append(process)
        process.wait_ready(f"{self.alertmanager_url}/-/ready", timeout)

    def _start_prometheus(self, binary: str, root: Path, timeout: float) -> None:
        self.prometheus_port = free_port()
        scrape_configs = [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{self.prometheus_port}"]}],
            }
        ]
        scrape_configs += [
            {"job_name": job, "static_configs": [{"targets": addresses}]}
            for job, addresses in self.targets.items()
        ]
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": scrape_configs,
        }
        if self.with_alertmanager:
            config["alerting"] = {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"127.0.0.1:{self.alertmanager_port}"]}]}
                ]
            }
        path = root / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        process = _Process(
            "prometheus",
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={root / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            ],
            root / "prometheus.log",
        )
        self._processes.append(process)
        process.wait_ready(f"{self.prometheus_url}/-/ready", timeout)

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self._processes)

    # ---- HTTP API

    def _api(self, base: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        url = f"{base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = json.loads(_get(url))
        except urllib.error.HTTPError as error:
            raise StackError(f"{url}: HTTP {error.code}: {error.read()[:500]!r}") from None
        if body.get("status") != "success":
            raise StackError(f"{url}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector as [{"metric": {...}, "value": [ts, "v"]}]."""
        data = self._api(self.prometheus_url, "/api/v1/query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, expr: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expr)]

    def label_values(self, label: str, match: str) -> list[str]:
        """Values of `label` among the series `match` selects (what Grafana's
        `label_values(match, label)` template query asks)."""
        path = f"/api/v1/label/{urllib.parse.quote(label)}/values"
        return list(self._api(self.prometheus_url, path, {"match[]": match}))

    def targets_health(self) -> dict[str, str]:
        """scrape URL -> health ("up", "down", "unknown") of every active target."""
        data = self._api(self.prometheus_url, "/api/v1/targets")
        return {target["scrapeUrl"]: target["health"] for target in data["activeTargets"]}

    def rules(self) -> list[dict[str, Any]]:
        return list(self._api(self.prometheus_url, "/api/v1/rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (API v2)."""
        return list(json.loads(_get(f"{self.alertmanager_url}/api/v2/alerts")))

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll `expr` until `predicate(result)` holds (by default: a non-empty result)."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        last = f"(last: {result})"
        raise StackError(f"{expr!r} not satisfied after {timeout} s {last}\n{self.logs()}")


class WebhookReceiver:
    """Alertmanager's webhook target on loopback: keeps every POST as (path, JSON body).

    with WebhookReceiver() as receiver:
        stack = PrometheusStack(alertmanager=True, webhook_url=receiver.url + "/hook")
        ...
        receiver.notifications()  # [("/hook", {"status": "firing", "alerts": [...]})]
    """

    def __init__(self) -> None:
        self._received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver._received.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def notifications(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self._received)
