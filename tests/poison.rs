//! Poison messages: the work queue's delivery limit dead-letters a message
//! that keeps coming back (e.g. because it crashes every worker that takes
//! it) into the DLQ, instead of looping forever.

use std::time::Duration;

use lapin::types::AMQPValue;
use send_worker::sim::SimConfig;
use send_worker::testkit::{TestEnv, sms, wait_for};

#[tokio::test]
async fn a_message_redelivered_past_the_limit_lands_in_the_dlq() {
    let env = TestEnv::new("poison", SimConfig::default(), |s| {
        s.amqp.delivery_limit = 3;
    })
    .await;
    env.publish("poison-1", &sms("+15559876543", "poison"))
        .await;
    let queue = env.settings.amqp.queue.clone();
    // Each nack with requeue is a redelivery, as a worker crash would be.
    let mut deliveries = 0;
    while env.redeliver_one(&queue).await {
        deliveries += 1;
        assert!(deliveries <= 10, "the delivery limit did not stop the loop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries, 4, "the first delivery plus 3 redeliveries");
    wait_for(
        "dead-lettered by the broker",
        Duration::from_secs(10),
        || async { env.dlq_depth().await == 1 },
    )
    .await;
    let dead = env.drain_dlq().await;
    let (props, body) = &dead[0];
    assert_eq!(body, &sms("+15559876543", "poison"));
    let x_death = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
        .expect("x-death header");
    let AMQPValue::FieldArray(deaths) = x_death else {
        panic!("x-death is not an array: {x_death:?}")
    };
    let reasons: Vec<String> = deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => match t.inner().get("reason") {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["delivery_limit"]);
    assert_eq!(env.work_depth().await, 0);
    env.cleanup().await;
}
