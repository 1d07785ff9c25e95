#!/usr/bin/env bash
# The local paystream stack, without Docker: Apache Kafka (one KRaft node, jars from Maven
# Central, scripts/kafka.sh), PostgreSQL (Debian's, or one already answering on the configured
# address), the schema registry, the PSP simulator, the gateway, the payment processor,
# analytics and the notifier (with an SMTP sink, Python aiosmtpd, printing every e-mail to
# .stack/smtp-sink.log), and Jaeger v2 (built from the Go module proxy, scripts/jaeger.sh) that
# every service exports its spans to. Idempotent: `up` installs and starts only what is missing.
#
#   scripts/stack.sh up       install what is missing, build, start, wait until healthy
#   scripts/stack.sh down     stop everything `up` started
#   scripts/stack.sh status   what runs where, and how often the supervisor restarted it
#
# Every process `up` starts (the broker included) runs under a supervisor that restarts it when
# it exits, with exponential backoff (1 s doubling to 30 s, back to 1 s after a minute up), as
# Kubernetes would: our services exit on a fatal Kafka error by design.
# Logs, pid files and restart counts live in $PAYSTREAM_STATE_DIR (default .stack/,
# git-ignored); so does the broker's data (kafka-logs/): topics and offsets survive a restart.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
STATE_DIR="${PAYSTREAM_STATE_DIR:-$ROOT/.stack}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
BIN_DIR="$CARGO_TARGET_DIR/debug"

# Endpoints, each overridable.
BROKER_ADDR="${PAYSTREAM_BROKER_ADDR:-127.0.0.1:9092}"
CONTROLLER_ADDR="${PAYSTREAM_CONTROLLER_ADDR:-127.0.0.1:9093}"
REGISTRY_ADDR="${PAYSTREAM_SCHEMA_REGISTRY_ADDR:-127.0.0.1:8081}"
GATEWAY_ADDR="${PAYSTREAM_GATEWAY_ADDR:-127.0.0.1:8080}"
PROCESSOR_ADDR="${PAYSTREAM_PROCESSOR_ADDR:-127.0.0.1:8082}"
PSP_ADDR="${PAYSTREAM_PSP_ADDR:-127.0.0.1:8090}"
ANALYTICS_ADDR="${PAYSTREAM_ANALYTICS_ADDR:-127.0.0.1:8083}"
NOTIFIER_ADDR="${PAYSTREAM_NOTIFIER_ADDR:-127.0.0.1:8084}"
SMTP_ADDR="${PAYSTREAM_SMTP_ADDR:-127.0.0.1:2525}"
DATABASE_URL="${PAYSTREAM_DATABASE__URL:-postgres://postgres@127.0.0.1:5432/postgres}"
JAEGER_OTLP_GRPC_ADDR="${PAYSTREAM_JAEGER_OTLP_GRPC_ADDR:-127.0.0.1:4317}"
JAEGER_OTLP_HTTP_ADDR="${PAYSTREAM_JAEGER_OTLP_HTTP_ADDR:-127.0.0.1:4318}"
JAEGER_QUERY_ADDR="${PAYSTREAM_JAEGER_QUERY_ADDR:-127.0.0.1:16686}"
PARTITIONS="${PAYSTREAM_PARTITIONS:-6}"

# What every service reads (see README, "Configuration").
export PAYSTREAM_DATABASE__URL="$DATABASE_URL"
export PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS="$BROKER_ADDR"
export PAYSTREAM_SCHEMA_REGISTRY__URL="http://$REGISTRY_ADDR"
# One service's own settings go to that service only (see up): a service warns about keys it
# does not read.
# Every service exports its spans to the stack's Jaeger (OTLP over HTTP) unless told otherwise;
# a short batch delay makes a payment's trace queryable within a second.
export OTEL_EXPORTER_OTLP_ENDPOINT="${OTEL_EXPORTER_OTLP_ENDPOINT:-http://$JAEGER_OTLP_HTTP_ADDR}"
export OTEL_BSP_SCHEDULE_DELAY="${OTEL_BSP_SCHEDULE_DELAY:-500}"
# What scripts/kafka.sh reads.
export PAYSTREAM_STATE_DIR="$STATE_DIR" PAYSTREAM_CACHE_DIR="$CACHE_DIR"
export PAYSTREAM_BROKER_ADDR="$BROKER_ADDR" PAYSTREAM_CONTROLLER_ADDR="$CONTROLLER_ADDR"
# What scripts/jaeger.sh reads.
export PAYSTREAM_JAEGER_OTLP_GRPC_ADDR="$JAEGER_OTLP_GRPC_ADDR" PAYSTREAM_JAEGER_OTLP_HTTP_ADDR="$JAEGER_OTLP_HTTP_ADDR"
export PAYSTREAM_JAEGER_QUERY_ADDR="$JAEGER_QUERY_ADDR"
# The gateway's admin API token (merchants). A fixed, well-known value for the dev stack only.
if [[ -z ${PAYSTREAM_ADMIN_TOKEN:-} ]]; then
  DEV_ADMIN_TOKEN_DEFAULTED=1
  export PAYSTREAM_ADMIN_TOKEN=dev-admin-token
