//! RabbitMQ: connecting, declaring the topology, and publishing with
//! confirms. Everything the worker re-publishes (a retry copy, a dead-letter
//! entry, a result event) goes through [`Publisher::publish`], which returns
//! only once the broker has confirmed it; only then is the original acked.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::config::AmqpSettings;
use crate::retry::{Backoff, Tier};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot reach RabbitMQ at {url}: {reason}. Start a broker (for example \
         `rabbitmq-server -detached`, or `docker compose -f deploy/docker-compose.yml up -d rabbitmq`) \
         or point SEND_WORKER__AMQP__URL at one"
    )]
    Unreachable { url: String, reason: String },
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was unroutable and returned: {0}")]
    Returned(String),
    #[error("AMQP error while publishing: {0}")]
    Amqp(#[from] lapin::Error),
}

/// `amqp://user:***@host:port/vhost`: the URL with its password hidden.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparseable URL]".to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Connect, with a timeout and an error that names the (redacted) URL.
pub async fn connect(url: &Secret, name: &str) -> Result<Connection, BrokerError> {
    let unreachable = |reason: String| BrokerError::Unreachable {
        url: redact_url(url.expose()),
        reason,
    };
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url.expose(), props),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("timed out after 10 s".to_owned())),
    }
}

/// Ready messages in `queue`, by a passive declare (fails if it does not exist).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let q = channel
        .queue_declare(
            s(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Names and arguments of everything the worker declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub dead_letter_queue: String,
    pub dead_routing_key: String,
    pub retry_queue_prefix: String,
    pub events_exchange: String,
    pub delivery_limit: u32,
    pub tiers: Vec<Tier>,
}

fn s(v: &str) -> ShortString {
    ShortString::from(v)
}

fn ls(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

impl Topology {
    pub fn new(amqp: &AmqpSettings, backoff: &Backoff) -> Self {
        Self {
            exchange: amqp.exchange.clone(),
            routing_key: amqp.routing_key.clone(),
            queue: amqp.queue.clone(),
            dead_letter_queue: amqp.dead_letter_queue.clone(),
            dead_routing_key: amqp.dead_routing_key.clone(),
            retry_queue_prefix: amqp.retry_queue_prefix.clone(),
            events_exchange: amqp.events_exchange.clone(),
            delivery_limit: amqp.delivery_limit,
            tiers: backoff.tiers(),
        }
    }

    pub fn tier_queue(&self, tier: &Tier) -> String {
        format!("{}.{}", self.retry_queue_prefix, tier.label)
    }

    pub fn tier_routing_key(&self, tier: &Tier) -> String {
        format!("retry.{}", tier.label)
    }

    /// Every queue the worker declares.
    pub fn queues(&self) -> Vec<String> {
        let mut q = vec![self.queue.clone(), self.dead_letter_queue.clone()];
        q.extend(self.tiers.iter().map(|t| self.tier_queue(t)));
        q
    }

    /// Arguments of the work queue: quorum, at-least-once dead-lettering of
    /// poison messages (delivery limit) into the DLQ.
    pub fn work_queue_args(&self) -> FieldTable {
        let mut a = FieldTable::default();
        a.insert(s("x-queue-type"), ls("quorum"));
        a.insert(s("x-dead-letter-exchange"), ls(&self.exchange));
        a.insert(s("x-dead-letter-routing-key"), ls(&self.dead_routing_key));
        a.insert(s("x-dead-letter-strategy"), ls("at-least-once"));
        a.insert(s("x-overflow"), ls("reject-publish"));
        if self.delivery_limit > 0 {
            a.insert(
                s("x-delivery-limit"),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
        }
        a
    }

    /// Arguments of a retry tier: quorum, and at-least-once dead-lettering
    /// back to the work exchange when a copy's TTL runs out.
    pub fn tier_queue_args(&self) -> FieldTable {
        let mut a = FieldTable::default();
        a.insert(s("x-queue-type"), ls("quorum"));
        a.insert(s("x-dead-letter-exchange"), ls(&self.exchange));
        a.insert(s("x-dead-letter-routing-key"), ls(&self.routing_key));
        a.insert(s("x-dead-letter-strategy"), ls("at-least-once"));
        a.insert(s("x-overflow"), ls("reject-publish"));
        a
    }

    pub fn dead_letter_queue_args(&self) -> FieldTable {
        let mut a = FieldTable::default();
        a.insert(s("x-queue-type"), ls("quorum"));
        a
    }

    /// Declare everything, idempotently. Works on a fresh broker.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                s(&self.exchange),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        if !self.events_exchange.is_empty() {
            channel
                .exchange_declare(
                    s(&self.events_exchange),
                    ExchangeKind::Topic,
                    durable_exchange,
                    FieldTable::default(),
                )
                .await?;
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                s(&self.dead_letter_queue),
                durable,
                self.dead_letter_queue_args(),
            )
            .await?;
        channel
            .queue_bind(
                s(&self.dead_letter_queue),
                s(&self.exchange),
                s(&self.dead_routing_key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(s(&self.queue), durable, self.work_queue_args())
            .await?;
        channel
            .queue_bind(
                s(&self.queue),
                s(&self.exchange),
                s(&self.routing_key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for tier in &self.tiers {
            let name = self.tier_queue(tier);
            channel
                .queue_declare(s(&name), durable, self.tier_queue_args())
                .await?;
            channel
                .queue_bind(
                    s(&name),
                    s(&self.exchange),
                    s(&self.tier_routing_key(tier)),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Delete every queue and exchange [`Topology::declare`] declares, best
    /// effort (for the demo, tests and benchmarks, which use throwaway names).
    pub async fn delete(&self, channel: &Channel) {
        for q in self.queues() {
            let _ = channel
                .queue_delete(s(&q), QueueDeleteOptions::default())
                .await;
        }
        for e in [&self.exchange, &self.events_exchange] {
            if !e.is_empty() {
                let _ = channel
                    .exchange_delete(s(e), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    pub async fn new(connection: &Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publish and wait for the broker's confirm. With `mandatory`, an
    /// unroutable message is an error rather than a silent loss.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                s(exchange),
                s(routing_key),
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Returned(format!(
                    "{} {} (exchange {exchange:?}, routing key {routing_key:?})",
                    returned.reply_code,
                    returned.reply_text.as_str()
                )))
            }
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            // confirm_select was called in new(); this cannot be reached, but
            // an unconfirmed publish must never count as safe.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://u:p@ss@host/vh"),
            "amqps://u:***@host/vh"
        );
        assert_eq!(redact_url("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact_url("garbage"), "[unparseable URL]");
    }
}
