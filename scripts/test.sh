#!/usr/bin/env bash
# The test suite. Needs RabbitMQ on 127.0.0.1:5672 (guest/guest); .ci/run
# starts it when it is not running. Python 3 with `pika` runs the outside
# producer acceptance test; without pika, a virtualenv at .venv gets it.
# Note: the broker-restart step stops and starts the local RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."

# Unit and integration tests (in parallel).
cargo nextest run --no-fail-fast -E 'not binary(broker_restart)'

# The broker-restart test stops and starts RabbitMQ, so it runs alone.
if [ -f tests/broker_restart.rs ]; then
  SEND_WORKER_TEST_BROKER_RESTART=1 cargo nextest run --test broker_restart --run-ignored only --no-fail-fast
fi

# Issue #2's acceptance: an outside producer (Python pika) publishes 2,000 jobs.
if [ -f tests/acceptance/pika_acceptance.py ]; then
  PY=python3
  if ! "$PY" -c 'import pika' 2>/dev/null; then
    # No pika on this machine: a local virtualenv with it.
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -c 'import pika' 2>/dev/null \
      || .venv/bin/pip install -q --disable-pip-version-check pika
    PY=.venv/bin/python
  fi
  "$PY" tests/acceptance/pika_acceptance.py --bin target/debug/send-worker
fi
