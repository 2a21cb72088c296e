//! The job store's answers, the same for both backends: the memory one, and
//! the Redis one against the real Redis on 127.0.0.1:6379 (`REDIS_URL` picks
//! another), under a key prefix of its own.

use std::time::Duration;

use super::*;
use crate::config::{RedisSettings, Settings};
use crate::secret::Secret;

fn redis_store(ttl: Duration) -> Store {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let settings = RedisSettings {
        url: Secret::new(url),
        key_prefix: format!("sw-test-{}", uuid::Uuid::new_v4().simple()),
        connect_timeout_ms: 1_000,
        command_timeout_ms: 1_000,
    };
    let redis = crate::redis::Redis::from_settings(&settings)
        .expect("a valid URL")
        .expect("a client");
    Store {
        backend: Backend::Redis(RedisStore::new(redis)),
        ttl,
        metrics: Metrics::new(),
    }
}

fn stores(ttl: Duration) -> Vec<Store> {
    vec![Store::memory(1_000, ttl, Metrics::new()), redis_store(ttl)]
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_new_job_is_leased_then_contended_then_sent_once() {
    for s in stores(Duration::from_secs(60)) {
        let name = s.backend_name();
        assert_eq!(
            s.begin("j1", "a", LONG).await.unwrap(),
            Begin::Fresh { attempts: 0 },
            "{name}"
        );
        // Another worker (another attempt) finds the live lease.
        match s.begin("j1", "b", LONG).await.unwrap() {
            Begin::Leased { left } => assert!(left <= LONG && left > Duration::ZERO, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        let sent = Sent {
            message_id: Some("msg-1".into()),
            sent_at_ms: 1_700_000_000_000,
            parts: Some(2),
            cost: Some("0.008".into()),
            currency: Some("USD".into()),
        };
        s.sent("j1", &sent).await.unwrap();
        assert_eq!(
            s.begin("j1", "c", LONG).await.unwrap(),
            Begin::Sent(sent.clone()),
            "{name}"
        );
        assert_eq!(
            s.job_for_message("msg-1").await.unwrap().as_deref(),
            Some("j1")
        );
        assert_eq!(s.job_for_message("msg-2").await.unwrap(), None);
        let r = s.lookup("j1").await.unwrap().expect("a record");
        assert_eq!((r.state, r.sent), (JobState::Sent, Some(sent)), "{name}");
        // A dead letter never overwrites a send.
        s.dead_lettered("j1", "permanent").await.unwrap();
        assert_eq!(s.lookup("j1").await.unwrap().unwrap().state, JobState::Sent);
        assert_eq!(s.lookup("nope").await.unwrap(), None, "{name}");
    }
}

#[tokio::test]
async fn a_lease_that_runs_out_with_nothing_recorded_is_an_unknown_outcome() {
    for s in stores(Duration::from_secs(60)) {
        let name = s.backend_name();
        assert_eq!(
            s.begin("j2", "a", Duration::from_millis(50)).await.unwrap(),
            Begin::Fresh { attempts: 0 }
        );
        // At least the lease's length later (by any clock).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            s.begin("j2", "b", LONG).await.unwrap(),
            Begin::Unknown { attempts: 0 },
            "{name}"
        );
        // The new lease is b's.
        assert!(matches!(
            s.begin("j2", "c", LONG).await.unwrap(),
            Begin::Leased { .. }
        ));
        let r = s.lookup("j2").await.unwrap().unwrap();
        assert_eq!((r.state, r.unknowns), (JobState::Leased, 1), "{name}");
    }
}

#[tokio::test]
async fn a_released_lease_keeps_the_attempts_and_only_its_owner_releases_it() {
    for s in stores(Duration::from_secs(60)) {
        let name = s.backend_name();
        s.begin("j3", "a", LONG).await.unwrap();
        s.release("j3", "someone-else", 3, false).await.unwrap();
        assert!(
            matches!(
                s.begin("j3", "x", LONG).await.unwrap(),
                Begin::Leased { .. }
            ),
            "{name}: a stranger cannot release it"
        );
        s.release("j3", "a", 2, false).await.unwrap();
        assert_eq!(
            s.begin("j3", "b", LONG).await.unwrap(),
            Begin::Fresh { attempts: 2 },
            "{name}"
        );
        s.release("j3", "b", 1, true).await.unwrap();
        let r = s.lookup("j3").await.unwrap().unwrap();
        assert_eq!(r.attempts, 2, "{name}: attempts never go down");
        assert_eq!(r.unknowns, 1, "{name}: a timed-out attempt is a maybe-sent");
        // Dead-lettered jobs may be replayed (`dlq replay` resets their
        // attempts): a new lease from scratch, not a suppression.
        s.dead_lettered("j3", "attempts-exhausted").await.unwrap();
        let r = s.lookup("j3").await.unwrap().unwrap();
        assert_eq!(r.state, JobState::DeadLettered);
        assert_eq!(r.dead_reason.as_deref(), Some("attempts-exhausted"));
        assert_eq!(
            s.begin("j3", "c", LONG).await.unwrap(),
            Begin::Fresh { attempts: 0 },
            "{name}"
        );
    }
}

#[tokio::test]
async fn delivery_receipts_attach_to_known_jobs_only() {
    for s in stores(Duration::from_secs(60)) {
        let name = s.backend_name();
        let d = Delivery {
            status: "delivered".into(),
            code: None,
            detail: None,
            at_ms: 1_700_000_000_500,
        };
        s.record_delivery("ghost", &d).await.unwrap();
        assert_eq!(s.lookup("ghost").await.unwrap(), None, "{name}");
        s.begin("j4", "a", LONG).await.unwrap();
        s.sent("j4", &Sent::default()).await.unwrap();
        s.record_delivery("j4", &d).await.unwrap();
        assert_eq!(
            s.lookup("j4").await.unwrap().unwrap().delivery,
            Some(d),
            "{name}"
        );
    }
}

#[tokio::test]
async fn records_expire_after_the_ttl() {
    for s in stores(Duration::from_millis(100)) {
        let name = s.backend_name();
        s.begin("j5", "a", LONG).await.unwrap();
        s.sent("j5", &Sent::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.lookup("j5").await.unwrap(), None, "{name}");
        assert_eq!(
            s.begin("j5", "b", LONG).await.unwrap(),
            Begin::Fresh { attempts: 0 },
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_memory_store_is_bounded() {
    let s = MemoryStore::new(100);
    for i in 0..1_000 {
        s.begin(&i.to_string(), "a", LONG, LONG);
    }
    assert!(s.lookup("0").is_none(), "the oldest are forgotten");
    assert!(s.lookup("999").is_some());
    assert!(s.len() <= 100);
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang_and_counts() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let settings = RedisSettings {
        url: Secret::new(format!("redis://127.0.0.1:{port}/0")),
        key_prefix: "sw-test".into(),
        connect_timeout_ms: 200,
        command_timeout_ms: 200,
    };
    let redis = crate::redis::Redis::from_settings(&settings)
        .unwrap()
        .unwrap();
    let metrics = Metrics::new();
    let s = Store {
        backend: Backend::Redis(RedisStore::new(redis)),
        ttl: LONG,
        metrics: metrics.clone(),
    };
    let r = tokio::time::timeout(Duration::from_secs(10), s.begin("j", "a", LONG))
        .await
        .expect("no hang");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let text = metrics.render();
    assert!(
        text.contains(r#"send_worker_dedupe_store_errors_total{op="begin"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("send_worker_dedupe_store_available 0"),
        "{text}"
    );
}

#[test]
fn the_backend_follows_the_settings() {
    let mut s = Settings::load_with_env(None, Vec::<(String, String)>::new()).unwrap();
    let store = Store::from_settings(&s, None, Metrics::new()).unwrap();
    assert_eq!(store.backend_name(), "memory", "the default");
    s.dedupe.backend = crate::config::DedupeBackend::Off;
    let store = Store::from_settings(&s, None, Metrics::new()).unwrap();
    assert!(!store.enabled());
    s.dedupe.backend = crate::config::DedupeBackend::Redis;
    assert!(Store::from_settings(&s, None, Metrics::new()).is_err());
    let err = Settings::load_with_env(
        None,
        vec![(
            "SEND_WORKER__DEDUPE__BACKEND".to_owned(),
            "redis".to_owned(),
        )],
    )
    .unwrap_err();
    assert!(err.to_string().contains("dedupe.backend"), "{err}");
}
