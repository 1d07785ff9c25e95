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
#       get-offsets, configs, storage; --bootstrap-server is added when not given
#   scripts/kafka.sh tls                make the dev CA and the broker's certificate (idempotent)
#
# Besides PLAINTEXT, the broker listens with TLS as a real cluster would: SASL_SSL (SCRAM-SHA-256,
# SCRAM-SHA-512 and PLAIN) and SSL, with a certificate from a CA made for this stack only
# ($PAYSTREAM_STATE_DIR/tls/ca.pem is what clients trust). SCRAM users are created at run time
# (`scripts/kafka-tool configs --alter --entity-type users ...`); PLAIN has one static user,
# paystream-plain / paystream-plain-secret. Dev credentials: never use them elsewhere.
#
# Environment: PAYSTREAM_BROKER_ADDR (127.0.0.1:9092), PAYSTREAM_CONTROLLER_ADDR
# (127.0.0.1:9093), PAYSTREAM_BROKER_SASL_SSL_ADDR (127.0.0.1:9094), PAYSTREAM_BROKER_SSL_ADDR
# (127.0.0.1:9095; either empty: that listener is off), KAFKA_LOG_DIR (the broker's data,
# default $PAYSTREAM_STATE_DIR/kafka-logs),
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
SASL_SSL_ADDR="${PAYSTREAM_BROKER_SASL_SSL_ADDR-127.0.0.1:9094}"
SSL_ADDR="${PAYSTREAM_BROKER_SSL_ADDR-127.0.0.1:9095}"
TLS_DIR="$STATE_DIR/tls"
# Protects only a throwaway dev key; PKCS12 needs one.
TLS_STORE_PASSWORD=paystream-dev
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

# A CA for this stack and a broker certificate it signs (for 127.0.0.1 and localhost), as a
# PKCS12 keystore the broker reads. Made once; clients trust $TLS_DIR/ca.pem.
tls() {
  [[ -f $TLS_DIR/broker.p12 && -f $TLS_DIR/ca.pem ]] && return 0
  command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
  mkdir -p "$TLS_DIR"
  local d=$TLS_DIR
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=paystream dev CA" \
      -keyout "$d/ca.key" -out "$d/ca.pem" &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$d/broker.key" -out "$d/broker.csr" &&
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$d/broker.ext" &&
      openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 825 -extfile "$d/broker.ext" -out "$d/broker.pem" &&
      openssl pkcs12 -export -in "$d/broker.pem" -inkey "$d/broker.key" -certfile "$d/ca.pem" \
        -name broker -passout "pass:$TLS_STORE_PASSWORD" -out "$d/broker.p12.tmp" &&
      mv "$d/broker.p12.tmp" "$d/broker.p12"
  } >/dev/null 2>"$d/openssl.log" || die "making the dev TLS certificates failed: $(tail -1 "$d/openssl.log")"
  log "made a dev CA and broker certificate in $TLS_DIR"
}

# The broker's properties: the repo's shared file plus this node's addresses and log dir.
write_config() {
  local config=$1
  local listeners="PLAINTEXT://$BROKER_ADDR" protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  [[ -n $SASL_SSL_ADDR ]] && listeners+=",SASL_SSL://$SASL_SSL_ADDR" protocols+=",SASL_SSL:SASL_SSL"
  [[ -n $SSL_ADDR ]] && listeners+=",SSL://$SSL_ADDR" protocols+=",SSL:SSL"
  {
    cat "$CONF_DIR/server.properties"
    echo
    echo "# Added by scripts/kafka.sh for this node."
    echo "listeners=$listeners,CONTROLLER://$CONTROLLER_ADDR"
    echo "advertised.listeners=$listeners"
    echo "listener.security.protocol.map=$protocols"
    echo "controller.quorum.bootstrap.servers=$CONTROLLER_ADDR"
    echo "log.dirs=$LOG_DIR"
    if [[ -n $SASL_SSL_ADDR$SSL_ADDR ]]; then
      echo "ssl.keystore.type=PKCS12"
      echo "ssl.keystore.location=$TLS_DIR/broker.p12"
      echo "ssl.keystore.password=$TLS_STORE_PASSWORD"
      echo "ssl.client.auth=none"
    fi
    if [[ -n $SASL_SSL_ADDR ]]; then
      echo "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN"
      echo "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      echo "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_paystream-plain=\"paystream-plain-secret\";"
    fi
  } >"$config"
}

port_taken() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

preflight() {
  require_java
  install
  local addr
  for addr in "$BROKER_ADDR" "$CONTROLLER_ADDR" $SASL_SSL_ADDR $SSL_ADDR; do
    if port_taken "$addr"; then
      die "$addr is already taken by another process; stop it (ss -ltnp | grep :${addr##*:}) or set PAYSTREAM_BROKER_ADDR / PAYSTREAM_CONTROLLER_ADDR / PAYSTREAM_BROKER_SASL_SSL_ADDR / PAYSTREAM_BROKER_SSL_ADDR"
    fi
  done
  if [[ -d $LOG_DIR && -n $(ls -A "$LOG_DIR") && ! -f $LOG_DIR/meta.properties ]]; then
    die "$LOG_DIR holds files but no meta.properties (corrupt, or not a Kafka log directory); remove it (rm -rf $LOG_DIR) to start an empty broker"
  fi
  return 0
}

run() {
  preflight
  [[ -z $SASL_SSL_ADDR$SSL_ADDR ]] || tls
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
  [[ $# -ge 1 ]] || die "usage: scripts/kafka.sh tool console-consumer|console-producer|topics|consumer-groups|transactions|get-offsets|configs|storage ARGS..."
  local name=$1 class; shift
  case "$name" in
    console-consumer) class=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer) class=org.apache.kafka.tools.ConsoleProducer ;;
    topics) class=org.apache.kafka.tools.TopicCommand ;;
    consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    transactions) class=org.apache.kafka.tools.TransactionsCommand ;;
    get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
    configs) class=kafka.admin.ConfigCommand ;;
    storage) class=kafka.tools.StorageTool ;;
    *) die "unknown tool '$name'; one of console-consumer, console-producer, topics, consumer-groups, transactions, get-offsets, configs, storage" ;;
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
  tls) tls ;;
  *) echo "usage: $0 install|preflight|run|tool NAME ARGS...|tls" >&2; exit 2 ;;
esac
