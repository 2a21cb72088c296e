#!/usr/bin/env bash
# The producer examples in examples/, end to end against the local RabbitMQ
# (127.0.0.1:5672): tests/examples.rs runs each example as a child process on
# a fresh sandbox topology and checks that a worker (with the built-in
# simulator) sends exactly the jobs it published, and that an unroutable or
# nacked publish makes it fail after its retries.
#
# Python: a virtualenv at .venv with pika (examples/python/requirements.txt).
# Node: `npm ci` in examples/node (package-lock.json). Both are required: a
# missing python3 or node fails this script.
# Go: built and vetted where a Go toolchain is installed. Offline, the
# module comes from Debian's golang-github-rabbitmq-amqp091-go-dev
# (/usr/share/gocode) through a replace directive in a temporary modfile;
# without a toolchain, or without the module, a notice says the Go example
# was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

filter="test(python_) | test(node_)"
names=(python_ node_)

# Python with pika.
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv .venv
if ! "$PY" -c 'import pika' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -r examples/python/requirements.txt
fi
export EXAMPLES_PYTHON="$PWD/$PY"

# Node with amqplib.
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
EXAMPLES_NODE="$(command -v node)"
export EXAMPLES_NODE

# Go with amqp091-go.
go_skip() {
  echo "NOTICE: the Go example (examples/go) was NOT built, vetted or run: $*"
}
DEBIAN_AMQP091=/usr/share/gocode/src/github.com/rabbitmq/amqp091-go
if ! command -v go >/dev/null 2>&1; then
  go_skip "no Go toolchain (apt-get install golang-go golang-github-rabbitmq-amqp091-go-dev)"
else
  gotmp="$(mktemp -d)"
  trap 'rm -rf "$gotmp"' EXIT
  cp examples/go/go.mod "$gotmp/go.mod"
  [ -f examples/go/go.sum ] && cp examples/go/go.sum "$gotmp/go.sum" || touch "$gotmp/go.sum"
  go_ready=1
  if [ -f "$DEBIAN_AMQP091/go.mod" ]; then
    # Offline: the module from Debian's package, no proxy.
    echo "replace github.com/rabbitmq/amqp091-go => $DEBIAN_AMQP091" >> "$gotmp/go.mod"
    export GOPROXY=off GOFLAGS=-mod=mod
  elif ! (cd examples/go && timeout 60 go mod download -modfile="$gotmp/go.mod" >/dev/null 2>&1); then
    go_ready=0
    go_skip "github.com/rabbitmq/amqp091-go cannot be downloaded here and Debian's copy is not installed"
  fi
  if [ "$go_ready" = 1 ]; then
    unformatted="$(gofmt -l examples/go)"
    if [ -n "$unformatted" ]; then
      echo "gofmt would change: $unformatted" >&2
      exit 1
    fi
    mkdir -p target/examples
    (cd examples/go \
      && go vet -modfile="$gotmp/go.mod" . \
      && go build -modfile="$gotmp/go.mod" -o ../../target/examples/go-producer .)
    echo "the Go example builds and passes go vet ($(go version))"
    export EXAMPLES_GO_BIN="$PWD/target/examples/go-producer"
    filter="$filter | test(go_)"
    names+=(go_)
  fi
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --test examples --run-ignored only --no-fail-fast -E "$filter"
else
  cargo test --test examples -- --ignored "${names[@]}"
fi