fi
# The key sealing merchants' webhook secrets at rest (secrets.encryption_key), read by the
# gateway and the notifier only (given to them in up). A fixed, well-known key for the dev stack
# only: base64 of `dev-only-paystream-secrets-key!!`.
if [[ -z ${PAYSTREAM_SECRETS__ENCRYPTION_KEY:-} ]]; then
  DEV_ENCRYPTION_KEY_DEFAULTED=1
fi
SECRETS_ENCRYPTION_KEY="${PAYSTREAM_SECRETS__ENCRYPTION_KEY:-ZGV2LW9ubHktcGF5c3RyZWFtLXNlY3JldHMta2V5ISE=}"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

host_of() { echo "${1%:*}"; }
port_of() { echo "${1##*:}"; }

tcp_open() { (exec 3<>"/dev/tcp/$(host_of "$1")/$(port_of "$1")") 2>/dev/null; }

wait_for() { # wait_for NAME SECONDS CHECK...
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      log "$name did not become ready within ${seconds}s; last log lines:"
      tail -n 30 "$STATE_DIR/$name.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

running() { # running NAME: its pid file names a live (not zombie) process
  local pidfile="$STATE_DIR/$1.pid" state
  [[ -f $pidfile ]] || return 1
  state=$(ps -o stat= -p "$(cat "$pidfile")" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

start() { # start NAME CMD...: start under the supervisor unless already running
  local name=$1; shift
  if running "$name"; then
    log "$name already running (pid $(cat "$STATE_DIR/$name.pid"))"
    return 0
  fi
  log "starting $name"
  rm -f "$STATE_DIR/$name.restarts"
  # setsid: a service outlives the shell that started it and gets its own process group.
  setsid "$ROOT/scripts/stack.sh" supervise "$name" "$@" >>"$STATE_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/$name.pid"
}

# supervise NAME CMD...: run CMD and restart it whenever it exits, until SIGTERM, which it passes
# on to CMD. NAME.pid is the supervisor, NAME.child.pid the running CMD, NAME.restarts the count.
supervise() {
  local name=$1; shift
  local restarts=0 backoff=1 child='' status started stopping=''
  trap 'stopping=1; [[ -n $child ]] && kill -TERM "$child" 2>/dev/null' TERM INT
  while :; do
    started=$SECONDS
    "$@" &
    child=$!
    echo "$child" >"$STATE_DIR/$name.child.pid"
    # `wait` returns early when the trap runs: wait on until the child is really gone.
    status=0
    wait "$child" || status=$?
    while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
    rm -f "$STATE_DIR/$name.child.pid"
    [[ -n $stopping ]] && exit 0
    ((SECONDS - started >= 60)) && backoff=1
    restarts=$((restarts + 1))
    echo "$restarts" >"$STATE_DIR/$name.restarts"
    printf '[supervisor] %s %s exited with status %s; restart %s in %ss\n' \
      "$(date -u +%FT%TZ)" "$name" "$status" "$restarts" "$backoff"
    sleep "$backoff" &
    wait $! || true
    [[ -n $stopping ]] && exit 0
    backoff=$((backoff * 2 > 30 ? 30 : backoff * 2))
  done
}

install_system_packages() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v setsid >/dev/null || missing+=(util-linux)
  command -v runuser >/dev/null || missing+=(util-linux)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  # librdkafka is built with OpenSSL (TLS, SASL SCRAM): headers and pkg-config for the build,
  # openssl for the SASL_SSL test's CA.
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}), see README, Prerequisites"
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
}

install_broker() { "$ROOT/scripts/kafka.sh" install || exit 1; }

install_jaeger() { "$ROOT/scripts/jaeger.sh" install || exit 1; }

build() {
  log "building the services (cargo target dir: $CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --workspace --bins --quiet)
}

