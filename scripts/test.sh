#!/usr/bin/env bash
# Runs the whole test suite. Tests use the real PostgreSQL and Redis on
# 127.0.0.1; this script starts them (installing Debian's packages on a
# fresh machine) when they are not already running.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  if [ -z "${apt_updated:-}" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    return
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "test.sh: installing PostgreSQL" >&2
    apt_install postgresql postgresql-client
  fi
  version=$(ls /etc/postgresql | sort -n | tail -1)
  # Trust auth on loopback, as on the development machines; tests create
  # and drop their own databases.
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  echo "test.sh: starting PostgreSQL $version" >&2
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
  pg_isready -h 127.0.0.1 -p 5432
  if ! psql -h 127.0.0.1 -U root -d postgres -c 'select 1' >/dev/null 2>&1; then
    as_root su postgres -c "psql -q -c 'create role root superuser login'" || true
  fi
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    return
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: installing Redis" >&2
    apt_install redis-server
  fi
  echo "test.sh: starting Redis" >&2
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 1
  done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
}

# The e2e tests use mosquitto_pub as a second MQTT client; the bench
# smoke test starts its own mosquitto broker on a free port as the
# comparison target.
ensure_mosquitto() {
  command -v mosquitto_pub >/dev/null 2>&1 || apt_install mosquitto-clients
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
}

ensure_postgres
ensure_redis
ensure_mosquitto

go vet ./...
go test -race -count=1 -timeout 30m ./...
