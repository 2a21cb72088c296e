//! The worker's shared state, read by `/readyz` and mirrored into metrics.

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
    store: Mutex<Option<String>>,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub broker_connected: bool,
    pub consuming: bool,
    pub draining: bool,
    pub halted: Option<String>,
    pub rate_limit_paused: bool,
    pub circuit: Circuit,
    /// Human-readable reasons the worker is not ready; empty when ready.
    pub reasons: Vec<String>,
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
            store: Mutex::new(None),
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

    /// The job store cannot be reached (`Some(why)`), or can again (`None`).
    /// While it cannot, sending pauses (unless `dedupe.fail_open`) and the
    /// worker is not ready.
    pub fn set_store_unavailable(&self, reason: Option<String>) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn store_unavailable(&self) -> Option<String> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_circuit(&self, c: Circuit) {
        self.circuit.store(c as u8, Ordering::SeqCst);
        self.metrics.circuit_state.set(c as i64);
    }

    /// Record a halt. Returns true if this call changed the state (so the
    /// caller logs the change once, not once per job).
    pub fn halt(&self, reason: String) -> bool {
        let mut h = self.halt.lock().unwrap_or_else(|e| e.into_inner());
        let changed = h.is_none();
        if changed {
            *h = Some(reason);
            self.metrics.halted.set(1);
        }
        changed
    }

    /// Clear a halt. Returns true if the worker was halted.
    pub fn resume(&self) -> bool {
        let mut h = self.halt.lock().unwrap_or_else(|e| e.into_inner());
        let was = h.take().is_some();
        self.metrics.halted.set(0);
        was
    }

    pub fn halted(&self) -> Option<String> {
        self.halt.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
        let mut reasons = Vec::new();
        if !broker_connected {
            reasons.push("not connected to RabbitMQ".to_owned());
        }
        if !consuming {
            reasons.push("not consuming the work queue".to_owned());
        }
        if draining {
            reasons.push("draining for shutdown".to_owned());
        }
        if let Some(h) = &halted {
            reasons.push(format!("halted: {h}"));
        }
        if rate_limit_paused {
            reasons.push("paused by a 429 from the API".to_owned());
        }
        if let Some(why) = self.store_unavailable() {
            reasons.push(format!("job store unavailable: {why}"));
        }
        if circuit != Circuit::Closed {
            reasons.push(format!("circuit breaker {circuit:?}"));
        }
        Readiness {
            ready: reasons.is_empty(),
            broker_connected,
            consuming,
            draining,
            halted,
            rate_limit_paused,
            circuit,
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_reason() {
        let s = WorkerState::new(Metrics::new());
        let r = s.readiness();
        assert!(!r.ready);
        assert_eq!(r.reasons.len(), 2);
        s.set_connected(true);
        s.set_consuming(true);
        assert!(s.readiness().ready);
        assert!(s.halt("401 10009 Authentication failed".into()));
        assert!(!s.halt("again".into()), "a second halt is not a change");
        let r = s.readiness();
        assert!(!r.ready);
        assert_eq!(r.halted.as_deref(), Some("401 10009 Authentication failed"));
        assert!(r.reasons[0].contains("halted"));
        assert!(s.resume());
        assert!(!s.resume());
        s.set_circuit(Circuit::Open);
        assert!(!s.readiness().ready);
    }
}
