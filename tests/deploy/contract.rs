//! The metrics contract: every worker metric an alert, an alert test or a
//! dashboard uses is one the worker promises to export
//! (`deploy/metrics-contract.txt`, which tests/ops.rs checks against a real
//! scrape), and every RabbitMQ metric is one this setup scrapes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use crate::common::*;

/// Prefixes of the families the worker exports.
const WORKER_PREFIXES: [&str; 2] = ["send_worker_", "process_"];

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Metric names with `prefix` in a PromQL expression or series selector,
/// outside string literals (label values), with the histogram series
/// suffixes `_bucket`, `_sum` and `_count` removed.
pub fn metric_names_in_expr(expr: &str, prefix: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if is_ident_char(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with(prefix) {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(&word);
                names.insert(family.to_string());
            }
            continue;
        }
        i += 1;
    }
    names
}

/// The metric families in deploy/metrics-contract.txt.
pub fn contract_metrics() -> BTreeSet<String> {
    let path = deploy_dir().join("metrics-contract.txt");
    let mut names = BTreeSet::new();
    for (n, line) in read(&path).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            WORKER_PREFIXES.iter().any(|p| line.starts_with(p))
                && line
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "metrics-contract.txt:{}: `{line}` is not a send_worker_ or process_ metric family name",
            n + 1
        );
        assert!(
            names.insert(line.to_string()),
            "metrics-contract.txt:{}: duplicate {line}",
            n + 1
        );
    }
    names
}

pub fn all_panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        for inner in panel["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

/// Every PromQL expression in the alert rules and their unit tests, and in
/// the dashboards (panel targets and templating queries), with where it is.
pub fn promql_expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let alerts = yaml_one("prometheus/alerts.yml");
    for group in array_at(&alerts, "/groups") {
        let gname = group["name"].as_str().unwrap_or("?");
        for rule in array_at(group, "/rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            if let Some(expr) = rule["expr"].as_str() {
                out.push((format!("alerts.yml {gname}/{name}"), expr.to_string()));
            }
        }
    }
    let tests = yaml_one("prometheus/alerts.test.yml");
    for (i, test) in array_at(&tests, "/tests").iter().enumerate() {
        for series in test["input_series"].as_array().into_iter().flatten() {
            if let Some(s) = series["series"].as_str() {
                out.push((
                    format!("alerts.test.yml test {} input series", i + 1),
                    s.to_string(),
                ));
            }
        }
    }
    for path in files_under(&deploy_dir().join("grafana/dashboards")) {
        if !has_ext(&path, &["json"]) {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let dash: Json =
            serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{file}: {e}"));
        for panel in all_panels(&dash) {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("{file} panel \"{title}\""), expr.to_string()));
                }
            }
        }
        for var in dash
            .pointer("/templating/list")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let name = var["name"].as_str().unwrap_or("?");
            let query = match &var["query"] {
                Json::String(s) => Some(s.as_str()),
                Json::Object(o) => o.get("query").and_then(Json::as_str),
                _ => None,
            };
            if let Some(q) = query.filter(|_| var["type"] == "query") {
                out.push((format!("{file} variable ${name}"), q.to_string()));
            }
        }
    }
    out
}

/// Every worker metric family used by the alerts and dashboards, mapped to
/// where it is used.
pub fn used_worker_metrics() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in promql_expressions() {
        for prefix in WORKER_PREFIXES {
            for name in metric_names_in_expr(&expr, prefix) {
                used.entry(name).or_default().push(place.clone());
            }
        }
    }
    used
}

/// The names in `used` that `contract` does not list, one line each.
pub fn names_missing_from_contract(
    used: &BTreeMap<String, Vec<String>>,
    contract: &BTreeSet<String>,
) -> Vec<String> {
    used.iter()
        .filter(|(name, _)| !contract.contains(*name))
        .map(|(name, places)| format!("{name} (used by {})", places.join("; ")))
        .collect()
}

#[test]
fn metrics_used_by_alerts_and_dashboards_are_in_the_contract() {
    let contract = contract_metrics();
    let used = used_worker_metrics();
    let missing = names_missing_from_contract(&used, &contract);
    assert!(
        missing.is_empty(),
        "metrics used in deploy/ but not in deploy/metrics-contract.txt:\n  {}",
        missing.join("\n  ")
    );
    assert!(
        contract.len() >= 28,
        "metrics-contract.txt lists only {} families",
        contract.len()
    );
    assert!(
        used.len() >= 20,
        "only {} worker families found in alerts and dashboards: {:?}",
        used.len(),
        used.keys()
    );
    let unused: Vec<&String> = contract.iter().filter(|n| !used.contains_key(*n)).collect();
    if !unused.is_empty() {
        eprintln!("note: contract metrics not shown in any alert or dashboard: {unused:?}");
    }
}

/// The contract check itself must reject a name the worker does not export.
#[test]
fn the_contract_check_rejects_an_unknown_metric() {
    let contract = contract_metrics();
    let mut used = BTreeMap::new();
    for (place, expr) in [
        (
            "ok",
            "sum(rate(send_worker_outcomes_total{result=\"sent\"}[5m]))",
        ),
        (
            "ok histogram",
            "histogram_quantile(0.9, rate(send_worker_end_to_end_seconds_bucket[5m]))",
        ),
        (
            "bogus",
            "rate(send_worker_messages_sent_total{job=\"send_worker_not_a_metric\"}[5m])",
        ),
    ] {
        for name in metric_names_in_expr(expr, "send_worker_") {
            used.entry(name)
                .or_insert_with(Vec::new)
                .push(place.to_string());
        }
    }
    assert_eq!(
        used.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "send_worker_end_to_end_seconds",
            "send_worker_messages_sent_total",
            "send_worker_outcomes_total"
        ],
        "label values are not metric names; histogram suffixes are stripped"
    );
    let missing = names_missing_from_contract(&used, &contract);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].starts_with("send_worker_messages_sent_total"),
        "{missing:?}"
    );
}

/// RabbitMQ metric names as the rabbitmq_prometheus plugin (3.10 to 4.x)
/// emits them, and the /metrics/detailed family each needs.
const RABBITMQ_METRICS: &[(&str, &str)] = &[
    ("rabbitmq_detailed_queue_messages", "queue_coarse_metrics"),
    (
        "rabbitmq_detailed_queue_messages_ready",
        "queue_coarse_metrics",
    ),
    (
        "rabbitmq_detailed_queue_messages_unacked",
        "queue_coarse_metrics",
    ),
    ("rabbitmq_detailed_queue_consumers", "queue_consumer_count"),
];

#[test]
fn rabbitmq_metrics_used_are_real_and_scraped() {
    let prom = yaml_one("prometheus/prometheus.yml");
    let families: BTreeSet<String> = array_at(&prom, "/scrape_configs")
        .iter()
        .filter(|j| j["metrics_path"] == "/metrics/detailed")
        .flat_map(|j| {
            j["params"]["family"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    let known: BTreeMap<&str, &str> = RABBITMQ_METRICS.iter().copied().collect();
    let mut seen = 0;
    for (place, expr) in promql_expressions() {
        for name in metric_names_in_expr(&expr, "rabbitmq_") {
            let family = known.get(name.as_str()).unwrap_or_else(|| {
                panic!("{place}: {name} is not a metric this setup scrapes from RabbitMQ")
            });
            assert!(
                families.contains(*family),
                "{place}: {name} needs family {family} in the detailed scrape"
            );
            assert!(
                expr.contains("queue=\"messages.send") || expr.contains("queue=~\"messages"),
                "{place}: {name} should select a queue"
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no RabbitMQ queue metrics used");
}
