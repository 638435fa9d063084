"""Metric names used by PromQL expressions, the metrics README documents, and the rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))

# Series Prometheus itself provides.
PROMETHEUS_BUILTINS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
# Metrics the worker will expose but does not yet (none today).
PENDING_WORKER_METRICS: frozenset[str] = frozenset()

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
    | {"group_left", "group_right", "atan2"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_NUMBER_SUFFIX = re.compile(r"^\d")


def metric_names(expr: str) -> set[str]:
    """Every metric (or recording rule) name an expression selects."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS or _NUMBER_SUFFIX.match(name):
            continue
        names.add(name)
    return names


def readme_metrics() -> set[str]:
    """Metric names listed in README's "Prometheus metrics" section."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Prometheus metrics")
    end = readme.index("\n## ", start + 1)
    return set(re.findall(r"`(churn_[a-z0-9_]+)", readme[start:end]))


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in RULE_FILES:
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}
