//! The job store on Redis, shared by every replica. One hash per job at
//! `<prefix>:job:<id>` (expiring after `dedupe.ttl_secs`), and the message id
//! → job id correlation at `<prefix>:msg:<message id>`. Each decision is one
//! Lua script, so two workers never both take a job: the lease's clock is
//! Redis's own (`TIME`), not the replicas'.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;

use super::{Begin, Delivery, JobRecord, JobState, Sent, StoreError, now_ms};
use crate::redis::Redis;

static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'lease_until', 'attempts', 'message_id',
  'sent_at', 'parts', 'cost', 'currency')
local state = h[1]
if state == 'sent' then
  return {'sent', h[4] or '', h[5] or '0', h[6] or '', h[7] or '', h[8] or ''}
end
local attempts = h[3] or '0'
if state == 'dead_lettered' then
  -- Replayed from the DLQ: it starts over.
  attempts = '0'
end
local verdict = 'fresh'
if state == 'leased' then
  local lease_until = tonumber(h[2]) or 0
  if lease_until > now then
    return {'leased', tostring(lease_until - now)}
  end
  verdict = 'unknown'
  redis.call('HINCRBY', KEYS[1], 'unknowns', 1)
end
redis.call('HSET', KEYS[1], 'state', 'leased', 'owner', ARGV[1],
  'lease_until', tostring(now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {verdict, attempts}
",
    )
});

static SENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], 'state', 'sent', 'message_id', ARGV[2], 'sent_at', ARGV[3],
  'parts', ARGV[4], 'cost', ARGV[5], 'currency', ARGV[6])
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[1])
end
return 1
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local h = redis.call('HMGET', KEYS[1], 'state', 'owner', 'attempts')
if h[1] == 'leased' and h[2] == ARGV[1] then
  local attempts = math.max(tonumber(h[3]) or 0, tonumber(ARGV[2]))
  redis.call('HSET', KEYS[1], 'state', 'released', 'attempts', tostring(attempts))
  if ARGV[4] == '1' then
    redis.call('HINCRBY', KEYS[1], 'unknowns', 1)
  end
  redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
",
    )
});

static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'state') == 'sent' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'dead_lettered', 'dead_reason', ARGV[1], 'dead_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

static DELIVERY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'delivery_status', ARGV[1], 'delivery_code', ARGV[2],
  'delivery_detail', ARGV[3], 'delivery_at', ARGV[4])
return 1
",
    )
});

#[derive(Debug, Clone)]
pub struct RedisStore {
    redis: Redis,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl RedisStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn job_key(&self, id: &str) -> String {
        self.redis.key("job", id)
    }

    fn msg_key(&self, message_id: &str) -> String {
        self.redis.key("msg", message_id)
    }

    pub async fn begin(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let mut c = self.redis.conn();
        let v: Vec<String> = BEGIN
            .key(self.job_key(id))
            .arg(owner)
            .arg(ms(lease))
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await?;
        let field = |i: usize| v.get(i).map(String::as_str).unwrap_or("");
        let attempts = || field(1).parse::<u32>().unwrap_or(0);
        match field(0) {
            "fresh" => Ok(Begin::Fresh {
                attempts: attempts(),
            }),
            "unknown" => Ok(Begin::Unknown {
                attempts: attempts(),
            }),
            "leased" => Ok(Begin::Leased {
                left: Duration::from_millis(field(1).parse().unwrap_or(1_000)),
            }),
            "sent" => Ok(Begin::Sent(Sent {
                message_id: opt(field(1)),
                sent_at_ms: field(2).parse().unwrap_or(0),
                parts: field(3).parse().ok(),
                cost: opt(field(4)),
                currency: opt(field(5)),
            })),
            other => Err(StoreError::Protocol(format!("begin answered {other:?}"))),
        }
    }

    pub async fn sent(&self, id: &str, sent: &Sent, ttl: Duration) -> Result<(), StoreError> {
        let mut c = self.redis.conn();
        let message_id = sent.message_id.clone().unwrap_or_default();
        let _: i64 = SENT
            .key(self.job_key(id))
            .key(self.msg_key(&message_id))
            .arg(ms(ttl))
            .arg(&message_id)
            .arg(sent.sent_at_ms)
            .arg(sent.parts.map(|p| p.to_string()).unwrap_or_default())
            .arg(sent.cost.clone().unwrap_or_default())
            .arg(sent.currency.clone().unwrap_or_default())
            .arg(id)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn release(
        &self,
        id: &str,
        owner: &str,
        attempts: u32,
        maybe_sent: bool,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut c = self.redis.conn();
        let _: i64 = RELEASE
            .key(self.job_key(id))
            .arg(owner)
            .arg(attempts)
            .arg(ms(ttl))
            .arg(if maybe_sent { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn dead_lettered(
        &self,
        id: &str,
        reason: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut c = self.redis.conn();
        let _: i64 = DEAD
            .key(self.job_key(id))
            .arg(reason)
            .arg(now_ms())
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    pub async fn lookup(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let mut c = self.redis.conn();
        let h: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(self.job_key(id))
            .query_async(&mut c)
            .await?;
        Ok(record(id, &h))
    }

    pub async fn job_for_message(&self, message_id: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.redis.conn();
        let v: Option<String> = ::redis::cmd("GET")
            .arg(self.msg_key(message_id))
            .query_async(&mut c)
            .await?;
        Ok(v)
    }

    pub async fn record_delivery(&self, id: &str, d: &Delivery) -> Result<(), StoreError> {
        let mut c = self.redis.conn();
        let _: i64 = DELIVERY
            .key(self.job_key(id))
            .arg(&d.status)
            .arg(d.code.clone().unwrap_or_default())
            .arg(d.detail.clone().unwrap_or_default())
            .arg(d.at_ms)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }
}

/// A job's hash as a record (None when there is no hash).
fn record(id: &str, h: &HashMap<String, String>) -> Option<JobRecord> {
    let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
    let state = match get("state") {
        "leased" => JobState::Leased,
        "sent" => JobState::Sent,
        "released" => JobState::Released,
        "dead_lettered" => JobState::DeadLettered,
        _ => return None,
    };
    let sent = (state == JobState::Sent).then(|| Sent {
        message_id: opt(get("message_id")),
        sent_at_ms: get("sent_at").parse().unwrap_or(0),
        parts: get("parts").parse().ok(),
        cost: opt(get("cost")),
        currency: opt(get("currency")),
    });
    let delivery = opt(get("delivery_status")).map(|status| Delivery {
        status,
        code: opt(get("delivery_code")),
        detail: opt(get("delivery_detail")),
        at_ms: get("delivery_at").parse().unwrap_or(0),
    });
    Some(JobRecord {
        job_id: id.to_owned(),
        state,
        attempts: get("attempts").parse().unwrap_or(0),
        unknowns: get("unknowns").parse().unwrap_or(0),
        sent,
        dead_reason: opt(get("dead_reason")),
        dead_at_ms: get("dead_at").parse().ok(),
        delivery,
    })
}
