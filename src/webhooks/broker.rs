//! The intake's own link to the broker: one connection and one confirm-mode
//! channel, opened on first use and opened again after any failure. Every
//! step is bounded by the answer's deadline, so a broker that is down or
//! slow makes the intake answer 503 in time instead of hanging.

use std::time::Duration;

use lapin::{BasicProperties, Connection};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::amqp::{self, PublishError, Publisher};
use crate::secret::Secret;

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Broker(#[from] amqp::BrokerError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not answer in time")]
    Timeout,
}

pub struct Link {
    url: Secret,
    exchange: String,
    declare: bool,
    /// The longest a publish may wait for its confirm (each call is also
    /// bounded by its own deadline).
    confirm_within: Duration,
    open: Mutex<Option<(Connection, Publisher)>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Publishes to `exchange` on the broker at `url`; with `declare`, the
    /// exchange is declared (durable topic, as the worker declares it) on
    /// connecting, so a standalone intake works on a fresh broker.
    pub fn new(url: Secret, exchange: String, declare: bool, confirm_within: Duration) -> Self {
        Self {
            url,
            exchange,
            declare,
            confirm_within,
            open: Mutex::new(None),
        }
    }

    async fn publisher(&self, deadline: Instant) -> Result<Publisher, LinkError> {
        let mut open = tokio::time::timeout_at(deadline, self.open.lock())
            .await
            .map_err(|_| LinkError::Timeout)?;
        if let Some((conn, p)) = open.as_ref()
            && conn.status().connected()
            && p.channel().status().connected()
        {
            return Ok(p.clone());
        }
        *open = None;
        let connect = async {
            let conn = amqp::connect(&self.url, "send-worker-webhooks").await?;
            let p = Publisher::new(&conn, self.confirm_within).await?;
            if self.declare {
                amqp::declare_exchange(p.channel(), &self.exchange).await?;
            }
            Ok::<_, LinkError>((conn, p))
        };
        let (conn, p) = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| LinkError::Timeout)??;
        *open = Some((conn, p.clone()));
        Ok(p)
    }

    /// Publish and wait for the broker's confirm, by `deadline`. Not
    /// mandatory: like result events, an event no queue is bound for is
    /// dropped by the broker (consumers bind their own queues).
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        deadline: Instant,
    ) -> Result<(), LinkError> {
        let p = self.publisher(deadline).await?;
        let r = tokio::time::timeout_at(
            deadline,
            p.publish(&self.exchange, routing_key, body, properties, false),
        )
        .await;
        match r {
            Ok(Ok(())) => Ok(()),
            failed => {
                // Whatever went wrong, the next request starts on a fresh link.
                if let Some((conn, _)) = self.open.lock().await.take() {
                    tokio::spawn(async move {
                        let _ = conn.close(200, "reconnect".into()).await;
                    });
                }
                match failed {
                    Ok(Err(e)) => Err(e.into()),
                    _ => Err(LinkError::Timeout),
                }
            }
        }
    }
}
