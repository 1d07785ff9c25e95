#!/usr/bin/env bash
# The local paystream stack, without Docker: Nisshi (Kafka-API broker, in-memory), the Postgres
# already running on the machine, the schema registry, the PSP simulator, the gateway, the
# payment processor, analytics and the notifier (with an SMTP sink, Python aiosmtpd, printing
# every e-mail to .stack/smtp-sink.log). Idempotent: `up` installs and starts only what is
# missing.
#
#   scripts/stack.sh up       install what is missing, build, start, wait until healthy
#   scripts/stack.sh down     stop everything `up` started
#   scripts/stack.sh status   what runs where
#
# Logs and pid files live in $PAYSTREAM_STATE_DIR (default .stack/, git-ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
STATE_DIR="${PAYSTREAM_STATE_DIR:-$ROOT/.stack}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
BIN_DIR="$CARGO_TARGET_DIR/debug"

NISSHI_VERSION=0.7.0
NISSHI_ROOT="$CACHE_DIR/tools"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"

# Endpoints, each overridable.
BROKER_ADDR="${PAYSTREAM_BROKER_ADDR:-127.0.0.1:9092}"
REGISTRY_ADDR="${PAYSTREAM_SCHEMA_REGISTRY_ADDR:-127.0.0.1:8081}"
GATEWAY_ADDR="${PAYSTREAM_GATEWAY_ADDR:-127.0.0.1:8080}"
PROCESSOR_ADDR="${PAYSTREAM_PROCESSOR_ADDR:-127.0.0.1:8082}"
PSP_ADDR="${PAYSTREAM_PSP_ADDR:-127.0.0.1:8090}"
ANALYTICS_ADDR="${PAYSTREAM_ANALYTICS_ADDR:-127.0.0.1:8083}"
NOTIFIER_ADDR="${PAYSTREAM_NOTIFIER_ADDR:-127.0.0.1:8084}"
SMTP_ADDR="${PAYSTREAM_SMTP_ADDR:-127.0.0.1:2525}"
DATABASE_URL="${PAYSTREAM_DATABASE__URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PARTITIONS="${PAYSTREAM_PARTITIONS:-6}"

# What every service reads (see README, "Configuration").
export PAYSTREAM_DATABASE__URL="$DATABASE_URL"
export PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS="$BROKER_ADDR"
export PAYSTREAM_SCHEMA_REGISTRY__URL="http://$REGISTRY_ADDR"
export PAYSTREAM_PSP__URL="http://$PSP_ADDR"
# The notifier mails through the local sink and may call webhook receivers on this machine.
export PAYSTREAM_NOTIFIER__SMTP_HOST="${SMTP_ADDR%:*}"
export PAYSTREAM_NOTIFIER__SMTP_PORT="${SMTP_ADDR##*:}"
export PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS="${PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS:-true}"
# The gateway's admin API token (merchants). A fixed, well-known value for the dev stack only.
if [[ -z ${PAYSTREAM_ADMIN_TOKEN:-} ]]; then
  DEV_ADMIN_TOKEN_DEFAULTED=1
  export PAYSTREAM_ADMIN_TOKEN=dev-admin-token
fi

log() { printf '[stack] %s\n' "$*" >&2; }

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

start() { # start NAME CMD...: start in the background unless already running
  local name=$1; shift
  if running "$name"; then
    log "$name already running (pid $(cat "$STATE_DIR/$name.pid"))"
    return 0
  fi
  log "starting $name"
  # setsid: a service outlives the shell that started it and gets its own process group.
  setsid "$@" >>"$STATE_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/$name.pid"
}

install_broker() {
  if [[ -x $NISSHI_BIN ]] && "$NISSHI_BIN" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
    return 0
  fi
  log "installing the Nisshi broker $NISSHI_VERSION into $NISSHI_ROOT (about 17 minutes on a fresh machine)"
  CARGO_TARGET_DIR="$CACHE_DIR/nisshi-target" cargo install nisshi --version "$NISSHI_VERSION" \
    --locked --ignore-rust-version --no-default-features --features dynostore \
    --root "$NISSHI_ROOT"
}

install_system_packages() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v setsid >/dev/null || missing+=(util-linux)
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build() {
  log "building the services (cargo target dir: $CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --workspace --bins --quiet)
}

start_broker() {
  if running broker; then
    log "broker already running (pid $(cat "$STATE_DIR/broker.pid"))"
  elif tcp_open "$BROKER_ADDR"; then
    log "something already listens on $BROKER_ADDR; using it as the broker"
    return 0
  else
    start broker "$NISSHI_BIN" broker \
      --storage-engine memory://nisshi/ \
      --listener-url "tcp://$BROKER_ADDR" \
      --advertised-listener-url "tcp://$BROKER_ADDR" \
      --group-initial-rebalance-delay 200ms
  fi
  wait_for broker 30 tcp_open "$BROKER_ADDR"
}

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
  mkdir -p "$STATE_DIR"
  local started=$SECONDS
  install_system_packages
  install_broker
  build
  start_broker
  "$BIN_DIR/paystream" migrate >/dev/null
  "$BIN_DIR/paystream" topics create --partitions "$PARTITIONS" >/dev/null
  start_service schema-registry schema-registry "$REGISTRY_ADDR"
  wait_for schema-registry 60 http_ok "http://$REGISTRY_ADDR/health/ready"
  "$BIN_DIR/paystream" schemas register >/dev/null
  start_service psp-simulator psp-simulator "$PSP_ADDR"
  # The local stack serves one anonymous client (benchmarks, demos): no rate limit unless asked.
  PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND="${PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND:-0}" \
    start_service gateway gateway "$GATEWAY_ADDR"
  start_service payment-processor payment-processor "$PROCESSOR_ADDR"
  start_smtp_sink
  start_service analytics analytics "$ANALYTICS_ADDR"
  start_service notifier notifier "$NOTIFIER_ADDR"
  wait_for psp-simulator 60 http_ok "http://$PSP_ADDR/health/ready"
  wait_for gateway 60 http_ok "http://$GATEWAY_ADDR/health/ready"
  wait_for payment-processor 60 http_ok "http://$PROCESSOR_ADDR/health/ready"
  wait_for analytics 60 http_ok "http://$ANALYTICS_ADDR/health/ready"
  wait_for notifier 60 http_ok "http://$NOTIFIER_ADDR/health/ready"
  if [[ -n ${DEV_ADMIN_TOKEN_DEFAULTED:-} ]]; then
    log "PAYSTREAM_ADMIN_TOKEN was unset: the gateway's admin API uses the dev token 'dev-admin-token'"
  fi
  log "stack is up in $((SECONDS - started))s: gateway http://$GATEWAY_ADDR, registry http://$REGISTRY_ADDR, broker $BROKER_ADDR, PSP http://$PSP_ADDR"
}

stop() { # stop NAME: SIGTERM, then SIGKILL after 15 s
  local name=$1 pidfile="$STATE_DIR/$1.pid"
  if ! running "$name"; then
    rm -f "$pidfile"
    return 0
  fi
  local pid; pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 75); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

down() {
  # Consumers first so they commit and leave their groups while the broker is still there.
  for name in notifier analytics payment-processor gateway smtp-sink psp-simulator schema-registry broker; do
    stop "$name"
  done
}

status() {
  for name in broker schema-registry psp-simulator gateway payment-processor analytics notifier smtp-sink; do
    if running "$name"; then echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  install-broker) install_broker ;;
  *) echo "usage: $0 up|down|status|install-broker" >&2; exit 2 ;;
esac
