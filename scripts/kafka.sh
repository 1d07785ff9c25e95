#!/usr/bin/env bash
# Apache Kafka from Maven Central: the jars, one KRaft node, and Kafka's own command-line tools.
#
#   scripts/kafka.sh install            gather the jars into the cache (idempotent)
#   scripts/kafka.sh preflight          install, then check what the broker needs (Java 17+,
#                                       free ports, a sound log directory); one line on failure
#   scripts/kafka.sh run                preflight, format the log directory once, then run the
#                                       broker in the foreground (scripts/stack.sh supervises it)
#   scripts/kafka.sh tool NAME ARGS...  run one of Kafka's tools against the broker:
#       console-consumer, console-producer, topics, consumer-groups, transactions,
#       get-offsets, storage; --bootstrap-server is added when not given
#
# Environment: PAYSTREAM_BROKER_ADDR (127.0.0.1:9092), PAYSTREAM_CONTROLLER_ADDR
# (127.0.0.1:9093), KAFKA_LOG_DIR (the broker's data, default $PAYSTREAM_STATE_DIR/kafka-logs),
# KAFKA_HEAP_OPTS (-Xms256m -Xmx768m), PAYSTREAM_CACHE_DIR (~/.cache/paystream), JAVA (java).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
STATE_DIR="${PAYSTREAM_STATE_DIR:-$ROOT/.stack}"
CONF_DIR="$ROOT/deploy/kafka"
# Keep in step with kafka.version in deploy/kafka/pom.xml (checked below).
KAFKA_VERSION=4.1.1
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
BROKER_ADDR="${PAYSTREAM_BROKER_ADDR:-127.0.0.1:9092}"
CONTROLLER_ADDR="${PAYSTREAM_CONTROLLER_ADDR:-127.0.0.1:9093}"
LOG_DIR="${KAFKA_LOG_DIR:-$STATE_DIR/kafka-logs}"
JAVA="${JAVA:-java}"

die() { printf 'kafka: %s\n' "$*" >&2; exit 1; }
log() { printf '[kafka] %s\n' "$*" >&2; }

require_java() {
  command -v "$JAVA" >/dev/null ||
    die "no Java found ('$JAVA'); install a JDK 17+ (apt-get install openjdk-17-jre-headless) or set JAVA"
  local major
  major=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [[ -n $major && $major -ge 17 ]] ||
    die "Apache Kafka $KAFKA_VERSION needs Java 17 or newer, '$JAVA' is ${major:-unknown}; set JAVA to a newer one"
}

install() {
  grep -q "<kafka.version>$KAFKA_VERSION</kafka.version>" "$CONF_DIR/pom.xml" ||
    die "deploy/kafka/pom.xml and scripts/kafka.sh name different Kafka versions"
  if [[ -f $KAFKA_HOME/.complete ]]; then return 0; fi
  command -v mvn >/dev/null ||
    die "Maven is needed to fetch Apache Kafka's jars; install it (apt-get install maven)"
  log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  rm -rf "$LIBS"
  local out; out=$(mktemp)
  # shellcheck disable=SC2086 # PAYSTREAM_MAVEN_ARGS is a list of flags (e.g. -o, a mirror)
  if ! mvn -q -B ${PAYSTREAM_MAVEN_ARGS:-} -f "$CONF_DIR/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$out" 2>&1; then
    grep -E '^\[ERROR\]' "$out" | head -5 >&2 || tail -5 "$out" >&2
    rm -f "$out"
    die "could not resolve Apache Kafka $KAFKA_VERSION's jars (above); check the network to Maven Central, or the version in deploy/kafka/pom.xml"
  fi
  rm -f "$out"
  [[ -f $LIBS/kafka_2.13-$KAFKA_VERSION.jar && -f $LIBS/log4j-slf4j-impl-2.24.3.jar ]] ||
    die "the jars in $LIBS are incomplete; remove $KAFKA_HOME and retry"
  touch "$KAFKA_HOME/.complete"
}

classpath() { printf '%s/*' "$LIBS"; }

