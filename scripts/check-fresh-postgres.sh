#!/usr/bin/env bash
# Run scripts/ensure-postgres.sh on a fresh Debian, as `make test` would on a new machine,
# without touching this machine's own PostgreSQL: a debootstrapped bookworm in a chroot, in
# a network namespace of its own (its 127.0.0.1:5432 is not ours). apt inside reaches the
# mirror through a relay (socat: a TCP port in the namespace, a unix socket, the mirror),
# so the host's routes and firewall stay as they are. Not part of `make test`; needs root,
# debootstrap and socat, and a few minutes. Everything it makes is removed afterwards.
#
#   sudo scripts/check-fresh-postgres.sh [SUITE] [MIRROR]
set -euo pipefail

suite=${1:-bookworm}
mirror=${2:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
say() { printf 'check-fresh-postgres: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { say "needs root (debootstrap, chroot, network namespaces)"; exit 1; }
for tool in debootstrap socat unshare chroot; do
  command -v "$tool" >/dev/null 2>&1 || { say "needs $tool (apt-get install $tool)"; exit 1; }
done

work=$(mktemp -d /tmp/check-fresh-postgres.XXXXXX)
root="$work/root"
relay=""
cleanup() {
  set +e
  [ -n "$relay" ] && kill "$relay" 2>/dev/null && wait "$relay" 2>/dev/null
  # The namespace dies with its last process; a server left in it is stopped first.
  for mount in dev/pts dev proc sys; do
    mountpoint -q "$root/$mount" && umount -l "$root/$mount"
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

started=$(date +%s)
say "debootstrap $suite from $mirror into $root"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
host=$(printf '%s\n' "$mirror" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')

mkdir -p "$root/opt/setevnt"
cp "$here/ensure-postgres.sh" "$root/opt/setevnt/"
printf 'Acquire::http::Proxy "http://127.0.0.1:3142/";\n' >"$root/etc/apt/apt.conf.d/01relay"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

# The host half of the relay: the unix socket to the mirror (apt sends absolute URLs).
socat "UNIX-LISTEN:$work/relay.sock,fork" "TCP:$host:80" &
relay=$!

# Inside the namespace: lo up and the namespace half of the relay. Then the script on two
# fresh machines: one without an init system (a container: installing leaves the server
# stopped) and one booted (installing starts the server, as systemd does, before the script
# lets user postgres in); each time a second run must find the server ready, and user
# postgres must get in over TCP and create a database, as the store tests do.
unshare -n bash -s "$root" "$work/relay.sock" <<'INSIDE'
set -euo pipefail
root=$1 sock=$2
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
stop_servers() {
  in_root bash -c 'command -v pg_lsclusters >/dev/null || exit 0
    pg_lsclusters --no-header | while read -r version name _; do
      pg_ctlcluster --force "$version" "$name" stop 2>/dev/null || true
    done'
}
ip link set lo up
socat TCP-LISTEN:3142,bind=127.0.0.1,reuseaddr,fork "UNIX-CONNECT:$sock" &
inner=$!
trap 'stop_servers; kill $inner 2>/dev/null || true' EXIT
if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "check-fresh-postgres: 127.0.0.1:5432 is open in the new namespace" >&2; exit 1
fi
fresh_machine() {
  echo "check-fresh-postgres: --- $1" >&2
  in_root bash /opt/setevnt/ensure-postgres.sh
  in_root bash /opt/setevnt/ensure-postgres.sh
  in_root psql -w -h 127.0.0.1 -U postgres -d postgres -tA \
    -c "CREATE DATABASE setevnt_fresh_check" -c "DROP DATABASE setevnt_fresh_check" \
    -c "SELECT version()"
}
fresh_machine "no init system: installing leaves the server stopped"
stop_servers
in_root bash -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "postgresql*" >/dev/null 2>&1
  rm -rf /etc/postgresql /etc/postgresql-common /var/lib/postgresql /var/run/postgresql'
# What invoke-rc.d asks a booted machine (may services start, which runlevel is this?),
# so that installing starts the server.
printf '#!/bin/sh\nexit 0\n' >"$root/usr/sbin/policy-rc.d"
printf '#!/bin/sh\necho N 2\n' >"$root/usr/sbin/runlevel"
chmod +x "$root/usr/sbin/policy-rc.d" "$root/usr/sbin/runlevel"
fresh_machine "booted: installing starts the server with Debian's pg_hba.conf"
INSIDE
say "ensure-postgres.sh installed and started PostgreSQL on a fresh $suite, twice, in $(($(date +%s) - started))s"
