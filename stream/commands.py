"""Registry of sub-commands: name -> (help, module exposing `configure(parser) -> handler`)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]

_COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("Run the stream processor (faust worker).", "stream.worker_cli"),
    "broker": ("Run the embedded Kafka-compatible broker (Tansu).", "stream.broker"),
    "simulate": ("Produce synthetic lifecycle events.", "stream.simulator_cli"),
    "replay": ("Backfill events from a JSON Lines file.", "stream.replay"),
    "batch": ("Compute the metrics offline from a JSON Lines file.", "stream.batch"),
    "demo": ("Broker + worker + simulator + live metrics view.", "stream.demo"),
    "bench": ("Measure throughput, latency, memory and recovery.", "stream.bench"),
}


def _configure_from(module_name: str) -> Callable[[argparse.ArgumentParser], Handler]:
    def configure(parser: argparse.ArgumentParser) -> Handler:
        module = importlib.import_module(module_name)
        handler: Handler = module.configure(parser)
        return handler

    return configure


REGISTRY = {
    name: (help_text, _configure_from(module)) for name, (help_text, module) in _COMMANDS.items()
}
