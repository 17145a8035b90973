#!/usr/bin/env bash
# Tools the test suite drives for real: Debian's prometheus (and promtool) and
# alertmanager (and amtool) for the monitoring proof, chromium to render the HTML storm
# report. Installed when missing.
set -euo pipefail

say() { printf 'ensure-tools: %s\n' "$*" >&2; }
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  say "missing: $packages; install them (Debian: apt-get install $packages)"
  exit 1
fi
say "installing $packages"
apt-get update -qq
# --no-install-recommends: no node exporter or desktop extras. Tests never use a packaged
# prometheus service (if the machine starts one on :9090): they run their own on a free port.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
