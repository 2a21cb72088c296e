//! An account-wide halt (revoked key, no funds): consumption stops, and one
//! job at a time is sent as a probe until the account works again.

use lapin::options::BasicGetOptions;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Worker;
use crate::amqp::BrokerError;
use crate::pipeline::{JobSignals, Progress, Settled};

impl Worker {
    /// While halted, take one job every interval and send it as a probe. The
    /// first probe that is not itself an account-wide failure ends the halt.
    /// Returns false on shutdown.
    pub(super) async fn wait_out_halt(&self, shutdown: &CancellationToken) -> bool {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.halt_probe_interval) => {}
            }
            match self.probe(shutdown).await {
                Ok(true) => {
                    if self.state.resume() {
                        info!("probe succeeded: the account works again; resuming");
                    }
                    return true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "halt probe could not reach the broker"),
            }
        }
    }

    /// One probe round. Ok(true): resume. Ok(false): still halted.
    ///
    /// Jobs are taken one at a time with basic.get and sent through the
    /// normal pipeline. A sent job proves the account works; a job halted
    /// again proves it does not. Anything else (an invalid job, a permanent
    /// or transient failure) is settled normally and says nothing about the
    /// account, so the next job is tried, up to a bound. An empty queue
    /// resumes: real jobs will show whether the account works.
    async fn probe(&self, shutdown: &CancellationToken) -> Result<bool, BrokerError> {
        const MAX_JOBS_PER_PROBE: usize = 20;
        let (conn, publisher) = self.connect().await?;
        let pipeline = self.pipeline(publisher);
        let channel = conn.create_channel().await?;
        let mut result = false;
        for _ in 0..MAX_JOBS_PER_PROBE {
            let got = channel
                .basic_get(
                    self.settings.amqp.queue.as_str().into(),
                    BasicGetOptions::default(),
                )
                .await?;
            let Some(message) = got else {
                result = true;
                break;
            };
            let signals = JobSignals::new(shutdown);
            match pipeline
                .handle(&message.delivery, &signals, &Progress::default())
                .await
            {
                Settled::Sent => {
                    result = true;
                    break;
                }
                Settled::Halted | Settled::Failed => break,
                Settled::Requeued => break, // shutdown
                Settled::Retried | Settled::DeadLettered | Settled::Suppressed => {}
            }
        }
        let _ = channel.close(200, "probe done".into()).await;
        let _ = conn.close(200, "probe done".into()).await;
        Ok(result)
    }
}
