# paystream — the local stack and the test suite. See README.md.
.PHONY: up down status test bench chaos build fmt lint chart-check

up:      ## build, install and start the local stack; returns when everything is healthy
	scripts/stack.sh up

down:    ## stop everything `make up` started
	scripts/stack.sh down

status:
	scripts/stack.sh status

test:    ## the whole suite against the real stack (starts it if needed); CI runs exactly this
	scripts/test.sh

chart-check:  ## helm lint --strict + kubernetes-validate --strict of the chart's renderings, refused values, README table
	scripts/chart-check.sh

chaos:   ## chaos soak: CHAOS_PAYMENTS (default 100000) payments while services are SIGKILLed, the broker and Postgres restarted; verdict table, non-zero on any miss
	scripts/chaos.sh

bench:   ## release build, micro-benchmarks, the six targets on the bench's own service processes (stack started if needed for broker, Postgres, registry); report in .bench/
	scripts/stack.sh up
	benches/bench.sh

build:
	cargo build --workspace --bins

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
