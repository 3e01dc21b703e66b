#!/usr/bin/env bash
# Local PostgreSQL for development and CI: our own cluster, no systemd, no Docker.
#
#   deploy/postgres.sh up      install (Debian, root, once), initdb (once), start,
#                              ensure role+database omniroute/omniroute
#   deploy/postgres.sh down    pg_ctl stop -m fast (our cluster only)
#   deploy/postgres.sh status  exit 0 only if omniroute can log in on 127.0.0.1:$PORT
#
# Cluster location (first match):
#   $OMNI_PG_DATA_DIR                                   if set
#   ${OMNI_DATA_DIR:-<repo>/.omni}/postgres             normally
#   /var/tmp/omniroute-pg                               when running as root and the
#                                                       postgres OS user cannot reach
#                                                       the directory above (e.g. under /root)
# Inside it: data/ (PGDATA), postgres.log, the unix socket, initdb.log.
# Listens on 127.0.0.1:${OMNI_PG_PORT:-5432} only; shared_buffers ${OMNI_PG_SHARED_BUFFERS:-1GB}.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

PG_HOST=127.0.0.1
PG_PORT="${OMNI_PG_PORT:-5432}"
APP_USER=omniroute
APP_PASSWORD=omniroute
APP_DB=omniroute
START_TIMEOUT="${OMNI_PG_START_TIMEOUT:-60}"
# PostgreSQL's own default (128MB) is meant for small machines: the router's lookups at
# 10^6 stored conversations touch ~700 MB of tables and indexes (benchmark B6), and
# every page that is not in shared buffers is a read from the kernel. Applied when the
# cluster starts (an already running one keeps its value until `down` and `up`).
SHARED_BUFFERS="${OMNI_PG_SHARED_BUFFERS:-1GB}"

DATA_ROOT="${OMNI_DATA_DIR:-$REPO_ROOT/.omni}"
[[ "$DATA_ROOT" == /* ]] || DATA_ROOT="$PWD/$DATA_ROOT"
FALLBACK_BASE=/var/tmp/omniroute-pg

if [[ $EUID -eq 0 ]]; then
  IS_ROOT=1
  SUPERUSER=postgres
else
  IS_ROOT=0
  SUPERUSER="$(id -un)"
fi

log() { printf '[postgres] %s\n' "$*"; }
die() { printf '[postgres] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command as the OS user that owns the cluster (postgres when we are root).
# cd / first: the postgres user may not be able to access the caller's cwd.
as_pg() {
  if ((IS_ROOT)); then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# Highest /usr/lib/postgresql/<ver>/bin with server binaries, else pg_config/PATH.
find_bindir() {
  local d best=""
  best="$(
    for d in /usr/lib/postgresql/*/bin; do
      if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
        printf '%s\n' "$d"
      fi
    done | sort -V | tail -n 1
  )"
  if [[ -z "$best" ]] && command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
      best="$d"
    fi
  fi
  if [[ -z "$best" ]] && command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    best="$(dirname "$(command -v initdb)")"
  fi
  [[ -n "$best" ]] || return 1
  printf '%s\n' "$best"
}

install_postgres() {
  ((IS_ROOT)) || die "PostgreSQL server binaries not found; install them (Debian: sudo apt-get install -y postgresql) or run as root"
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL not found and apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  local -a apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
                     -o DPkg::Lock::Timeout=300)
  local t0=$SECONDS apt_log="${TMPDIR:-/tmp}/omniroute-apt-postgres.log"
  log "PostgreSQL not installed; installing Debian package 'postgresql' (log: $apt_log)"
  {
    apt-get update -q
    # We run our own cluster: stop the package from creating (and starting) its
    # own 'main' cluster on port 5432.
    apt-get install "${apt_opts[@]}" postgresql-common
    if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
      sed -i -E 's/^[#[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf
    fi
    apt-get install "${apt_opts[@]}" postgresql
  } >"$apt_log" 2>&1 || { tail -n 30 "$apt_log" >&2; die "apt-get install postgresql failed"; }
  log "installed in $((SECONDS - t0)) s"
}

# True if the postgres OS user can traverse directory $1 (or its nearest existing ancestor).
pg_user_can_reach() {
  local d="$1"
  while [[ ! -e "$d" && "$d" != "/" ]]; do
    d="$(dirname "$d")"
  done
  (cd / && runuser -u postgres -- test -x "$d" -a -r "$d") 2>/dev/null
}

