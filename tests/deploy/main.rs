//! Checks of the deployment artifacts under `deploy/`, one module per
//! artifact. The real tools judge what they can, offline: `promtool` (rules,
//! rule unit tests, the Prometheus config, every dashboard query),
//! `kubectl kustomize` (every overlay is rendered, and the rendered objects
//! are checked), `docker compose config` (the compose file, normalised), and
//! the worker's own configuration loader (every configuration file and
//! variable the manifests set). What is left to this crate is what those tools
//! cannot know: the manifests agree with each other, with the worker's
//! configuration and with its metrics.
//!
//! The tools are required, not optional: a missing one fails its tests with
//! the command that installs it (`.ci/run` installs all of them;
//! `scripts/test.sh` puts docker compose into `.venv`).
//!
//! `SEND_WORKER_DEPLOY_DIR` points the tests at another deploy/ directory
//! (its parent must hold `config/default.toml` and `docs/runbook.md`).

mod common;
mod compose;
mod contract;
mod grafana;
mod k8s;
mod prometheus;
mod rabbitmq;
