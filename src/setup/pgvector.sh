#!/usr/bin/env bash
# A PostgreSQL 16 server with pgvector on loopback, for the `pgvector` feature's tests and
# benchmarks. Debian has no pgvector package here; the PyPI package `pgserver` ships PostgreSQL
# 16 binaries with pgvector built in, so this needs only pip.
#
# Usage:
#   bash src/setup/pgvector.sh start [--until-exit PID]   # prints: export SEMROUTE_PG_URL=...
#   bash src/setup/pgvector.sh stop
#   bash src/setup/pgvector.sh url
#
# start installs pgserver (once), creates a database cluster (once), starts the server on
# 127.0.0.1:$SEMROUTE_PG_PORT (default 54329) if it is not running, creates the database
# `semroute`, and prints the URL to use. It is safe to re-run. With --until-exit PID, the server
# stops by itself once process PID has ended (the tests use this when no server was started for
# them). stop stops it; the cluster stays for the next start.
#
# Where: $SEMROUTE_PG_DIR; default <semroute home>/pgvector, or /var/tmp/semroute-pgvector when
# run as root: PostgreSQL refuses to run as root, so then it runs as `nobody`, which must be able
# to read the binaries (root's home is usually closed to it).
set -euo pipefail

say() { printf 'semroute pgvector: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

pgserver_version="0.1.4"
port="${SEMROUTE_PG_PORT:-54329}"
home="${SEMROUTE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/semroute}"
python="${PYTHON:-python3}"
if [ "$(id -u)" = 0 ]; then
  dir="${SEMROUTE_PG_DIR:-/var/tmp/semroute-pgvector}"
  as_pg() { runuser -u nobody -- "$@"; }
  command -v runuser >/dev/null || fail "running as root needs runuser (util-linux) to start PostgreSQL as nobody"
else
  dir="${SEMROUTE_PG_DIR:-$home/pgvector}"
  as_pg() { "$@"; }
fi
lib="$dir/lib"
bin="$lib/pgserver/pginstall/bin"
run="$dir/run"
data="$run/data"
url="postgresql://postgres@127.0.0.1:$port/semroute"

install() {
  if [ -x "$bin/pg_ctl" ] && [ -f "$lib/.semroute-pgserver-$pgserver_version" ]; then
    return
  fi
  say "installing pgserver $pgserver_version (PostgreSQL 16 + pgvector) from PyPI into $lib"
  mkdir -p "$dir"
  chmod 755 "$dir"
  rm -rf "$lib"
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$lib" "pgserver==$pgserver_version" \
    || fail "pip could not install pgserver==$pgserver_version (is PyPI reachable?)"
  [ -x "$bin/pg_ctl" ] || fail "pgserver $pgserver_version has no $bin/pg_ctl"
  [ -f "$lib/pgserver/pginstall/lib/postgresql/vector.so" ] || fail "pgserver $pgserver_version ships no pgvector (vector.so)"
  chmod -R a+rX "$lib"
  touch "$lib/.semroute-pgserver-$pgserver_version"
}

cluster() {
  if [ -f "$data/PG_VERSION" ]; then
    return
  fi
  say "creating a database cluster in $data"
  rm -rf "$run"
  mkdir -p "$run"
  [ "$(id -u)" = 0 ] && chown nobody "$run"
  as_pg "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; fail "initdb failed (its output is above)"; }
}

running() { as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }

start() {
  install
  cluster
  local started=""
  if ! running; then
    started=1
    say "starting PostgreSQL on 127.0.0.1:$port"
    as_pg "$bin/pg_ctl" -D "$data" -l "$run/postgres.log" -w -t 60 \
      -o "-p $port -h 127.0.0.1 -k $data -c max_connections=200" start >/dev/null \
      || { tail -20 "$run/postgres.log" >&2 || true; fail "PostgreSQL did not start (its log is above; is port $port taken? set SEMROUTE_PG_PORT)"; }
  fi
  local has
  has=$("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc "select 1 from pg_database where datname = 'semroute'") \
    || fail "cannot reach PostgreSQL on 127.0.0.1:$port (another server on that port? set SEMROUTE_PG_PORT)"
  if [ "$has" != 1 ]; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres semroute || fail "could not create the database semroute"
  fi
  "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d semroute -qAtc "set client_min_messages = warning; create extension if not exists vector" >/dev/null \
    || fail "the server has no pgvector extension"
  if [ -n "${until_exit:-}" ] && [ -n "$started" ]; then
    # Stop the server this call started once the process that asked for it has ended (a server
    # that was already running is left as it was).
    (
      while kill -0 "$until_exit" 2>/dev/null; do sleep 1; done
      as_pg "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
    ) </dev/null >/dev/null 2>&1 &
    disown
  fi
  echo "export SEMROUTE_PG_URL=$url"
}

stop() {
  if [ -x "$bin/pg_ctl" ] && [ -f "$data/PG_VERSION" ] && running; then
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    say "stopped PostgreSQL on 127.0.0.1:$port"
  fi
}

cmd="${1:-}"
shift || true
until_exit=""
while [ $# -gt 0 ]; do
  case "$1" in
    --until-exit) until_exit="${2:?--until-exit needs a process id}"; shift 2 ;;
    *) fail "unknown argument '$1'" ;;
  esac
done
case "$cmd" in
  start) start ;;
  stop) stop ;;
  url) echo "$url" ;;
  *) fail "usage: pgvector.sh start [--until-exit PID] | stop | url" ;;
esac
