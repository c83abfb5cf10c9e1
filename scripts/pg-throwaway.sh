#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster on a free localhost port.
#   scripts/pg-throwaway.sh start DIR   -> prints the database URL on stdout
#   scripts/pg-throwaway.sh stop DIR
# As root the cluster runs as the "postgres" system user (PostgreSQL refuses root).
set -euo pipefail
action=${1:?start|stop}
dir=${2:?cluster directory}

pg_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && [ -x "$found/$name" ] || { echo "PostgreSQL server binaries not found" >&2; exit 1; }
  echo "$found/$name"
}

as_owner() {
  if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = "0" ]; then chown postgres:postgres "$dir"; fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_owner "$(pg_bin initdb)" -D "$dir/data" --auth=trust --username=strongroom -E UTF8 >"$dir/initdb.log" 2>&1
    opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200"
    # Tests trade durability for speed; PG_DURABLE=1 (benchmarks) keeps the defaults.
    if [ "${PG_DURABLE:-0}" != "1" ]; then
      opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    as_owner "$(pg_bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$opts" start >/dev/null
    echo "postgresql://strongroom@127.0.0.1:$port/postgres"
    ;;
  stop)
    if [ -d "$dir/data" ]; then as_owner "$(pg_bin pg_ctl)" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
