//! RabbitMQ: connecting, the topology the worker declares, confirmed
//! publishing, and the headers it reads and writes. Nothing here decides
//! what happens to a job; the pipeline does, and calls in here to do it.

mod publisher;
mod topology;

pub mod headers;
pub mod outbox;

pub use outbox::Outbox;
pub use publisher::{DEFAULT_PUBLISH_TIMEOUT, PublishError, Publisher, confirmed};
pub use topology::{Topology, declare_exchange};

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::secret::Secret;

/// The login of the compose stack's broker (deploy/rabbitmq/compose-users.json),
/// which imports definitions and so has no `guest` user.
pub const COMPOSE_URL: &str = "amqp://send-worker:send-worker-dev@127.0.0.1:5672/%2f";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "cannot reach RabbitMQ at {url}: {reason}. Start a broker: `rabbitmq-server -detached` \
         (its guest/guest login works from localhost, the default amqp.url), or \
         `docker compose -f deploy/docker-compose.yml up -d rabbitmq` with \
         SEND_WORKER__AMQP__URL={COMPOSE_URL} (that broker has no guest user); or point \
         SEND_WORKER__AMQP__URL at another one"
    )]
    Unreachable { url: String, reason: String },
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not take a job's settlement (publish or ack); reconnecting")]
    Settlement,
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
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_names_logins_that_work() {
        let e = BrokerError::Unreachable {
            url: "amqp://guest:***@127.0.0.1:5672/%2f".into(),
            reason: "connection refused".into(),
        }
        .to_string();
        assert!(e.contains("rabbitmq-server -detached"), "{e}");
        assert!(e.contains(COMPOSE_URL), "{e}");
        // The compose login is the one compose-users.json defines.
        let users = include_str!("../../deploy/rabbitmq/compose-users.json");
        assert!(users.contains("\"name\": \"send-worker\""), "{users}");
        let compose = include_str!("../../deploy/docker-compose.yml");
        assert!(compose.contains("amqp://send-worker:send-worker-dev@rabbitmq:5672/%2f"));
    }

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
