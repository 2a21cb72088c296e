//! Publishing with a bounded window of unconfirmed messages: every job is
//! published `mandatory` on a confirm-mode channel, and at most `cap` wait
//! for their confirm at once. Each confirm is matched to its line, so an
//! unroutable (returned) or refused (nacked) publish is reported with it.

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{Channel, Confirmation};

use super::prepare::Prepared;
use crate::amqp::confirmed;

/// What became of one publish.
#[derive(Debug)]
pub struct Settled {
    pub line: u64,
    pub id: String,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Routed to a queue and confirmed by the broker.
    Confirmed,
    /// Returned (unroutable) or nacked: the broker did not take it.
    Rejected(String),
    /// The channel or connection failed before the confirm arrived: the
    /// broker may or may not have the message.
    Unconfirmed(String),
}

pub struct Window {
    channel: Channel,
    exchange: String,
    routing_key: String,
    cap: usize,
    pending: FuturesUnordered<BoxFuture<'static, Settled>>,
}

impl Window {
    /// `channel` must be in confirm mode; `exchange` and `routing_key` must be
    /// AMQP short strings (checked by the caller).
    pub fn new(channel: Channel, exchange: &str, routing_key: &str, cap: usize) -> Self {
        Self {
            channel,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            cap: cap.max(1),
            pending: FuturesUnordered::new(),
        }
    }

    /// Publish `job`, first waiting for confirms while the window is full.
    /// Returns the publishes settled meanwhile, or the error that stopped the
    /// channel (`job` was not published then).
    pub async fn publish(
        &mut self,
        job: Prepared,
        settled: &mut Vec<Settled>,
    ) -> Result<(), lapin::Error> {
        while self.pending.len() >= self.cap {
            match self.pending.next().await {
                Some(s) => settled.push(s),
                None => break,
            }
        }
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(self.exchange.as_str()),
                ShortString::from(self.routing_key.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &job.body,
                job.props,
            )
            .await?;
        let (exchange, routing_key) = (self.exchange.clone(), self.routing_key.clone());
        let (line, id) = (job.line, job.id);
        self.pending.push(Box::pin(async move {
            let outcome = match confirm.await {
                Ok(c) => outcome(c, &exchange, &routing_key),
                Err(e) => Outcome::Unconfirmed(e.to_string()),
            };
            Settled { line, id, outcome }
        }));
        Ok(())
    }

    /// Publishes settled so far, without waiting.
    pub fn ready(&mut self, settled: &mut Vec<Settled>) {
        use std::task::{Context, Poll};
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while let Poll::Ready(Some(s)) = self.pending.poll_next_unpin(&mut cx) {
            settled.push(s);
        }
    }

    /// Wait for every outstanding confirm.
    pub async fn finish(&mut self) -> Vec<Settled> {
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(s) = self.pending.next().await {
            out.push(s);
        }
        out
    }
}

fn outcome(c: Confirmation, exchange: &str, routing_key: &str) -> Outcome {
    match confirmed(c, exchange, routing_key) {
        Ok(()) => Outcome::Confirmed,
        Err(e) => Outcome::Rejected(e.to_string()),
    }
}