# ---- Postgres ----------------------------------------------------------------------------
# A server already answering on the configured address is used as it is (a user's own).
# Otherwise Debian's PostgreSQL is installed if missing, and a cluster of the stack's own is
# created (trust for local connections, so the documented passwordless URL works) and started.
# `down` stops only a server that `up` started.
PG_HOST=$(sed -E 's#^[a-z]+://([^@/]*@)?([^:/]+).*#\2#' <<<"$DATABASE_URL")
PG_PORT=$(sed -nE 's#^[a-z]+://([^@/]*@)?[^:/]+:([0-9]+).*#\2#p' <<<"$DATABASE_URL")
PG_PORT=${PG_PORT:-5432}

pg_bin_dir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $dir && -x $dir/initdb ]] && echo "$dir"
}

pg_data_dir() { # outside the repo; as root, where the postgres user can reach it
  if ((EUID == 0)); then
    echo "${PAYSTREAM_PG_DATA:-/var/lib/postgresql/paystream-$1}"
  else
    echo "${PAYSTREAM_PG_DATA:-$CACHE_DIR/postgres-$1}"
  fi
}

# initdb and postgres refuse to run as root.
as_pg_user() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  if tcp_open "$PG_HOST:$PG_PORT"; then
    [[ -f $STATE_DIR/postgres.started ]] || log "Postgres already answers on $PG_HOST:$PG_PORT; using it"
    return 0
  fi
  local bin; bin=$(pg_bin_dir) || true
  if [[ -z $bin ]]; then
    ((EUID == 0)) || die "no PostgreSQL server is installed and none answers on $PG_HOST:$PG_PORT; install one or point PAYSTREAM_DATABASE__URL at yours (README, Prerequisites)"
    log "installing Debian's PostgreSQL"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null ||
      die "apt-get install postgresql failed"
    bin=$(pg_bin_dir) || die "PostgreSQL was installed but no initdb is under /usr/lib/postgresql"
  fi
  local version data
  version=$(basename "$(dirname "$bin")")
  data=$(pg_data_dir "$version")
  if [[ ! -f $data/PG_VERSION ]]; then
    log "creating the stack's Postgres cluster in $data"
    mkdir -p "$data"
    if ((EUID == 0)); then chown postgres: "$data"; fi
    as_pg_user "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 >/dev/null ||
      die "initdb $data failed"
  fi
  log "starting Postgres $version on $PG_HOST:$PG_PORT (data: $data)"
  # Sockets in the data dir: /var/run/postgresql may not exist or be writable.
  as_pg_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start \
    -o "-c listen_addresses=$PG_HOST -p $PG_PORT -k $data -c max_connections=400 -c shared_buffers=256MB" \
    >/dev/null || die "Postgres did not start; see $data/server.log"
  echo "$bin/pg_ctl -D $data" >"$STATE_DIR/postgres.started"
}

stop_postgres() {
  [[ -f $STATE_DIR/postgres.started ]] || return 0
  log "stopping Postgres (started by the stack)"
  # shellcheck disable=SC2046 # the file holds "…/pg_ctl -D DIR"
  as_pg_user $(cat "$STATE_DIR/postgres.started") -m fast -w stop >/dev/null 2>&1 || true
  rm -f "$STATE_DIR/postgres.started"
}

# ---- the broker --------------------------------------------------------------------------
start_broker() {
  BROKER_STARTING=''
  if running broker; then
    log "broker already running (pid $(cat "$STATE_DIR/broker.pid"))"
  elif tcp_open "$BROKER_ADDR"; then
    # A user's own broker is fine; anything else on the port is a clash to name, not wait on.
    timeout 15 "$ROOT/scripts/kafka-tool" topics --bootstrap-server "$BROKER_ADDR" --list >/dev/null 2>&1 ||
      die "$BROKER_ADDR is taken by a process that does not answer as a Kafka broker; stop it (ss -ltnp | grep ${BROKER_ADDR##*:}) or set PAYSTREAM_BROKER_ADDR"
    log "a Kafka broker already answers on $BROKER_ADDR; using it"
    return 0
  else
    # Java, the jars, free ports and a sound log directory, checked before the supervisor
    # starts: a broker that can never start stops `up` with kafka.sh's one-line reason.
    "$ROOT/scripts/kafka.sh" preflight || exit 1
    start broker "$ROOT/scripts/kafka.sh" run
    BROKER_STARTING=1
  fi
  wait_for broker 120 broker_ready
}

