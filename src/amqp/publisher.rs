//! Confirmed publishing. Everything the worker re-publishes (a retry copy, a
//! dead-letter entry, a halted job's fresh copy) goes through
//! [`Publisher::publish`], which returns only once the broker has confirmed
//! it; only then is the original acked. A publish that is not confirmed
//! within the publisher's timeout has failed ([`PublishError::Timeout`]).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message was unroutable and returned: {0}")]
    Returned(String),
    #[error("AMQP error while publishing: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm the message within {0:?}")]
    Timeout(Duration),
}

/// How long a publish may wait for its confirm when nothing else is said.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A confirm-mode channel on `connection`; each publish waits at most
    /// `timeout` for its confirm.
    pub async fn new(connection: &Connection, timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, timeout })
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
        let publish = async {
            self.channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirm = tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        confirmed(confirm, exchange, routing_key)
    }
}

/// What a publisher confirm means: routed and stored, returned (unroutable,
/// with `mandatory`), or refused.
pub fn confirmed(
    confirm: Confirmation,
    exchange: &str,
    routing_key: &str,
) -> Result<(), PublishError> {
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
        // Publisher::new calls confirm_select, so this cannot be reached; but
        // an unconfirmed publish must never count as safe.
        Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}
