//! The one Redis client of the process, shared by everything that keeps state
//! across replicas: the fleet-shared limiter, duplicate suppression and the
//! webhook dedupe. Configured by `[redis]`; an empty `redis.url` means no
//! Redis, and each user then runs on its documented local fallback.
//!
//! The connection is made lazily and re-made after a failure (redis-rs's
//! `ConnectionManager`), with short timeouts so that a Redis that is down
//! answers with an error quickly and the caller can fall back, instead of
//! stalling the send path.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisSettings;

pub use redis::RedisError;

/// A handle on Redis; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// The client `settings` describe, or `None` when `redis.url` is empty.
    /// No connection is made yet; an invalid URL is an error.
    pub fn from_settings(settings: &RedisSettings) -> Result<Option<Redis>, RedisError> {
        if settings.url.is_empty() {
            return Ok(None);
        }
        let client = redis::Client::open(settings.url.expose())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(settings.command_timeout_ms)))
            // One reconnect attempt inside a command; the callers retry on
            // their own schedule (or fall back) rather than wait here.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Some(Redis {
            conn,
            prefix: settings.key_prefix.clone(),
        }))
    }

    /// A connection to run commands on (a clone of the shared one).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `"{key_prefix}:{kind}:{id}"`: every key this process writes.
    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// One round trip: is Redis there?
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.conn();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }
}