# The broker's properties: the repo's shared file plus this node's addresses and log dir.
write_config() {
  local config=$1
  {
    cat "$CONF_DIR/server.properties"
    echo
    echo "# Added by scripts/kafka.sh for this node."
    echo "listeners=PLAINTEXT://$BROKER_ADDR,CONTROLLER://$CONTROLLER_ADDR"
    echo "advertised.listeners=PLAINTEXT://$BROKER_ADDR"
    echo "controller.quorum.bootstrap.servers=$CONTROLLER_ADDR"
    echo "log.dirs=$LOG_DIR"
  } >"$config"
}

port_taken() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

preflight() {
  require_java
  install
  local addr
  for addr in "$BROKER_ADDR" "$CONTROLLER_ADDR"; do
    if port_taken "$addr"; then
      die "$addr is already taken by another process; stop it (ss -ltnp | grep :${addr##*:}) or set PAYSTREAM_BROKER_ADDR / PAYSTREAM_CONTROLLER_ADDR"
    fi
  done
  if [[ -d $LOG_DIR && -n $(ls -A "$LOG_DIR") && ! -f $LOG_DIR/meta.properties ]]; then
    die "$LOG_DIR holds files but no meta.properties (corrupt, or not a Kafka log directory); remove it (rm -rf $LOG_DIR) to start an empty broker"
  fi
  return 0
}

run() {
  preflight
  mkdir -p "$LOG_DIR"
  local config="$LOG_DIR/../$(basename "$LOG_DIR").properties"
  write_config "$config"
  local java_opts=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$CONF_DIR/log4j2.properties" "-Dkafka.logs.dir=$LOG_DIR/..")
  # shellcheck disable=SC2206 # KAFKA_HEAP_OPTS is a list of JVM flags
  local heap=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m})
  if [[ ! -f $LOG_DIR/meta.properties ]]; then
    # Format once: a cluster id and this node as the sole voter of the controller quorum.
    local cluster_id
    cluster_id=$("$JAVA" -cp "$(classpath)" "-Dlog4j2.configurationFile=$CONF_DIR/tools-log4j2.properties" \
      kafka.tools.StorageTool random-uuid)
    log "formatting $LOG_DIR (cluster $cluster_id)"
    "$JAVA" -cp "$(classpath)" "-Dlog4j2.configurationFile=$CONF_DIR/tools-log4j2.properties" \
      kafka.tools.StorageTool format --standalone --ignore-formatted -t "$cluster_id" -c "$config" >&2 ||
      die "formatting $LOG_DIR failed (above)"
  fi
  # exec: the supervisor's SIGTERM reaches the JVM, which shuts down cleanly.
  exec "$JAVA" "${heap[@]}" "${java_opts[@]}" -cp "$(classpath)" kafka.Kafka "$config"
}

tool() {
  [[ $# -ge 1 ]] || die "usage: scripts/kafka.sh tool console-consumer|console-producer|topics|consumer-groups|transactions|get-offsets|storage ARGS..."
  local name=$1 class; shift
  case "$name" in
    console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
    topics) class=org.apache.kafka.tools.TopicCommand ;;
    consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    transactions) class=org.apache.kafka.tools.TransactionsCommand ;;
    get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
    storage) class=kafka.tools.StorageTool ;;
    *) die "unknown tool '$name'; one of console-consumer, console-producer, topics, consumer-groups, transactions, get-offsets, storage" ;;
  esac
  require_java
  install
  local args=("$@")
  if [[ $name != storage && " $* " != *" --bootstrap-server "* ]]; then
    args=(--bootstrap-server "$BROKER_ADDR" "${args[@]}")
  fi
  exec "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$CONF_DIR/tools-log4j2.properties" \
    -cp "$(classpath)" "$class" "${args[@]}"
}

case "${1:-}" in
  install) require_java; install ;;
  preflight) preflight ;;
  run) run ;;
  tool) shift; tool "$@" ;;
  *) echo "usage: $0 install|preflight|run|tool NAME ARGS..." >&2; exit 2 ;;
esac
