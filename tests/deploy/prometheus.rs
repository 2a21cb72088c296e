//! The alert rules, their unit tests and the compose Prometheus config:
//! promtool judges the syntax and runs the tests; this module checks that
//! every alert is complete (summary, description, a runbook section) and that
//! the tests cover every alert both ways (it fires; it stays quiet under a
//! normal error mix).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use crate::common::*;

/// Every alerting rule of alerts.yml, by name.
pub fn alerts() -> BTreeMap<String, Json> {
    let file = yaml_one("prometheus/alerts.yml");
    let mut out = BTreeMap::new();
    for group in array_at(&file, "/groups") {
        for rule in array_at(group, "/rules") {
            if let Some(name) = rule["alert"].as_str() {
                let previous = out.insert(name.to_string(), rule.clone());
                assert!(previous.is_none(), "duplicate alert {name}");
            }
        }
    }
    assert!(out.len() >= 20, "only {} alerts", out.len());
    out
}

#[test]
fn promtool_checks_the_rules_runs_their_tests_and_checks_the_config() {
    let promtool = promtool();
    let dir = deploy_dir().join("prometheus");
    run(&cmd(&promtool, &["check", "rules", "alerts.yml"]), &dir);
    let out = run(&cmd(&promtool, &["test", "rules", "alerts.test.yml"]), &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    run(
        &cmd(&promtool, &["check", "config", "prometheus.yml"]),
        &dir,
    );
}

/// Each alert is expected to fire in some test, and one test (a healthy fleet
/// under a normal error mix) expects every alert to stay quiet.
#[test]
fn the_rule_tests_cover_every_alert_firing_and_quiet() {
    let alerts = alerts();
    let tests = yaml_one("prometheus/alerts.test.yml");
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut quiet_everywhere_in_one_test = false;
    for test in array_at(&tests, "/tests") {
        let mut quiet_here: BTreeSet<String> = BTreeSet::new();
        for check in test["alert_rule_test"].as_array().into_iter().flatten() {
            let name = str_at(check, "/alertname").to_string();
            assert!(
                alerts.contains_key(&name),
                "a test checks unknown alert {name}"
            );
            match check["exp_alerts"].as_array() {
                Some(exp) if !exp.is_empty() => {
                    fires.insert(name);
                }
                _ => {
                    quiet_here.insert(name);
                }
            }
        }
        if alerts.keys().all(|a| quiet_here.contains(a)) {
            quiet_everywhere_in_one_test = true;
        }
    }
    let never_fire: Vec<&String> = alerts.keys().filter(|a| !fires.contains(*a)).collect();
    assert!(
        never_fire.is_empty(),
        "alerts no test expects to fire: {never_fire:?}"
    );
    assert!(
        quiet_everywhere_in_one_test,
        "no test expects every alert to stay quiet (the normal error mix)"
    );
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to `-`,
/// punctuation other than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The `## ` sections of docs/runbook.md, by anchor.
fn runbook_sections() -> BTreeMap<String, String> {
    let text = read(&repo_root().join("docs/runbook.md"));
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            if let Some((a, body)) = current.take() {
                sections.insert(a, body);
            }
            current = Some((anchor(h), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((a, body)) = current {
        sections.insert(a, body);
    }
    sections
}

#[test]
fn every_alert_is_complete_with_a_runbook_section() {
    let sections = runbook_sections();
    for (name, rule) in alerts() {
        assert!(
            rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            "{name}: no expr"
        );
        let for_ = rule["for"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no `for`"));
        assert!(
            for_.ends_with('s') || for_.ends_with('m') || for_.ends_with('h'),
            "{name}: for {for_}"
        );
        let severity = rule["labels"]["severity"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no severity label"));
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        for a in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][a]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name}: no {a} annotation"
            );
        }
        assert!(
            rule["annotations"].get("runbook").is_none(),
            "{name}: the annotation is runbook_url"
        );
        let url = str_at(&rule, "/annotations/runbook_url");
        assert!(url.starts_with("https://"), "{name}: runbook_url {url}");
        let (page, frag) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} names no section"));
        assert!(
            page.ends_with("/docs/runbook.md"),
            "{name}: runbook_url {url} is not docs/runbook.md"
        );
        assert_eq!(
            frag,
            name.to_lowercase(),
            "{name}: the anchor is the alert's name"
        );
        let body = sections
            .get(frag)
            .unwrap_or_else(|| panic!("{name}: docs/runbook.md has no section #{frag}"));
        for part in ["**What it means.**", "**Check first.**", "**What to do.**"] {
            assert!(
                body.contains(part),
                "{name}: the runbook section lacks {part}"
            );
        }
    }
}

/// The situations the rules must cover, and the split the issue asked for:
/// operational dead letters page, recipient outcomes only warn.
#[test]
fn the_rules_cover_the_situations_that_matter() {
    let alerts = alerts();
    let exprs: String = alerts
        .values()
        .map(|r| format!("{}\n", r["expr"].as_str().unwrap_or("")))
        .collect();
    for (what, needle) in [
        ("DLQ growth", "queue=\"messages.send.dead\""),
        ("account-wide halt", "send_worker_halted"),
        ("circuit open", "send_worker_circuit_state"),
        ("429 rate", "status=\"429\""),
        ("API 5xx/transport ratio", "5..|transport"),
        ("no consumers", "rabbitmq_detailed_queue_consumers"),
        ("backlog age", "send_worker_end_to_end_seconds_bucket"),
        ("backlog depth", "rabbitmq_detailed_queue_messages_ready"),
        ("worker down", "absent(send_worker_build_info)"),
        (
            "job store unavailable",
            "send_worker_dedupe_store_available",
        ),
        ("job store errors", "send_worker_dedupe_store_errors_total"),
        ("limiter fallback", "send_worker_limiter_fallback_total"),
    ] {
        assert!(
            exprs.contains(needle),
            "no alert covers {what} (expected `{needle}` in an expr)"
        );
    }
    let severity = |name: &str| str_at(&alerts[name], "/labels/severity").to_string();
    let expr = |name: &str| str_at(&alerts[name], "/expr").to_string();
    let operational = expr("SendWorkerDeadLetteringOperational");
    for reason in [
        "attempts_exhausted",
        "internal",
        "delivery_limit",
        "unknown_outcome",
    ] {
        assert!(
            operational.contains(reason),
            "operational dead letters: {reason}"
        );
    }
    assert!(!operational.contains("permanent") && !operational.contains("validation"));
    assert_eq!(severity("SendWorkerDeadLetteringOperational"), "critical");
    let recipients = expr("SendWorkerDeadLetteringRecipients");
    for reason in ["permanent", "validation", "malformed", "expired"] {
        assert!(recipients.contains(reason), "recipient outcomes: {reason}");
    }
    assert_eq!(severity("SendWorkerDeadLetteringRecipients"), "warning");
    // Both are shares of finished jobs, not absolute counts.
    for name in [
        "SendWorkerDeadLetteringOperational",
        "SendWorkerDeadLetteringRecipients",
        "SendWorkerDeadLetterQueueGrowing",
    ] {
        assert!(
            expr(name).contains("result=~\"sent|dead_lettered|expired|suppressed\""),
            "{name} is not relative to the jobs finished"
        );
    }
    // No alert pages for a recipient outcome.
    for (name, rule) in &alerts {
        if severity(name) == "critical" {
            let e = str_at(rule, "/expr");
            assert!(
                !e.contains("\"permanent") && !e.contains("|permanent"),
                "{name} pages for permanent failures"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_the_worker_and_per_queue_rabbitmq_metrics() {
    let prom = yaml_one("prometheus/prometheus.yml");
    let mut targets: BTreeMap<String, Json> = BTreeMap::new();
    for job in array_at(&prom, "/scrape_configs") {
        let name = str_at(job, "/job_name").to_string();
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in array_at(sc, "/targets") {
                let path = job["metrics_path"].as_str().unwrap_or("/metrics");
                targets.insert(
                    format!("{name} {} {path}", t.as_str().unwrap()),
                    job.clone(),
                );
            }
        }
    }
    assert!(
        targets.contains_key("send-worker worker:9090 /metrics"),
        "the alerts select job=\"send-worker\": {:?}",
        targets.keys()
    );
    let detailed = targets
        .iter()
        .find(|(k, _)| k.contains("rabbitmq:15692 /metrics/detailed"))
        .map(|(_, job)| job)
        .expect("a detailed RabbitMQ scrape");
    let families: Vec<&str> = array_at(detailed, "/params/family")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    for family in ["queue_coarse_metrics", "queue_consumer_count"] {
        assert!(
            families.contains(&family),
            "the detailed scrape must request family {family}"
        );
    }
}
