#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432 to user postgres without a password, as
# the store tests and the ledger bench use it: reuse a running server as it is, start an
# installed cluster, or install Debian's postgresql when we are root and apt-get is there.
# Only a cluster this script installed or started gets trust for 127.0.0.1; one that was
# already running is left alone.
set -euo pipefail

say() { printf 'ensure-postgres: %s\n' "$*" >&2; }
port_open() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
ready() {
  if command -v pg_isready >/dev/null 2>&1; then pg_isready -q -h 127.0.0.1 -p 5432; else port_open; fi
}
wait_ready() {
  for _ in $(seq 1 120); do ready && return 0; sleep 0.5; done
  return 1
}
can_login() {
  command -v psql >/dev/null 2>&1 || return 0  # nothing to check with: the tests will say
  psql -w -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1 </dev/null
}
wait_login() {  # a reload is asynchronous: the server re-reads pg_hba.conf a moment later
  for _ in $(seq 1 20); do can_login && return 0; sleep 0.5; done
  return 1
}
cluster() { pg_lsclusters --no-header 2>/dev/null | awk 'NR == 1 {print $1, $2, $3, $4}'; }

if ready; then
  can_login || { say "PostgreSQL on 127.0.0.1:5432 refuses user postgres without a password"; exit 1; }
  say "PostgreSQL ready on 127.0.0.1:5432"
  exit 0
fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(cluster)" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    say "no PostgreSQL on 127.0.0.1:5432 and cannot install one (need root and apt-get)."
    say "install PostgreSQL, or set SETEVNT_TEST_POSTGRES to a server you have."
    exit 1
  fi
fi

if [ -z "$(cluster)" ] && command -v pg_createcluster >/dev/null 2>&1; then
  # createcluster.conf may say not to create one when installing.
  newest=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$newest" ] && { say "creating cluster $newest/main"; pg_createcluster "$newest" main >/dev/null; }
fi
read -r version name port status <<<"$(cluster)"
[ -n "${version:-}" ] || { say "no PostgreSQL cluster after installing"; exit 1; }
[ "$port" = 5432 ] || say "cluster $version/$name listens on port $port, not 5432"
hba="/etc/postgresql/$version/$name/pg_hba.conf"
rule="host all postgres 127.0.0.1/32 trust"
if [ -w "$hba" ] && ! grep -qxF "$rule" "$hba"; then
  say "letting user postgres in from 127.0.0.1 without a password ($hba)"
  printf '%s\n%s\n' "$rule" "$(cat "$hba")" >"$hba"
fi
# Installing starts the server where an init system runs (systemd): it must re-read the
# rule. Without one (a container, a chroot) the server is still down.
if [ "$status" = online ]; then
  say "reloading cluster $version/$name"
  pg_ctlcluster "$version" "$name" reload
else
  say "starting cluster $version/$name"
  pg_ctlcluster "$version" "$name" start || service postgresql start
fi
wait_ready || { say "PostgreSQL did not open 127.0.0.1:5432"; exit 1; }
wait_login || { say "PostgreSQL refuses user postgres from 127.0.0.1 without a password"; exit 1; }
say "PostgreSQL ready on 127.0.0.1:5432"
