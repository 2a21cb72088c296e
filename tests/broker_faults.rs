//! Issue #9: a broker that does not take a job's settlement never makes the
//! job reach the API again. The retry tier (or the DLQ) is deleted under a
//! running worker, so the mandatory re-publish of the job's replacement is
//! returned as unroutable. The worker must not nack the job back for an
//! immediate second API call: it reconnects (re-declaring the topology), and
//! settles the redelivered job from the decision it had already made.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use send_worker::amqp::headers;
use send_worker::sim::SimConfig;
use send_worker::testkit::{TestEnv, sms, wait_for};

const T: Duration = Duration::from_secs(60);

async fn delete_queue(env: &TestEnv, queue: &str) {
    env.ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_copy_the_broker_refuses_costs_no_extra_api_call() {
    let env = TestEnv::new("faultretry", SimConfig::default(), |s| {
        s.amqp.reconnect_max_secs = 1;
    })
    .await;
    let w = env.start();
    wait_for("consuming", T, || async {
        w.worker.state.readiness().consuming
    })
    .await;
    // Every tier is gone: the first retry copy is returned as unroutable.
    for tier in &env.topology.tiers {
        delete_queue(&env, &env.topology.tier_queue(tier)).await;
    }
    // 503 on the first two tries of this body, then accepted: exactly three
    // calls when nothing goes wrong.
    env.publish("flaky-1", &sms("+19990000503", "flaky under a fault"))
        .await;
    wait_for("the job sent", T, || async {
        env.sim
            .requests_with_text("flaky under a fault")
            .iter()
            .any(|r| r.status == 200)
    })
    .await;
    let w = w.stop().await;
    let calls = env.sim.requests_with_text("flaky under a fault");
    assert_eq!(
        calls.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 503, 200],
        "the refused retry copy cost no extra API call"
    );
    let text = w.metrics.render();
    assert!(
        text.contains(r#"send_worker_outcomes_total{reason="publish_failed",result="requeued"} 1"#),
        "the refused publish was counted:\n{text}"
    );
    assert!(w.ledger.is_empty(), "settled: the ledger forgot it");
    assert_eq!(env.work_depth().await, 0);
    assert_eq!(env.retry_depth().await, 0);
    assert_eq!(env.dlq_depth().await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_refuses_is_published_later_without_calling_the_api_again() {
    let env = TestEnv::new("faultdlq", SimConfig::default(), |s| {
        s.amqp.reconnect_max_secs = 1;
    })
    .await;
    let w = env.start();
    wait_for("consuming", T, || async {
        w.worker.state.readiness().consuming
    })
    .await;
    delete_queue(&env, &env.settings.amqp.dead_letter_queue).await;
    // 403 / 40300: permanent, one call, then the DLQ.
    env.publish("blocked-1", &sms("+19990000403", "blocked under a fault"))
        .await;
    // (No passive declare of the deleted DLQ here: a 404 would close the
    // test's own channel.) The reconnect re-declares the DLQ; the worker
    // counts the entry once the broker has confirmed it.
    wait_for("the DLQ entry confirmed", T, || async {
        w.worker
            .metrics
            .render()
            .contains(r#"send_worker_outcomes_total{reason="permanent",result="dead_lettered"} 1"#)
    })
    .await;
    w.stop().await;
    assert_eq!(
        env.sim.requests_with_text("blocked under a fault").len(),
        1,
        "one API call, however many times the broker refused the entry"
    );
    let dead = env.drain_dlq().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        headers::get_string(&dead[0].0, headers::ERROR_REASON).as_deref(),
        Some("permanent")
    );
    assert_eq!(env.work_depth().await, 0);
    env.cleanup().await;
}
