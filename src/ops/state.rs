//! The worker's shared state, read by `/readyz` and mirrored into metrics.
//!
//! Readiness answers one question: can THIS pod work? It is ready while its
//! broker session is connected and consuming (and it is not draining), and
//! the job store is available. The configuration is loaded before anything
//! serves, so a serving pod has one. Telnyx's health is deliberately not part
//! of it: an open circuit, a 429 pause and an account-wide halt leave
//! `/readyz` at 200, so that a rollout can ship a fix during an outage. They
//! stay visible in the body (`circuit`, `rate_limit_paused`, `halted`,
//! `degraded`) and in the metrics and alerts. While halted the worker closes
//! its consumer on purpose and probes instead, so "not consuming" is not
//! counted against it then.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use serde::Serialize;

use crate::ops::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Debug)]
pub struct WorkerState {
    metrics: Metrics,
    connected: AtomicBool,
    consuming: AtomicBool,
    draining: AtomicBool,
    circuit: AtomicU8,
    halt: Mutex<Option<String>>,
    paused: AtomicBool,
    store_unavailable: Mutex<Option<String>>,
    degraded: Mutex<BTreeMap<&'static str, String>>,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub broker_connected: bool,
    pub consuming: bool,
    pub draining: bool,
    pub store_available: bool,
    pub halted: Option<String>,
    pub rate_limit_paused: bool,
    pub circuit: Circuit,
    /// Why this pod cannot work; empty when ready.
    pub reasons: Vec<String>,
    /// What is wrong but does not make the pod unready (Telnyx's health, a
    /// fallback in use). Informational only: never changes the status.
    pub degraded: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WorkerState {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            connected: AtomicBool::new(false),
            consuming: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            circuit: AtomicU8::new(Circuit::Closed as u8),
            halt: Mutex::new(None),
            paused: AtomicBool::new(false),
            store_unavailable: Mutex::new(None),
            degraded: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn set_connected(&self, v: bool) {
        self.connected.store(v, Ordering::SeqCst);
        self.metrics.broker_connected.set(i64::from(v));
    }

    pub fn set_consuming(&self, v: bool) {
        self.consuming.store(v, Ordering::SeqCst);
        self.metrics.consuming.set(i64::from(v));
    }

    pub fn set_draining(&self, v: bool) {
        self.draining.store(v, Ordering::SeqCst);
    }

    pub fn set_paused(&self, v: bool) {
        self.paused.store(v, Ordering::SeqCst);
    }

    /// Why the job store cannot be used now, if it cannot.
    pub fn store_unavailable(&self) -> Option<String> {
        lock(&self.store_unavailable).clone()
    }

    pub fn set_circuit(&self, c: Circuit) {
        self.circuit.store(c as u8, Ordering::SeqCst);
        self.metrics.circuit_state.set(c as i64);
    }

    /// `Some(reason)`: the job store cannot be used, and the pod is not
    /// ready (the reason shows in `reasons`). `None`: it is available again.
    /// Mirrored into `send_worker_dedupe_store_available`.
    pub fn set_store_unavailable(&self, reason: Option<String>) {
        self.metrics
            .dedupe_store_available
            .set(i64::from(reason.is_none()));
        *lock(&self.store_unavailable) = reason;
    }

    /// An informational note under `key` (`None` removes it). It shows in
    /// the `/readyz` body's `degraded` list and never affects the status.
    pub fn set_degraded(&self, key: &'static str, note: Option<String>) {
        let mut d = lock(&self.degraded);
        match note {
            Some(n) => {
                d.insert(key, n);
            }
            None => {
                d.remove(key);
            }
        }
    }

    /// Record a halt. Returns true if this call changed the state (so the
    /// caller logs the change once, not once per job).
    pub fn halt(&self, reason: String) -> bool {
        let mut h = lock(&self.halt);
        let changed = h.is_none();
        if changed {
            *h = Some(reason);
            self.metrics.halted.set(1);
        }
        changed
    }

    /// Clear a halt. Returns true if the worker was halted.
    pub fn resume(&self) -> bool {
        let mut h = lock(&self.halt);
        let was = h.take().is_some();
        self.metrics.halted.set(0);
        was
    }

    pub fn halted(&self) -> Option<String> {
        lock(&self.halt).clone()
    }

    pub fn circuit(&self) -> Circuit {
        match self.circuit.load(Ordering::SeqCst) {
            1 => Circuit::HalfOpen,
            2 => Circuit::Open,
            _ => Circuit::Closed,
        }
    }

    pub fn readiness(&self) -> Readiness {
        let broker_connected = self.connected.load(Ordering::SeqCst);
        let consuming = self.consuming.load(Ordering::SeqCst);
        let draining = self.draining.load(Ordering::SeqCst);
        let halted = self.halted();
        let rate_limit_paused = self.paused.load(Ordering::SeqCst);
        let circuit = self.circuit();
        let store = lock(&self.store_unavailable).clone();

        let mut reasons = Vec::new();
        // A halted worker has closed its session on purpose and probes the
        // account from a fresh connection every worker.halt_probe_secs.
        if halted.is_none() {
            if !broker_connected {
                reasons.push("not connected to RabbitMQ".to_owned());
            }
            if !consuming {
                reasons.push("not consuming the work queue".to_owned());
            }
        }
        if draining {
            reasons.push("draining for shutdown".to_owned());
        }
        if let Some(s) = &store {
            reasons.push(format!("job store unavailable: {s}"));
        }

        let mut degraded = Vec::new();
        if let Some(h) = &halted {
            degraded.push(format!(
                "halted by an account-wide API failure ({h}); probing"
            ));
        }
        if rate_limit_paused {
            degraded.push("paused by a 429 from the API".to_owned());
        }
        if circuit != Circuit::Closed {
            let c = match circuit {
                Circuit::Open => "open",
                _ => "half-open",
            };
            degraded.push(format!("circuit breaker {c}: the API looks down"));
        }
        degraded.extend(lock(&self.degraded).values().cloned());

        Readiness {
            ready: reasons.is_empty(),
            broker_connected,
            consuming,
            draining,
            store_available: store.is_none(),
            halted,
            rate_limit_paused,
            circuit,
            reasons,
            degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> WorkerState {
        let s = WorkerState::new(Metrics::new());
        s.set_connected(true);
        s.set_consuming(true);
        s
    }

    #[test]
    fn not_ready_until_connected_and_consuming_and_says_why() {
        let s = WorkerState::new(Metrics::new());
        let r = s.readiness();
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            ["not connected to RabbitMQ", "not consuming the work queue"]
        );
        s.set_connected(true);
        assert_eq!(s.readiness().reasons, ["not consuming the work queue"]);
        s.set_consuming(true);
        let r = s.readiness();
        assert!(r.ready);
        assert!(r.reasons.is_empty() && r.degraded.is_empty(), "{r:?}");
        s.set_draining(true);
        let r = s.readiness();
        assert!(!r.ready);
        assert_eq!(r.reasons, ["draining for shutdown"]);
    }

    /// The decision: Telnyx's health (circuit, 429 pause, account halt) never
    /// makes a pod unready, so a rollout can proceed during an outage. It
    /// shows in the body instead.
    #[test]
    fn telnyx_trouble_leaves_the_pod_ready_and_visible() {
        let s = connected();
        s.set_circuit(Circuit::Open);
        let r = s.readiness();
        assert!(r.ready, "{r:?}");
        assert_eq!(r.circuit, Circuit::Open);
        assert!(
            r.degraded
                .iter()
                .any(|d| d.contains("circuit breaker open"))
        );
        s.set_circuit(Circuit::HalfOpen);
        assert!(s.readiness().ready);
        s.set_circuit(Circuit::Closed);

        s.set_paused(true);
        let r = s.readiness();
        assert!(r.ready && r.rate_limit_paused, "{r:?}");
        assert!(r.degraded.iter().any(|d| d.contains("429")));
        s.set_paused(false);

        assert!(s.halt("401 10009 Authentication failed".into()));
        assert!(!s.halt("again".into()), "a second halt is not a change");
        // The worker closes its session while halted.
        s.set_consuming(false);
        s.set_connected(false);
        let r = s.readiness();
        assert!(r.ready, "a halted pod is ready: {r:?}");
        assert!(r.reasons.is_empty(), "{r:?}");
        assert_eq!(r.halted.as_deref(), Some("401 10009 Authentication failed"));
        assert!(!r.consuming && !r.broker_connected);
        assert!(r.degraded[0].contains("10009"), "{r:?}");
        // Draining still counts while halted.
        s.set_draining(true);
        assert!(!s.readiness().ready);
        s.set_draining(false);
        assert!(s.resume());
        assert!(!s.resume());
        // After the halt, a closed session counts again.
        assert!(!s.readiness().ready);
    }

    #[test]
    fn an_unavailable_store_makes_the_pod_unready_with_the_reason() {
        let m = Metrics::new();
        let s = WorkerState::new(m.clone());
        s.set_connected(true);
        s.set_consuming(true);
        assert_eq!(m.dedupe_store_available.get(), 1);
        s.set_store_unavailable(Some("Redis timed out".into()));
        let r = s.readiness();
        assert!(!r.ready && !r.store_available);
        assert_eq!(r.reasons, ["job store unavailable: Redis timed out"]);
        assert_eq!(m.dedupe_store_available.get(), 0);
        s.set_store_unavailable(None);
        assert!(s.readiness().ready);
        assert_eq!(m.dedupe_store_available.get(), 1);
    }

    #[test]
    fn degraded_notes_are_informational_only() {
        let s = connected();
        s.set_degraded(
            "limiter",
            Some("limiter on local fallback: Redis unreachable".into()),
        );
        let r = s.readiness();
        assert!(r.ready);
        assert_eq!(r.degraded, ["limiter on local fallback: Redis unreachable"]);
        s.set_degraded("limiter", Some("replaced".into()));
        assert_eq!(s.readiness().degraded, ["replaced"]);
        s.set_degraded("limiter", None);
        assert!(s.readiness().degraded.is_empty());
        // A note does not make a pod that is not connected look ready either.
        let s = WorkerState::new(Metrics::new());
        s.set_degraded("limiter", Some("x".into()));
        assert!(!s.readiness().ready);
    }
}
