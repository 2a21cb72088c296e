//! Which Telnyx event ids were published, so that a retried webhook is
//! published once. In Redis (under `redis.key_prefix`, `<prefix>:webhook:<id>`,
//! with a TTL) when `redis.url` is set, else in this process (bounded).
//!
//! An id is never marked before its event is published: the intake first
//! takes a short claim ([`Seen::claim`]), publishes, and only after the
//! broker's confirm marks it done ([`Seen::done`]). A failed publish drops
//! the claim ([`Seen::release`]), so Telnyx's retry publishes it; a claim
//! whose holder died runs out after [`CLAIM`].

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use ::redis::Script;
use tokio::time::Instant;

use crate::redis::Redis;
use crate::store::StoreError;
use crate::store::bounded::Bounded;

/// How long a claim lasts: well over one answer's budget.
pub const CLAIM: Duration = Duration::from_secs(30);
const DONE: &str = "done";

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Not published yet; the claim (with this token) is the caller's.
    Fresh(String),
    /// Published before: a duplicate.
    Done,
    /// Another request holds a live claim on it (it is being published).
    Busy,
}

static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v == 'done' then return 'done' end
if v then return 'busy' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'fresh'
",
    )
});

static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

#[derive(Clone)]
pub struct Seen {
    backend: Backend,
    ttl: Duration,
}

#[derive(Clone)]
enum Backend {
    /// id -> the claim's token or "done".
    Memory(Arc<Mutex<Bounded<String>>>),
    Redis(Redis),
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Seen {
    /// In Redis when there is one, else in memory (at most `max_entries`).
    pub fn new(redis: Option<Redis>, ttl: Duration, max_entries: usize) -> Self {
        let backend = match redis {
            Some(r) => Backend::Redis(r),
            None => Backend::Memory(Arc::new(Mutex::new(Bounded::new(max_entries)))),
        };
        Self { backend, ttl }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub async fn claim(&self, id: &str) -> Result<Claim, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if let Some(v) = m.get_mut(id, now) {
                    return Ok(if v == DONE { Claim::Done } else { Claim::Busy });
                }
                m.insert(id, token.clone(), now + CLAIM);
                Ok(Claim::Fresh(token))
            }
            Backend::Redis(r) => {
                let mut c = r.conn();
                let v: String = CLAIM_SCRIPT
                    .key(r.key("webhook", id))
                    .arg(&token)
                    .arg(ms(CLAIM))
                    .invoke_async(&mut c)
                    .await?;
                match v.as_str() {
                    "fresh" => Ok(Claim::Fresh(token)),
                    "done" => Ok(Claim::Done),
                    "busy" => Ok(Claim::Busy),
                    other => Err(StoreError::Protocol(format!("claim answered {other:?}"))),
                }
            }
        }
    }

    /// The event was published (confirmed): remember it for the TTL.
    pub async fn done(&self, id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                let until = Instant::now() + self.ttl;
                m.insert(id, DONE.to_owned(), until);
                Ok(())
            }
            Backend::Redis(r) => {
                let mut c = r.conn();
                let _: () = ::redis::cmd("SET")
                    .arg(r.key("webhook", id))
                    .arg(DONE)
                    .arg("PX")
                    .arg(ms(self.ttl))
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }

    /// The publish failed: drop the claim `token` holds, so a retry publishes.
    pub async fn release(&self, id: &str, token: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                if m.get_mut(id, Instant::now()).is_some_and(|v| v == token) {
                    m.remove(id);
                }
                Ok(())
            }
            Backend::Redis(r) => {
                let mut c = r.conn();
                let _: i64 = RELEASE_SCRIPT
                    .key(r.key("webhook", id))
                    .arg(token)
                    .invoke_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_claim_then_done_makes_duplicates_and_a_release_lets_a_retry_in() {
        let s = Seen::new(None, Duration::from_secs(60), 100);
        let Claim::Fresh(t1) = s.claim("e1").await.unwrap() else {
            panic!("fresh");
        };
        assert_eq!(s.claim("e1").await.unwrap(), Claim::Busy);
        s.release("e1", "someone else's token").await.unwrap();
        assert_eq!(s.claim("e1").await.unwrap(), Claim::Busy);
        s.release("e1", &t1).await.unwrap();
        let Claim::Fresh(_) = s.claim("e1").await.unwrap() else {
            panic!("fresh after the release");
        };
        s.done("e1").await.unwrap();
        assert_eq!(s.claim("e1").await.unwrap(), Claim::Done);
        assert!(matches!(s.claim("e2").await.unwrap(), Claim::Fresh(_)));
    }

    #[tokio::test]
    async fn memory_is_bounded_oldest_first() {
        let s = Seen::new(None, Duration::from_secs(60), 3);
        for id in ["a", "b", "c", "d"] {
            assert!(matches!(s.claim(id).await.unwrap(), Claim::Fresh(_)));
            s.done(id).await.unwrap();
        }
        assert!(matches!(s.claim("a").await.unwrap(), Claim::Fresh(_)));
        assert_eq!(s.claim("d").await.unwrap(), Claim::Done);
        let Backend::Memory(m) = &s.backend else {
            panic!("memory")
        };
        assert!(m.lock().unwrap().len() <= 3);
    }
}
