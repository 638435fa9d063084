#!/bin/sh
# Install the system packages the deploy tests need, when they are missing:
#   promtool, prometheus      <- Debian package `prometheus`
#   prometheus-alertmanager, amtool <- Debian package `prometheus-alertmanager`
#   node, npm                 <- Debian packages `nodejs`, `npm` (CRD schema validation)
# Idempotent: does nothing when every tool is on PATH. Installs with apt-get only as root
# on a Debian-like system; otherwise prints what is missing and how to get it.
set -eu

missing=""
need() {
    command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need promtool prometheus
need prometheus prometheus
need prometheus-alertmanager prometheus-alertmanager
need amtool prometheus-alertmanager
# Debian's nodejs + npm only where there is no node at all (a node from elsewhere, e.g.
# NodeSource, ships its own npm and conflicts with Debian's npm package).
need node "nodejs npm"

# one package name once
packages=$(printf '%s\n' $missing | sort -u | tr '\n' ' ' | sed 's/ *$//')
if [ -z "$packages" ]; then
    echo "install-system-deps: promtool, prometheus, prometheus-alertmanager, amtool and node are present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing Debian packages: $packages" >&2
    echo "install-system-deps: run as root: apt-get install -y $packages" >&2
    exit 0
fi

echo "install-system-deps: installing $packages with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # one argument per package
apt-get install -y -qq --no-install-recommends $packages >/dev/null
# The packages' services must not keep running here (there is no init system in CI).
for service in prometheus prometheus-alertmanager; do
    if command -v service >/dev/null 2>&1; then
        service "$service" stop >/dev/null 2>&1 || true
    fi
done
echo "install-system-deps: installed $packages"
