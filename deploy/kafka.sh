#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x (KRaft, broker+controller), no Docker.
#
#   deploy/kafka.sh up      fetch jars (once), format storage (once), start, wait healthy
#   deploy/kafka.sh down    stop our broker (SIGTERM, SIGKILL after 30 s)
#   deploy/kafka.sh status  exit 0 only if a healthy Kafka answers on the port
#
# Jars come from Maven Central via deploy/kafka/pom.xml into
#   ${OMNI_CACHE_DIR:-$HOME/.cache/omniroute}/kafka-<version>/libs
# Data, config, logs and pid file live in
#   ${OMNI_DATA_DIR:-<repo>/.omni}/kafka
# Environment knobs: OMNI_KAFKA_VERSION, OMNI_KAFKA_PORT (9092),
# OMNI_KAFKA_CONTROLLER_PORT (9093), OMNI_KAFKA_HEAP ("-Xms256m -Xmx512m"),
# OMNI_KAFKA_START_TIMEOUT (90 s), JAVA_HOME.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

KAFKA_VERSION="${OMNI_KAFKA_VERSION:-4.2.0}"
HOST=127.0.0.1
PORT="${OMNI_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${OMNI_KAFKA_CONTROLLER_PORT:-9093}"
HEAP_OPTS="${OMNI_KAFKA_HEAP:--Xms256m -Xmx512m}"
START_TIMEOUT="${OMNI_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT=30

