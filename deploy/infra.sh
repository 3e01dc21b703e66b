#!/usr/bin/env bash
# Local infrastructure for development and tests: PostgreSQL + Kafka.
#
#   deploy/infra.sh up      start both (in parallel), then print the settings to export
#   deploy/infra.sh down    stop both
#   deploy/infra.sh status  exit 0 only if both are healthy
#
# See deploy/postgres.sh and deploy/kafka.sh for details and environment knobs.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PG_PORT="${OMNI_PG_PORT:-5432}"
KAFKA_PORT="${OMNI_KAFKA_PORT:-9092}"

log() { printf '[infra] %s\n' "$*"; }

print_settings() {
  echo "OMNI_DATABASE_URL=postgresql+asyncpg://omniroute:omniroute@127.0.0.1:$PG_PORT/omniroute"
  echo "OMNI_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
}

# Runs "<service>.sh <action>" for both services in parallel; fails if either fails.
run_both() {
  local action="$1" rc=0 pg_pid kafka_pid
  bash "$SCRIPT_DIR/postgres.sh" "$action" &
  pg_pid=$!
  bash "$SCRIPT_DIR/kafka.sh" "$action" &
  kafka_pid=$!
  wait "$pg_pid" || rc=1
  wait "$kafka_pid" || rc=1
  return "$rc"
}

case "${1:-}" in
  up)
    t0=$SECONDS
    if ! run_both up; then
      log "FAILED (see the lines above)"
      exit 1
    fi
    log "up in $((SECONDS - t0)) s; settings:"
    print_settings
    ;;
  down)
    run_both down
    ;;
  status)
    if run_both status; then
      print_settings
    else
      log "not healthy"
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 {up|down|status}" >&2
    exit 2
    ;;
esac
