//! The broker objects the worker declares: the work exchange and queue, the
//! dead-letter queue, one retry tier per backoff step, and the events
//! exchange. Names come from [`AmqpSettings`]; the tiers from [`Backoff`].

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpSettings, Settings};
use crate::retry::{Backoff, Tier};

/// Names and arguments of everything the worker declares: the configured
/// names as they are, plus the retry tiers the backoff schedule needs.
#[derive(Debug, Clone)]
pub struct Topology {
    pub amqp: AmqpSettings,
    pub tiers: Vec<Tier>,
}

fn s(v: &str) -> ShortString {
    ShortString::from(v)
}

fn ls(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

/// Declare `name` as the worker declares its exchanges: a durable topic
/// exchange (idempotent).
pub async fn declare_exchange(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            s(name),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

impl Topology {
    pub fn new(amqp: &AmqpSettings, backoff: &Backoff) -> Self {
        Self {
            amqp: amqp.clone(),
            tiers: backoff.tiers(),
        }
    }

    /// The topology `settings` describe (names from `[amqp]`, tiers from
    /// [`Backoff::for_settings`]).
    pub fn from_settings(settings: &Settings) -> Self {
        Self::new(&settings.amqp, &Backoff::for_settings(settings))
    }

    pub fn tier_queue(&self, tier: &Tier) -> String {
        format!("{}.{}", self.amqp.retry_queue_prefix, tier.label)
    }

    pub fn tier_routing_key(&self, tier: &Tier) -> String {
        format!("retry.{}", tier.label)
    }

    /// Every queue the worker declares.
    pub fn queues(&self) -> Vec<String> {
        let mut q = vec![self.amqp.queue.clone(), self.amqp.dead_letter_queue.clone()];
        q.extend(self.tiers.iter().map(|t| self.tier_queue(t)));
        q
    }

    /// Arguments of the work queue: quorum, at-least-once dead-lettering of
    /// poison messages (delivery limit) into the DLQ.
    pub fn work_queue_args(&self) -> FieldTable {
        let mut a = FieldTable::default();
        a.insert(s("x-queue-type"), ls("quorum"));
        a.insert(s("x-dead-letter-exchange"), ls(&self.amqp.exchange));
        a.insert(
            s("x-dead-letter-routing-key"),
            ls(&self.amqp.dead_routing_key),
        );
        a.insert(s("x-dead-letter-strategy"), ls("at-least-once"));
        a.insert(s("x-overflow"), ls("reject-publish"));
        if self.amqp.delivery_limit > 0 {
            a.insert(
                s("x-delivery-limit"),
                AMQPValue::LongLongInt(i64::from(self.amqp.delivery_limit)),
            );
        }
        a
    }

    /// Arguments of a retry tier: quorum, and at-least-once dead-lettering
    /// back to the work exchange when a copy's TTL runs out.
    pub fn tier_queue_args(&self) -> FieldTable {
        let mut a = FieldTable::default();
        a.insert(s("x-queue-type"), ls("quorum"));
        a.insert(s("x-dead-letter-exchange"), ls(&self.amqp.exchange));
        a.insert(s("x-dead-letter-routing-key"), ls(&self.amqp.routing_key));
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
        declare_exchange(channel, &self.amqp.exchange).await?;
        if !self.amqp.events_exchange.is_empty() {
            declare_exchange(channel, &self.amqp.events_exchange).await?;
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                s(&self.amqp.dead_letter_queue),
                durable,
                self.dead_letter_queue_args(),
            )
            .await?;
        channel
            .queue_bind(
                s(&self.amqp.dead_letter_queue),
                s(&self.amqp.exchange),
                s(&self.amqp.dead_routing_key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(s(&self.amqp.queue), durable, self.work_queue_args())
            .await?;
        channel
            .queue_bind(
                s(&self.amqp.queue),
                s(&self.amqp.exchange),
                s(&self.amqp.routing_key),
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
                    s(&self.amqp.exchange),
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
        for e in [&self.amqp.exchange, &self.amqp.events_exchange] {
            if !e.is_empty() {
                let _ = channel
                    .exchange_delete(s(e), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }
}
