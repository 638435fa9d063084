"""Worker child processes (bench, demo, tests) import the same `stream` as their parent,
whatever their working directory holds."""

from __future__ import annotations

import os
import subprocess

from stream.cli import worker_command

DECOY_EXIT = 3


def _run(argv: list[str], cwd: str) -> int:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=120).returncode


def test_a_stream_package_in_the_working_directory_is_not_imported(tmp_path):
    decoy = tmp_path / "stream"
    decoy.mkdir()
    (decoy / "__init__.py").write_text(f"raise SystemExit({DECOY_EXIT})\n")
    argv = [*worker_command()[:-1], "--help"]  # the same interpreter, flags and module
    assert argv[1] == "-P"
    assert _run([argv[0], *argv[2:]], str(tmp_path)) == DECOY_EXIT, "without -P: the decoy"
    assert _run(argv, str(tmp_path)) == 0
