//! deploy/rabbitmq: the definitions must declare exactly what the worker
//! declares (or the worker's own declare fails with PRECONDITION_FAILED),
//! carry no users, and ship the DLQ policy RabbitMQ 4.x needs.

use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value as Json;

use send_worker::amqp::Topology;

use crate::common::*;

fn to_json(t: &FieldTable) -> Json {
    let mut m = serde_json::Map::new();
    for (k, v) in t.inner() {
        let v = match v {
            AMQPValue::LongString(s) => {
                Json::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            AMQPValue::LongLongInt(i) => Json::from(*i),
            other => panic!("unexpected argument type {other:?}"),
        };
        m.insert(k.as_str().to_owned(), v);
    }
    Json::Object(m)
}

fn topology() -> Topology {
    let settings = default_settings();
    Topology::from_settings(&settings)
}

/// Queue names and arguments, exchange types, bindings: the worker's
/// `Topology` (from config/default.toml) is the reference.
#[test]
fn definitions_match_the_topology_the_worker_declares() {
    let topology = topology();
    let a = &topology.amqp;
    let defs = json_file("rabbitmq/definitions.json");
    let queues = array_at(&defs, "/queues");
    let queue = |name: &str| {
        queues
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from definitions.json"))
    };
    for q in queues {
        assert_eq!(q["durable"], true, "{} must be durable", q["name"]);
        assert_eq!(
            q["auto_delete"], false,
            "{} must not auto-delete",
            q["name"]
        );
        assert_eq!(q["vhost"], "/", "{} vhost", q["name"]);
    }
    assert_eq!(
        queue(&a.queue)["arguments"],
        to_json(&topology.work_queue_args())
    );
    assert_eq!(
        queue(&a.dead_letter_queue)["arguments"],
        to_json(&topology.dead_letter_queue_args())
    );
    for tier in &topology.tiers {
        let name = topology.tier_queue(tier);
        assert_eq!(
            queue(&name)["arguments"],
            to_json(&topology.tier_queue_args()),
            "{name}"
        );
    }
    assert_eq!(
        queues.len(),
        topology.queues().len(),
        "no queue the worker does not declare"
    );

    let exchanges = array_at(&defs, "/exchanges");
    for name in [&a.exchange, &a.events_exchange] {
        let e = exchanges
            .iter()
            .find(|e| e["name"] == name.as_str())
            .unwrap_or_else(|| panic!("exchange {name} is not declared"));
        assert_eq!(e["type"], "topic", "{name} type");
        assert_eq!(e["durable"], true, "{name} durable");
    }

    let bindings = array_at(&defs, "/bindings");
    let bound = |source: &str, key: &str, dest: &str| {
        bindings.iter().any(|b| {
            b["source"] == source
                && b["routing_key"] == key
                && b["destination"] == dest
                && b["destination_type"] == "queue"
        })
    };
    assert!(
        bound(&a.exchange, &a.routing_key, &a.queue),
        "work queue binding"
    );
    assert!(
        bound(&a.exchange, &a.dead_routing_key, &a.dead_letter_queue),
        "DLQ binding"
    );
    for tier in &topology.tiers {
        assert!(
            bound(
                &a.exchange,
                &topology.tier_routing_key(tier),
                &topology.tier_queue(tier)
            ),
            "binding for {}",
            topology.tier_queue(tier)
        );
    }
    assert_eq!(
        bindings.len(),
        2 + topology.tiers.len(),
        "no binding the worker does not make"
    );
}

#[test]
fn definitions_carry_no_users_and_compose_users_no_topology() {
    let defs = json_file("rabbitmq/definitions.json");
    assert!(
        array_at(&defs, "/users").is_empty(),
        "definitions.json must not carry users; the operator sets them"
    );
    assert!(array_at(&defs, "/permissions").is_empty());
    assert!(array_at(&defs, "/vhosts").iter().any(|v| v["name"] == "/"));
    let users = json_file("rabbitmq/compose-users.json");
    assert!(users.get("queues").is_none() && users.get("exchanges").is_none());
}

/// Whether a policy's pattern (a regular expression, PCRE in RabbitMQ;
/// these use only the common subset) matches a queue name.
fn policy_matches(pattern: &str, name: &str) -> bool {
    regex::Regex::new(pattern)
        .unwrap_or_else(|e| panic!("policy pattern {pattern}: {e}"))
        .is_match(name)
}

/// On RabbitMQ 4.x quorum queues have a default delivery limit (20), and
/// every browse of the DLQ (`send-worker dlq list`) is a delivery: without
/// `delivery-limit: -1` on the DLQ, browsing it would dead-letter entries.
/// Only the highest-priority matching policy applies to a queue.
#[test]
fn the_dlq_policy_lifts_the_delivery_limit_and_only_for_the_dlq() {
    let topology = topology();
    let defs = json_file("rabbitmq/definitions.json");
    let policies = array_at(&defs, "/policies");
    let applying = |queue: &str| -> Option<&Json> {
        policies
            .iter()
            .filter(|p| p["apply-to"] == "queues" || p["apply-to"] == "all")
            .filter(|p| policy_matches(str_at(p, "/pattern"), queue))
            .max_by_key(|p| p["priority"].as_i64().unwrap_or(0))
    };
    let dlq = applying(&topology.amqp.dead_letter_queue).expect("a policy applies to the DLQ");
    assert_eq!(
        dlq["definition"]["delivery-limit"],
        Json::from(-1),
        "the policy that applies to the DLQ: {dlq}"
    );
    for q in topology.queues() {
        if q == topology.amqp.dead_letter_queue {
            continue;
        }
        let p = applying(&q).unwrap_or_else(|| panic!("{q}: no policy (the backlog cap)"));
        assert!(
            p["definition"].get("delivery-limit").is_none(),
            "{q} must keep its delivery limit: {p}"
        );
        assert!(
            p["definition"]["max-length"].is_u64(),
            "{q}: backlog cap {p}"
        );
    }
}
