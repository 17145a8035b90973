#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 with the management (15672) and
# prometheus (15692) plugins: reuse a running one, start an installed one, or install
# Debian's rabbitmq-server when we are root and apt-get is there.
set -euo pipefail

say() { printf 'ensure-broker: %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local port=$1 seconds=$2
  for _ in $(seq 1 $((seconds * 4))); do port_open "$port" && return 0; sleep 0.25; done
  return 1
}

if ! port_open 5672; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing Debian's rabbitmq-server"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    else
      say "no broker on 127.0.0.1:5672 and cannot install one (need root and apt-get)."
      say "install RabbitMQ or set SETEVNT_AMQP_URL to a broker you have."
      exit 1
    fi
  fi
  if ! port_open 5672; then
    say "starting rabbitmq-server"
    rabbitmq-server -detached
    timeout 120 rabbitmqctl await_startup >/dev/null
  fi
  wait_port 5672 60 || { say "broker did not open 127.0.0.1:5672"; exit 1; }
fi

if ! port_open 15672 || ! port_open 15692; then
  say "enabling the management and prometheus plugins"
  rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus >/dev/null
  wait_port 15672 60 || { say "management API did not come up on 15672"; exit 1; }
  wait_port 15692 60 || { say "prometheus endpoint did not come up on 15692"; exit 1; }
fi
say "broker ready on 127.0.0.1:5672 (management on 15672, metrics on 15692)"