resolve_paths() {
  if [[ -n "${OMNI_PG_DATA_DIR:-}" ]]; then
    PG_BASE="$OMNI_PG_DATA_DIR"
    [[ "$PG_BASE" == /* ]] || PG_BASE="$PWD/$PG_BASE"
  elif ((!IS_ROOT)) || [[ -f "$DATA_ROOT/postgres/data/PG_VERSION" ]] || pg_user_can_reach "$DATA_ROOT"; then
    PG_BASE="$DATA_ROOT/postgres"
  else
    PG_BASE="$FALLBACK_BASE"
    PG_BASE_NOTE="the postgres OS user cannot reach $DATA_ROOT; using $PG_BASE (override: OMNI_PG_DATA_DIR)"
  fi
  PGDATA_DIR="$PG_BASE/data"
  PG_LOG="$PG_BASE/postgres.log"
  SOCK_DIR="$PG_BASE"
}

# True if our cluster's postmaster is running (pid from postmaster.pid, alive
# and not a zombie; PID 1 on some machines reaps orphans late).
ours_running() {
  local pid state
  [[ -f "$PGDATA_DIR/PG_VERSION" && -f "$PGDATA_DIR/postmaster.pid" ]] || return 1
  pid="$(head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]] || return 1
  as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

psql_bin() {
  if [[ -n "${BINDIR:-}" && -x "$BINDIR/psql" ]]; then
    printf '%s\n' "$BINDIR/psql"
  elif command -v psql >/dev/null 2>&1; then
    command -v psql
  else
    return 1
  fi
}

pg_ready() {
  local b
  if [[ -n "${BINDIR:-}" && -x "$BINDIR/pg_isready" ]]; then b="$BINDIR/pg_isready"
  elif command -v pg_isready >/dev/null 2>&1; then b="$(command -v pg_isready)"
  else return 1
  fi
  "$b" -q -h "$PG_HOST" -p "$PG_PORT" -t 3
}

# True if the application role can log in over TCP and run a query.
app_login_ok() {
  local psql out
  psql="$(psql_bin)" || return 1
  out="$(PGPASSWORD="$APP_PASSWORD" PGCONNECT_TIMEOUT=3 "$psql" -X -A -t -q \
    -h "$PG_HOST" -p "$PG_PORT" -U "$APP_USER" -d "$APP_DB" -c 'select 1' 2>/dev/null)" || return 1
  [[ "$out" == "1" ]]
}

port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$PG_HOST" "$PG_PORT" >/dev/null 2>&1
}

# Reads SQL on stdin; creates/updates the role and database idempotently.
# "$@" is the psql command (with connection options) to run as superuser.
ensure_role_db() {
  "$@" -X -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', '$APP_USER', '$APP_PASSWORD')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$APP_USER') \gexec
ALTER ROLE $APP_USER LOGIN CREATEDB PASSWORD '$APP_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$APP_DB', '$APP_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$APP_DB') \gexec
ALTER DATABASE $APP_DB OWNER TO $APP_USER;
SQL
}

prepare_base_dir() {
  if [[ ! -d "$PG_BASE" ]]; then
    mkdir -p "$PG_BASE"
  fi
  if ((IS_ROOT)); then
    if [[ ! -f "$PGDATA_DIR/PG_VERSION" || "$(stat -c %U "$PG_BASE")" != postgres ]]; then
      chown -R postgres:postgres "$PG_BASE"
    fi
  fi
  chmod 700 "$PG_BASE"
  as_pg test -w "$PG_BASE" || die "$PG_BASE is not writable by the cluster owner; set OMNI_PG_DATA_DIR"
  local sock="$SOCK_DIR/.s.PGSQL.$PG_PORT"
  ((${#sock} <= 100)) || die "unix socket path too long (${#sock} chars): $sock; set OMNI_PG_DATA_DIR to a shorter path"
}

init_cluster() {
  [[ -f "$PGDATA_DIR/PG_VERSION" ]] && return 0
  local locale=C
  if locale -a 2>/dev/null | grep -qi '^c\.utf-\?8$'; then
    locale=C.UTF-8
  fi
  log "initdb $PGDATA_DIR (PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}'), superuser $SUPERUSER, locale $locale)"
  as_pg mkdir -p "$PGDATA_DIR"
  if ! as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -U "$SUPERUSER" -E UTF8 --locale="$locale" \
      --auth-local=peer --auth-host=scram-sha-256 >"$PG_BASE/initdb.log" 2>&1; then
    tail -n 30 "$PG_BASE/initdb.log" >&2 || true
    die "initdb failed (log: $PG_BASE/initdb.log)"
  fi
  # Our settings live in omniroute.conf (rewritten on every `up`).
  printf "\n# Added by deploy/postgres.sh\ninclude_if_exists = 'omniroute.conf'\n" \
    | as_pg tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null
}

write_conf() {
  as_pg tee "$PGDATA_DIR/omniroute.conf" >/dev/null <<CONF
# Written by deploy/postgres.sh on every 'up'; edits are overwritten.
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$SOCK_DIR'
max_connections = 100
shared_buffers = $SHARED_BUFFERS
logging_collector = off
log_min_messages = warning
CONF
}

# After a crash (kill -9, OOM) the old postmaster can linger as a zombie until
# PID 1 reaps it; postgres then refuses to start ("lock file already exists").
wait_stale_postmaster() {
  local pid state deadline=$((SECONDS + 30))
  [[ -f "$PGDATA_DIR/postmaster.pid" ]] || return 0
  pid="$(head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  while state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" && [[ "$state" == Z ]]; do
    if ((SECONDS >= deadline)); then
      log "old postmaster $pid is still an unreaped zombie; moving its stale postmaster.pid aside"
      as_pg mv -f "$PGDATA_DIR/postmaster.pid" "$PGDATA_DIR/postmaster.pid.stale"
      return 0
    fi
    sleep 0.5
  done
}

start_cluster() {
  local t0=$SECONDS
  wait_stale_postmaster
  log "starting on $PG_HOST:$PG_PORT (data $PGDATA_DIR, log $PG_LOG)"
  if ! as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$START_TIMEOUT" start >/dev/null 2>&1; then
    tail -n 30 "$PG_LOG" >&2 || true
    die "pg_ctl start failed (log: $PG_LOG)"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until pg_ready; do
    ((SECONDS < deadline)) || { tail -n 30 "$PG_LOG" >&2 || true; die "pg_isready failed"; }
    sleep 0.5
  done
  log "started in $((SECONDS - t0)) s"
}

our_psql() {
  as_pg "$BINDIR/psql" -h "$SOCK_DIR" -p "$PG_PORT" -U "$SUPERUSER" "$@"
}

# Port is taken by a PostgreSQL that is not ours: reuse it if we can.
adopt_foreign() {
  if app_login_ok; then
    log "port $PG_PORT is served by another PostgreSQL where $APP_USER can log in; reusing it"
    return 0
  fi
  if ((IS_ROOT)) && command -v pg_lsclusters >/dev/null 2>&1; then
    local ver name
    read -r ver name < <(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p && $4 ~ /online/ {print $1, $2; exit}') || true
    if [[ -n "${ver:-}" && -n "${name:-}" ]]; then
      log "port $PG_PORT is the Debian cluster $ver/$name; creating role/database $APP_USER there"
      ensure_role_db as_pg psql --cluster "$ver/$name" \
        || die "could not create role/database in Debian cluster $ver/$name"
      app_login_ok || die "created role in $ver/$name but $APP_USER still cannot log in over TCP (check its pg_hba.conf)"
      log "reusing Debian cluster $ver/$name on port $PG_PORT"
      return 0
    fi
  fi
  die "port $PG_HOST:$PG_PORT is in use by another server and '$APP_USER' cannot log in there; stop it or set OMNI_PG_PORT"
}

cmd_up() {
  if [[ $IS_ROOT -eq 1 ]] && ! id postgres >/dev/null 2>&1 && BINDIR="$(find_bindir)"; then
    die "PostgreSQL binaries found in $BINDIR but there is no 'postgres' OS user"
  fi
  BINDIR="$(find_bindir)" || { install_postgres; BINDIR="$(find_bindir)" || die "no PostgreSQL binaries after install"; }
  mkdir -p "$DATA_ROOT"
  resolve_paths
  # Fast path: ours is running and the app can log in.
  if ours_running; then
    if app_login_ok; then
      log "already running, healthy on $PG_HOST:$PG_PORT (data $PGDATA_DIR)"
      return 0
    fi
    # Running but not answering yet (starting, recovering, or just died).
    local deadline=$((SECONDS + START_TIMEOUT))
    until pg_ready || ! ours_running; do
      if ((SECONDS >= deadline)); then
        tail -n 30 "$PG_LOG" >&2 || true
        die "our cluster ($PGDATA_DIR) is running but not accepting connections; try: $0 down && $0 up"
      fi
      sleep 0.5
    done
  fi
  if ! ours_running && { pg_ready || port_open; }; then
    adopt_foreign
    return 0
  fi
  [[ -n "${PG_BASE_NOTE:-}" ]] && log "$PG_BASE_NOTE"
  prepare_base_dir
  init_cluster
  write_conf
  ours_running || start_cluster
  if ! app_login_ok; then
    log "ensuring role and database '$APP_USER'"
    ensure_role_db our_psql || die "could not create role/database"
    app_login_ok || die "role/database created but '$APP_USER' cannot log in on $PG_HOST:$PG_PORT"
  fi
  log "healthy on $PG_HOST:$PG_PORT (login $APP_USER ok)"
}

cmd_down() {
  BINDIR="$(find_bindir)" || { log "not installed; nothing to stop"; return 0; }
  resolve_paths
  if ours_running; then
    log "stopping (data $PGDATA_DIR)"
    as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null
    log "stopped"
  elif pg_ready; then
    log "not running here; the PostgreSQL on $PG_HOST:$PG_PORT is not ours, leaving it alone"
  else
    log "not running"
  fi
}

cmd_status() {
  BINDIR="$(find_bindir || true)"
  if [[ -n "$BINDIR" ]]; then
    resolve_paths
    if ours_running; then
      if pg_ready && app_login_ok; then
        log "running, healthy on $PG_HOST:$PG_PORT (data $PGDATA_DIR, login $APP_USER ok)"
        return 0
      fi
      log "running (data $PGDATA_DIR) but NOT healthy: pg_isready or login as $APP_USER failed (log: $PG_LOG)"
      return 1
    fi
  fi
  if pg_ready; then
    if app_login_ok; then
      log "not ours, but a PostgreSQL on $PG_HOST:$PG_PORT accepts login as $APP_USER (healthy)"
      return 0
    fi
    log "a PostgreSQL that is not ours answers on $PG_HOST:$PG_PORT, but login as $APP_USER fails"
    return 1
  fi
  log "not running"
  return 3
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