# stop_if_exited_starting NAME STARTING: a process this run of `up` started (STARTING set) that
# exited while `up` waited for it stops `up` with its last log lines (not stack-trace lines),
# instead of a restart loop. One `up` found running may have been restarted long ago: no
# start-up failure.
stop_if_exited_starting() {
  local name=$1 starting=$2
  if [[ -n $starting && -f $STATE_DIR/$name.restarts ]]; then
    log "$name exited during start-up; last lines of $STATE_DIR/$name.log:"
    grep -v '^\s' "$STATE_DIR/$name.log" | tail -n 5 >&2
    stop "$name"
    exit 1
  fi
}

# The broker answers metadata requests (its port opens before the node is unfenced). A broker
# that exits during start-up (its log says why) stops `up` instead of a restart loop; one this
# run did not start may have been restarted before, which is no start-up failure.
broker_ready() {
  stop_if_exited_starting broker "$BROKER_STARTING"
  tcp_open "$BROKER_ADDR" && "$ROOT/scripts/kafka-tool" topics --list >/dev/null 2>&1
}

# ---- Jaeger ------------------------------------------------------------------------------
# Jaeger v2 with in-memory storage (deploy/jaeger/config.yaml): OTLP gRPC and HTTP in, the
# query API (no UI assets in this build) out, all on 127.0.0.1. Started before the services so
# their first spans have somewhere to go.
start_jaeger() {
  JAEGER_STARTING=''
  if running jaeger; then
    log "jaeger already running (pid $(cat "$STATE_DIR/jaeger.pid"))"
  elif http_ok "http://$JAEGER_QUERY_ADDR/api/services" && tcp_open "$JAEGER_OTLP_HTTP_ADDR"; then
    log "a Jaeger already answers on http://$JAEGER_QUERY_ADDR; using it"
    return 0
  else
    # The binary and free ports, checked before the supervisor starts: one line on failure.
    "$ROOT/scripts/jaeger.sh" preflight || exit 1
    start jaeger "$ROOT/scripts/jaeger.sh" run
    JAEGER_STARTING=1
  fi
  wait_for jaeger 60 jaeger_ready
}

# Both OTLP receivers listen and the query API answers. A Jaeger that exits during start-up (a
# bad configuration, say) stops `up` instead of a restart loop; one already running is only
# waited for (its supervisor may have restarted it long ago).
jaeger_ready() {
  stop_if_exited_starting jaeger "$JAEGER_STARTING"
  tcp_open "$JAEGER_OTLP_GRPC_ADDR" && tcp_open "$JAEGER_OTLP_HTTP_ADDR" &&
    http_ok "http://$JAEGER_QUERY_ADDR/api/services"
}

# ---- the services ------------------------------------------------------------------------
start_service() { # start_service NAME BINARY ADDR
  local name=$1 binary=$2 addr=$3
  if ! running "$name" && http_ok "http://$addr/health/live"; then
    log "$name: something already serves http://$addr; using it"
    return 0
  fi
  PAYSTREAM_HTTP__HOST="$(host_of "$addr")" PAYSTREAM_HTTP__PORT="$(port_of "$addr")" \
    start "$name" "$BIN_DIR/$binary"
}

start_smtp_sink() {
  if ! running smtp-sink && tcp_open "$SMTP_ADDR"; then
    log "smtp-sink: something already listens on $SMTP_ADDR; using it"
    return 0
  fi
  local python; python=$("$ROOT/scripts/python-env.sh")
  start smtp-sink "$python" -u -m aiosmtpd -n -c aiosmtpd.handlers.Debugging -l "$SMTP_ADDR"
  wait_for smtp-sink 30 tcp_open "$SMTP_ADDR"
}

