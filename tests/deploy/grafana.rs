//! The Grafana dashboard and its provisioning: every query parses (promtool
//! parses each one as a recording rule), the panels are complete, and the
//! dashboard's default datasource is the provisioned one.

use std::collections::BTreeSet;

use crate::common::*;
use crate::contract::{all_panels, promql_expressions};

#[test]
fn promtool_parses_every_dashboard_query() {
    let promtool = promtool();
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let mut n = 0;
    for (place, expr) in promql_expressions() {
        if place.starts_with("alerts") || place.contains(" variable $") {
            continue;
        }
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        n += 1;
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    assert!(n > 0, "no dashboard queries found");
    let dir = std::env::temp_dir().join(format!("send-worker-dash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard-queries.yml"), rules).unwrap();
    run(
        &cmd(&promtool, &["check", "rules", "dashboard-queries.yml"]),
        &dir,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dashboard_is_a_complete_grafana_dashboard() {
    let dash = json_file("grafana/dashboards/send-worker.json");
    assert_eq!(dash["uid"], "send-worker");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let mut ids = BTreeSet::new();
    let mut exprs = String::new();
    for panel in all_panels(&dash) {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let kind = panel["type"].as_str().expect("panel type");
        let gp = &panel["gridPos"];
        let (x, w) = (
            gp["x"].as_u64().expect("gridPos.x"),
            gp["w"].as_u64().expect("gridPos.w"),
        );
        assert!(
            x + w <= 24 && gp["h"].as_u64().is_some() && gp["y"].as_u64().is_some(),
            "panel {id}: gridPos {gp}"
        );
        if kind == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = array_at(panel, "/targets");
        assert!(!targets.is_empty(), "panel {title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: target without expr"));
            assert!(!expr.trim().is_empty(), "panel {title}: empty expr");
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "panel {title}: duplicate refId"
            );
            exprs.push_str(expr);
            exprs.push('\n');
        }
        assert_eq!(
            panel["datasource"]["type"], "prometheus",
            "panel {title}: datasource"
        );
    }
    for (what, needle) in [
        ("throughput", "send_worker_outcomes_total{"),
        ("outcomes by result/reason", "by (result, reason)"),
        (
            "API latency p50",
            "histogram_quantile(0.5, sum by (le) (rate(send_worker_api_request_duration_seconds_bucket",
        ),
        (
            "API latency p95",
            "histogram_quantile(0.95, sum by (le) (rate(send_worker_api_request_duration_seconds_bucket",
        ),
        (
            "API latency p99",
            "histogram_quantile(0.99, sum by (le) (rate(send_worker_api_request_duration_seconds_bucket",
        ),
        (
            "end-to-end latency",
            "send_worker_end_to_end_seconds_bucket",
        ),
        ("limiter rate", "send_worker_limiter_rate"),
        ("limiter remaining", "send_worker_limiter_remaining"),
        ("limiter paused", "send_worker_limiter_paused"),
        ("in flight", "send_worker_requests_in_flight"),
        (
            "backlog",
            "rabbitmq_detailed_queue_messages_ready{vhost=\"/\", queue=\"messages.send\"}",
        ),
        ("DLQ depth", "queue=\"messages.send.dead\""),
        ("halted", "send_worker_halted"),
        ("circuit state", "send_worker_circuit_state"),
    ] {
        assert!(
            exprs.contains(needle),
            "the dashboard has no {what} panel (expected `{needle}`)"
        );
    }
}

#[test]
fn the_dashboard_uses_the_provisioned_datasource() {
    let ds = yaml_one("grafana/provisioning/datasources/prometheus.yml");
    let uid = str_at(&ds, "/datasources/0/uid");
    assert_eq!(str_at(&ds, "/datasources/0/url"), "http://prometheus:9090");
    let dash = json_file("grafana/dashboards/send-worker.json");
    let var = array_at(&dash, "/templating/list")
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(
        str_at(var, "/current/value"),
        uid,
        "dashboard default datasource"
    );
}