CACHE_DIR="${OMNI_CACHE_DIR:-$HOME/.cache/omniroute}/kafka-$KAFKA_VERSION"
[[ "$CACHE_DIR" == /* ]] || CACHE_DIR="$PWD/$CACHE_DIR"
LIBS_DIR="$CACHE_DIR/libs"
LIBS_MARKER="$CACHE_DIR/.libs-complete"

DATA_ROOT="${OMNI_DATA_DIR:-$REPO_ROOT/.omni}"
[[ "$DATA_ROOT" == /* ]] || DATA_ROOT="$PWD/$DATA_ROOT"
KAFKA_DIR="$DATA_ROOT/kafka"
PID_FILE="$KAFKA_DIR/kafka.pid"
OUT_FILE="$KAFKA_DIR/kafka.out"        # JVM stdout/stderr (normally near empty)
LOG_DIR="$KAFKA_DIR/logs"              # log4j2 server.log
LOG_FILE="$LOG_DIR/server.log"
LOG_DIRS="$KAFKA_DIR/data"             # Kafka log.dirs (the partitions)
CLUSTER_ID_FILE="$KAFKA_DIR/cluster.id"
CONFIG_FILE="$KAFKA_DIR/server.properties"
LOG4J_FILE="$KAFKA_DIR/log4j2.properties"
LOCK_FILE="$KAFKA_DIR/.lock"
LOG_OFFSET=0                           # size of server.log before our launch

log() { printf '[kafka] %s\n' "$*"; }
die() { printf '[kafka] ERROR: %s\n' "$*" >&2; exit 1; }

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    printf '%s\n' "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "java not found (Kafka $KAFKA_VERSION needs Java 17+; Debian: apt-get install -y openjdk-17-jre-headless)"
  fi
}

# True if something accepts TCP connections on $1:$2.
port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# Real Kafka protocol check: send ApiVersionsRequest v0 (api_key 18,
# correlation id 42, client id "omni") and expect a response carrying
# correlation id 42 and error_code 0 (NONE). A KRaft broker only serves
# client requests once it has caught up with the metadata log.
kafka_healthy() {
  local resp
  # shellcheck disable=SC2016 # expanded by the inner bash
  resp="$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "\x00\x00\x00\x0e\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x04omni" >&3
    head -c 10 <&3 | od -An -tx1 | tr -d " \n"
  ' _ "$HOST" "$PORT" 2>/dev/null)" || return 1
  [[ "$resp" =~ ^[0-9a-f]{8}0000002a0000$ ]]
}

# True if process $1 exists and is not a zombie (PID 1 here may reap late).
alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# Prints the pid of OUR broker if it is alive (pid file + cmdline check).
our_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka' || return 1
  printf '%s\n' "$pid"
}

# Prints the end of the broker log (only what this launch wrote, when known).
show_logs() {
  if [[ -s "$LOG_FILE" ]]; then
    printf '[kafka] ---- last lines of %s ----\n' "$LOG_FILE" >&2
    tail -c +"$((LOG_OFFSET + 1))" "$LOG_FILE" | tail -n 40 >&2 || true
  fi
  if [[ -s "$OUT_FILE" ]]; then
    printf '[kafka] ---- last lines of %s ----\n' "$OUT_FILE" >&2
    tail -n 20 "$OUT_FILE" >&2 || true
  fi
}

take_lock() {
  mkdir -p "$KAFKA_DIR"
  exec 9>"$LOCK_FILE"
  flock -w 180 9 || die "another deploy/kafka.sh is running (lock $LOCK_FILE)"
}

fetch_libs() {
  if [[ -f "$LIBS_MARKER" && -d "$LIBS_DIR" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 \
    || die "mvn not found (needed once to fetch Kafka jars; Debian: apt-get install -y maven)"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR"
  mkdir -p "$CACHE_DIR"
  local tmp="$CACHE_DIR/libs.tmp.$$" mvn_log="$CACHE_DIR/mvn.log" t0=$SECONDS
  rm -rf "$tmp"
  if ! mvn -B -q -Dstyle.color=never -f "$SCRIPT_DIR/kafka/pom.xml" \
      -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
      >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2 || true
    rm -rf "$tmp"
    die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (full log: $mvn_log)"
  fi
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"; }
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  printf 'kafka_2.13 %s\n' "$KAFKA_VERSION" >"$LIBS_MARKER"
  log "fetched $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars in $((SECONDS - t0)) s"
}

render_config() {
  mkdir -p "$LOG_DIR" "$LOG_DIRS"
  sed -e "s|@PORT@|$PORT|g" \
      -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
      -e "s|@LOG_DIRS@|$LOG_DIRS|g" \
      "$SCRIPT_DIR/kafka/server.properties.template" >"$CONFIG_FILE.tmp"
  mv "$CONFIG_FILE.tmp" "$CONFIG_FILE"
  cp "$SCRIPT_DIR/kafka/log4j2.properties" "$LOG4J_FILE"
}

# Formats log.dirs once (KRaft standalone dynamic quorum). The cluster id is
# random, chosen on first format and kept in $CLUSTER_ID_FILE.
format_storage() {
  if [[ -f "$LOG_DIRS/meta.properties" ]]; then
    return 0
  fi
  local java cluster_id out
  java="$(java_bin)"
  if [[ -s "$CLUSTER_ID_FILE" ]]; then
    cluster_id="$(cat "$CLUSTER_ID_FILE")"
  else
    cluster_id="$("$java" -cp "$LIBS_DIR/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "StorageTool random-uuid failed: '$cluster_id'"
    printf '%s\n' "$cluster_id" >"$CLUSTER_ID_FILE"
  fi
  log "formatting storage in $LOG_DIRS (cluster id $cluster_id)"
  # share.version=0: share groups (KIP-932) off.
  if ! out="$("$java" -Dlog4j2.configurationFile="$LOG4J_FILE" -Dkafka.logs.dir="$LOG_DIR/storage-tool" \
        -cp "$LIBS_DIR/*" kafka.tools.StorageTool format \
        --config "$CONFIG_FILE" --cluster-id "$cluster_id" \
        --standalone --feature share.version=0 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "storage format failed"
  fi
}

start_broker() {
  local java t0=$SECONDS
  java="$(java_bin)"
  local -a heap jvm
  read -r -a heap <<<"$HEAP_OPTS"
  jvm=(
    "${heap[@]}"
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
    -Dlog4j2.configurationFile="$LOG4J_FILE"
    -Dkafka.logs.dir="$LOG_DIR"
  )
  LOG_OFFSET=0
  [[ -f "$LOG_FILE" ]] && LOG_OFFSET="$(stat -c %s "$LOG_FILE")"
  : >"$OUT_FILE"
  rm -f "$PID_FILE"
  log "starting Kafka $KAFKA_VERSION on $HOST:$PORT (controller $HOST:$CONTROLLER_PORT), log $LOG_FILE"
  # setsid + nohup: survives the calling shell / make / CI step exiting.
  # The inner bash writes its own pid (then execs java, so it is the JVM's pid).
  # fd 9 (our lock) is closed for the child.
  (
    cd "$KAFKA_DIR"
    # shellcheck disable=SC2016 # expanded by the inner bash
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
      "$java" "${jvm[@]}" -cp "$LIBS_DIR/*" kafka.Kafka "$CONFIG_FILE" \
      >"$OUT_FILE" 2>&1 </dev/null 9>&- &
  )
  local deadline=$((SECONDS + START_TIMEOUT)) pid=""
  while ((SECONDS < deadline)); do
    if [[ -z "$pid" && -s "$PID_FILE" ]]; then
      pid="$(cat "$PID_FILE")"
    fi
    if [[ -n "$pid" ]]; then
      if ! alive "$pid"; then
        show_logs
        die "broker process $pid exited during startup"
      fi
      # server.log rolled over since launch: search the new file from its start.
      if [[ -f "$LOG_FILE" ]] && (($(stat -c %s "$LOG_FILE") < LOG_OFFSET)); then
        LOG_OFFSET=0
      fi
      # Healthy = answers ApiVersions AND logged "started" since this launch.
      if kafka_healthy && [[ -f "$LOG_FILE" ]] \
          && tail -c +"$((LOG_OFFSET + 1))" "$LOG_FILE" | grep -q 'Kafka Server started'; then
        log "healthy on $HOST:$PORT (pid $pid, $((SECONDS - t0)) s)"
        return 0
      fi
    elif ((SECONDS - t0 > 10)); then
      show_logs
      die "broker did not start (no pid file after 10 s)"
    fi
    sleep 0.5
  done
  show_logs
  log "not healthy after ${START_TIMEOUT} s; stopping it"
  stop_pid "$pid"
  die "Kafka failed to become healthy within ${START_TIMEOUT} s"
}

stop_pid() {
  local pid="$1"
  [[ -n "$pid" ]] && alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.5
  done
  if alive "$pid"; then
    log "still running after ${STOP_TIMEOUT} s; sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$PID_FILE"
}

cmd_up() {
  local pid
  # Fast path: ours, running and healthy (no JVM started, no lock taken).
  if pid="$(our_pid)" && kafka_healthy; then
    log "already running (pid $pid), healthy on $HOST:$PORT"
    return 0
  fi
  take_lock
  if pid="$(our_pid)"; then
    # Ours but not answering yet: maybe still starting (or wedged).
    log "pid $pid is running but not healthy yet; waiting"
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
      if kafka_healthy; then
        log "healthy on $HOST:$PORT (pid $pid)"
        return 0
      fi
      alive "$pid" || break
      sleep 1
    done
    if alive "$pid"; then
      show_logs
      die "pid $pid is running but not healthy after ${START_TIMEOUT} s (try: $0 down && $0 up)"
    fi
    log "pid $pid exited; starting again"
  fi
  if kafka_healthy; then
    log "a healthy Kafka that is not ours already answers on $HOST:$PORT; reusing it"
    return 0
  fi
  if port_open "$HOST" "$PORT"; then
    die "port $HOST:$PORT is in use by something that does not answer as Kafka"
  fi
  if port_open "$HOST" "$CONTROLLER_PORT"; then
    die "controller port $HOST:$CONTROLLER_PORT is already in use"
  fi
  fetch_libs
  render_config
  format_storage
  start_broker
}

cmd_down() {
  local pid
  take_lock
  if pid="$(our_pid)"; then
    log "stopping pid $pid"
    stop_pid "$pid"
    log "stopped"
  else
    rm -f "$PID_FILE"
    if kafka_healthy; then
      log "not running here; the Kafka on $HOST:$PORT is not ours, leaving it alone"
    else
      log "not running"
    fi
  fi
}

cmd_status() {
  local pid
  if pid="$(our_pid)"; then
    if kafka_healthy; then
      log "running (pid $pid), healthy on $HOST:$PORT"
      return 0
    fi
    log "running (pid $pid) but NOT healthy on $HOST:$PORT (log: $LOG_FILE)"
    return 1
  fi
  if kafka_healthy; then
    log "not ours, but a healthy Kafka answers on $HOST:$PORT"
    return 0
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