up() {
  # Given to the gateway and the notifier only, below. Not unset at the top of this script:
  # each supervisor runs this script again and must pass the key it was given on.
  unset PAYSTREAM_SECRETS__ENCRYPTION_KEY
  mkdir -p "$STATE_DIR"
  local started=$SECONDS
  install_system_packages
  install_broker
  install_jaeger
  build
  start_postgres
  start_broker
  start_jaeger
  "$BIN_DIR/paystream" migrate >/dev/null
  "$BIN_DIR/paystream" topics create --partitions "$PARTITIONS" --retry-partitions 3 >/dev/null
  start_service schema-registry schema-registry "$REGISTRY_ADDR"
  wait_for schema-registry 60 http_ok "http://$REGISTRY_ADDR/health/ready"
  "$BIN_DIR/paystream" schemas register >/dev/null
  start_service psp-simulator psp-simulator "$PSP_ADDR"
  # The local stack serves one anonymous client (benchmarks, demos): no rate limit unless asked.
  PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND="${PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND:-0}" \
    PAYSTREAM_SECRETS__ENCRYPTION_KEY="$SECRETS_ENCRYPTION_KEY" \
    start_service gateway gateway "$GATEWAY_ADDR"
  PAYSTREAM_PSP__URL="http://$PSP_ADDR" start_service payment-processor payment-processor "$PROCESSOR_ADDR"
  start_smtp_sink
  start_service analytics analytics "$ANALYTICS_ADDR"
  # The notifier mails through the local sink and may call webhook receivers on this machine.
  PAYSTREAM_NOTIFIER__SMTP_HOST="${SMTP_ADDR%:*}" PAYSTREAM_NOTIFIER__SMTP_PORT="${SMTP_ADDR##*:}" \
    PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS="${PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS:-true}" \
    PAYSTREAM_SECRETS__ENCRYPTION_KEY="$SECRETS_ENCRYPTION_KEY" \
    start_service notifier notifier "$NOTIFIER_ADDR"
  wait_for psp-simulator 60 http_ok "http://$PSP_ADDR/health/ready"
  wait_for gateway 60 http_ok "http://$GATEWAY_ADDR/health/ready"
  wait_for payment-processor 60 http_ok "http://$PROCESSOR_ADDR/health/ready"
  wait_for analytics 60 http_ok "http://$ANALYTICS_ADDR/health/ready"
  wait_for notifier 60 http_ok "http://$NOTIFIER_ADDR/health/ready"
  if [[ -n ${DEV_ADMIN_TOKEN_DEFAULTED:-} ]]; then
    log "PAYSTREAM_ADMIN_TOKEN was unset: the gateway's admin API uses the dev token 'dev-admin-token'"
  fi
  if [[ -n ${DEV_ENCRYPTION_KEY_DEFAULTED:-} ]]; then
    log "PAYSTREAM_SECRETS__ENCRYPTION_KEY was unset: webhook secrets are sealed with the well-known dev key"
  fi
  log "stack is up in $((SECONDS - started))s: gateway http://$GATEWAY_ADDR, registry http://$REGISTRY_ADDR, broker $BROKER_ADDR (Apache Kafka), Postgres $PG_HOST:$PG_PORT, PSP http://$PSP_ADDR, Jaeger query API http://$JAEGER_QUERY_ADDR (paystream trace <payment id>)"
}

stop() { # stop NAME: SIGTERM to its supervisor (which passes it on), SIGKILL after 30 s
  local name=$1 pidfile="$STATE_DIR/$1.pid"
  if ! running "$name"; then
    rm -f "$pidfile" "$STATE_DIR/$name.child.pid"
    return 0
  fi
  local pid; pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  # The whole process group: the supervisor and whatever it still runs.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile" "$STATE_DIR/$name.child.pid"
}

down() {
  # Consumers first so they commit and leave their groups while the broker is still there;
  # Jaeger last, so it receives the spans the others flush on their way out.
  for name in notifier analytics payment-processor gateway smtp-sink psp-simulator schema-registry broker jaeger; do
    stop "$name"
  done
  stop_postgres
}

status() {
  local name restarts
  printf '%-18s %-8s %-8s %s\n' SERVICE STATE PID RESTARTS
  for name in broker jaeger schema-registry psp-simulator gateway payment-processor analytics notifier smtp-sink; do
    restarts=$(cat "$STATE_DIR/$name.restarts" 2>/dev/null || echo 0)
    if running "$name"; then
      printf '%-18s %-8s %-8s %s\n' "$name" running "$(cat "$STATE_DIR/$name.child.pid" 2>/dev/null || echo -)" "$restarts"
    else
      printf '%-18s %-8s %-8s %s\n' "$name" stopped - "$restarts"
    fi
  done
  if [[ -f $STATE_DIR/postgres.started ]]; then
    printf '%-18s %-8s %s\n' postgres running "(started by the stack, $PG_HOST:$PG_PORT)"
  elif tcp_open "$PG_HOST:$PG_PORT"; then
    printf '%-18s %-8s %s\n' postgres running "(not the stack's, $PG_HOST:$PG_PORT)"
  else
    printf '%-18s %-8s\n' postgres stopped
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  install-broker) install_broker ;;
  install-jaeger) install_jaeger ;;
  supervise) shift; supervise "$@" ;;
  *) echo "usage: $0 up|down|status|install-broker|install-jaeger" >&2; exit 2 ;;
esac
