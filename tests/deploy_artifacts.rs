//! Static checks of the deployment artifacts under `deploy/`.
//!
//! Nothing here needs Docker, Kubernetes or a broker: every YAML/JSON file is
//! parsed and cross-checked against the others and against
//! `config/default.toml`, and every `send_worker_*` metric that an alert or a
//! dashboard panel uses must be listed in `deploy/metrics-contract.txt` (the
//! list a running worker is checked against elsewhere).
//!
//! When `promtool` is on PATH (Debian package `prometheus`), the alert rules,
//! their unit tests, the Prometheus config and every dashboard query are also
//! checked by Prometheus itself; otherwise that test says it skipped.
//!
//! `SEND_WORKER_DEPLOY_DIR` points the tests at another deploy/ directory
//! (its parent must hold `config/default.toml`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;

// ---------------------------------------------------------------------------
// Locations and loading
// ---------------------------------------------------------------------------

pub fn deploy_dir() -> PathBuf {
    match std::env::var_os("SEND_WORKER_DEPLOY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
    }
}

fn repo_root() -> PathBuf {
    deploy_dir()
        .parent()
        .expect("deploy/ has a parent directory")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a (possibly multi-document) YAML file, as JSON values,
/// with `<<` merge keys applied. Empty documents are skipped.
fn yaml_docs(path: &Path) -> Result<Vec<Json>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let mut value =
            serde_yaml::Value::deserialize(de).map_err(|e| format!("document {}: {e}", i + 1))?;
        value
            .apply_merge()
            .map_err(|e| format!("document {}: merge keys: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("document {}: not JSON-compatible: {e}", i + 1))?;
        docs.push(json);
    }
    Ok(docs)
}

fn yaml_one(rel: &str) -> Json {
    let path = deploy_dir().join(rel);
    let mut docs = yaml_docs(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{rel}: expected exactly one YAML document");
    docs.remove(0)
}

fn json_file(rel: &str) -> Json {
    let path = deploy_dir().join(rel);
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// All Kubernetes objects in deploy/k8s, keyed by (kind, name), with the file they came from.
fn k8s_objects() -> BTreeMap<(String, String), (String, Json)> {
    let mut objects = BTreeMap::new();
    for path in files_under(&deploy_dir().join("k8s")) {
        if !has_ext(&path, &["yml", "yaml"]) {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in yaml_docs(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let name = doc
                .pointer("/metadata/name")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
            assert!(!kind.is_empty(), "{file}: an object without kind");
            if kind != "Kustomization" {
                assert!(!name.is_empty(), "{file}: a {kind} without metadata.name");
            }
            let previous = objects.insert((kind.clone(), name.clone()), (file.clone(), doc));
            assert!(previous.is_none(), "{file}: duplicate {kind}/{name}");
        }
    }
    objects
}

fn k8s<'a>(
    objects: &'a BTreeMap<(String, String), (String, Json)>,
    kind: &str,
    name: &str,
) -> &'a Json {
    &objects
        .get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("deploy/k8s has no {kind}/{name}"))
        .1
}

fn str_at<'a>(v: &'a Json, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("missing string at {pointer}"))
}

fn array_at<'a>(v: &'a Json, pointer: &str) -> &'a Vec<Json> {
    v.pointer(pointer)
        .and_then(Json::as_array)
        .unwrap_or_else(|| panic!("missing array at {pointer}"))
}

// ---------------------------------------------------------------------------
// config/default.toml (a small line parser: the test has no TOML dependency)
// ---------------------------------------------------------------------------

/// `section.key` -> raw value (quotes removed) for every key in config/default.toml.
fn default_config() -> BTreeMap<String, String> {
    let text = read(&repo_root().join("config/default.toml"));
    let mut section = String::new();
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            section = rest.trim_end_matches(']').trim().to_string();
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            let value = value.split(" #").next().unwrap().trim().trim_matches('"');
            keys.insert(format!("{section}.{key}"), value.to_string());
        }
    }
    assert!(!keys.is_empty(), "config/default.toml has no keys");
    keys
}

fn config_value(config: &BTreeMap<String, String>, key: &str) -> String {
    config
        .get(key)
        .unwrap_or_else(|| panic!("config/default.toml has no {key}"))
        .clone()
}

fn config_u64(config: &BTreeMap<String, String>, key: &str) -> u64 {
    config_value(config, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// The worker rejects unknown configuration keys at start-up, so every
/// `SEND_WORKER__SECTION__KEY` a manifest sets must name a key that exists.
fn assert_env_names_config_keys<'a>(
    where_: &str,
    names: impl IntoIterator<Item = &'a str>,
    config: &BTreeMap<String, String>,
) {
    for name in names {
        let Some(rest) = name.strip_prefix("SEND_WORKER__") else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        assert!(
            config.contains_key(&key),
            "{where_}: {name} sets `{key}`, which config/default.toml does not have (the worker would refuse to start)"
        );
    }
}

// ---------------------------------------------------------------------------
// Metric names: extraction and the contract
// ---------------------------------------------------------------------------

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
            line.starts_with("send_worker_")
                && line
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "metrics-contract.txt:{}: `{line}` is not a send_worker_ metric family name",
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
    let tests_path = deploy_dir().join("prometheus/alerts.test.yml");
    if tests_path.exists() {
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
            for expr_test in test["promql_expr_test"].as_array().into_iter().flatten() {
                if let Some(e) = expr_test["expr"].as_str() {
                    out.push((
                        format!("alerts.test.yml test {} expression", i + 1),
                        e.to_string(),
                    ));
                }
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

/// Every `send_worker_*` metric family used by the alerts and dashboards,
/// mapped to where it is used.
pub fn used_worker_metrics() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in promql_expressions() {
        for name in metric_names_in_expr(&expr, "send_worker_") {
            used.entry(name).or_default().push(place.clone());
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

fn all_panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        for inner in panel["panels"].as_array().into_iter().flatten() {
            out.push(inner);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut checked = 0;
    let mut errors = Vec::new();
    for path in files_under(&deploy_dir()) {
        if has_ext(&path, &["yml", "yaml"]) {
            match yaml_docs(&path) {
                Ok(docs) if docs.is_empty() => {
                    errors.push(format!("{}: no YAML document", path.display()))
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
            checked += 1;
        } else if has_ext(&path, &["json"]) {
            if let Err(e) = serde_json::from_str::<Json>(&read(&path)) {
                errors.push(format!("{}: {e}", path.display()));
            }
            checked += 1;
        }
    }
    assert!(
        errors.is_empty(),
        "unparsable files:\n{}",
        errors.join("\n")
    );
    assert!(
        checked >= 15,
        "expected the deploy/ YAML and JSON files, found only {checked}"
    );
}

#[test]
fn compose_stack_runs_worker_simulator_broker_and_monitoring() {
    let compose = yaml_one("docker-compose.yml");
    let services = compose["services"].as_object().expect("compose services");
    for name in ["rabbitmq", "worker", "simulator", "prometheus", "grafana"] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml has no service {name}"
        );
    }
    let config = default_config();
    let worker = &services["worker"];
    let simulator = &services["simulator"];

    // The worker and the simulator are the same image, built from deploy/Dockerfile.
    for (name, svc) in [("worker", worker), ("simulator", simulator)] {
        assert_eq!(
            svc["image"], worker["image"],
            "{name}: image differs from the worker's"
        );
        let dockerfile = str_at(svc, "/build/dockerfile");
        let context = str_at(svc, "/build/context");
        let root = deploy_dir().join(context);
        assert!(
            root.join("Cargo.toml").exists(),
            "{name}: build context {context} has no Cargo.toml"
        );
        assert!(
            root.join(dockerfile).exists(),
            "{name}: {dockerfile} not found in the build context"
        );
    }

    // The simulator listens where the worker sends.
    let sim_cmd: Vec<&str> = array_at(simulator, "/command")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert_eq!(
        sim_cmd.first(),
        Some(&"simulate"),
        "simulator command: {sim_cmd:?}"
    );
    let listen = sim_cmd
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| sim_cmd.get(i + 1))
        .expect("simulator --listen ADDR");
    let port = listen.rsplit(':').next().unwrap();
    let env = worker["environment"]
        .as_object()
        .expect("worker environment as a map");
    assert_eq!(
        env["SEND_WORKER__TELNYX__BASE_URL"],
        format!("http://simulator:{port}/v2").as_str(),
        "the worker must call the simulator"
    );
    assert!(
        env.get("SEND_WORKER__TELNYX__API_KEY")
            .and_then(Json::as_str)
            .is_some_and(|k| !k.is_empty()),
        "the worker needs a (dummy) API key to start"
    );
    let amqp = env["SEND_WORKER__AMQP__URL"]
        .as_str()
        .expect("worker AMQP URL");
    assert!(
        amqp.starts_with("amqp://") && amqp.contains("@rabbitmq:5672/"),
        "AMQP URL {amqp}"
    );
    assert_eq!(
        str_at(worker, "/depends_on/rabbitmq/condition"),
        "service_healthy",
        "the worker must wait for the broker"
    );
    for (name, svc) in services {
        if let Some(env) = svc["environment"].as_object() {
            assert_env_names_config_keys(
                &format!("docker-compose.yml {name}"),
                env.keys().map(String::as_str),
                &config,
            );
        }
    }

    // The drain must fit in the stop grace period.
    let grace = config_u64(&config, "worker.shutdown_grace_secs");
    let stop = str_at(worker, "/stop_grace_period");
    let stop_secs: u64 = stop
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("stop_grace_period like 35s");
    assert!(
        stop_secs > grace,
        "worker stop_grace_period {stop} must exceed the {grace}s drain"
    );

    // Every bind-mounted file or directory exists.
    for (name, svc) in services {
        for volume in svc["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let source = spec.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    deploy_dir().join(source).exists(),
                    "{name}: bind mount source {source} does not exist"
                );
            }
        }
    }

    // RabbitMQ: plugins, definitions directory, Prometheus port.
    let rabbit_volumes: Vec<&str> = array_at(&services["rabbitmq"], "/volumes")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    let conf = read(&deploy_dir().join("rabbitmq/rabbitmq.conf"));
    let defs_dir = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("load_definitions"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map(str::trim)
        .expect("rabbitmq.conf sets load_definitions");
    assert!(
        rabbit_volumes
            .iter()
            .any(|v| v.starts_with("./rabbitmq/definitions.json:")
                && v.contains(&format!("{defs_dir}/"))),
        "definitions.json must be mounted into {defs_dir}"
    );
    assert!(
        rabbit_volumes
            .iter()
            .any(|v| v.contains("rabbitmq.conf:/etc/rabbitmq/")),
        "rabbitmq.conf is not mounted"
    );
    assert!(
        rabbit_volumes
            .iter()
            .any(|v| v.ends_with(":/etc/rabbitmq/enabled_plugins:ro")),
        "enabled_plugins is not mounted"
    );
    let plugins = read(&deploy_dir().join("rabbitmq/enabled_plugins"));
    for plugin in ["rabbitmq_management", "rabbitmq_prometheus"] {
        assert!(plugins.contains(plugin), "enabled_plugins lacks {plugin}");
    }
    assert!(
        str_at(&services["rabbitmq"], "/image").starts_with("rabbitmq:3.13"),
        "RabbitMQ 3.13 image"
    );

    // Prometheus gets its config and rules, Grafana its provisioning.
    let prom_volumes: Vec<&str> = array_at(&services["prometheus"], "/volumes")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert!(
        prom_volumes.contains(&"./prometheus:/etc/prometheus:ro"),
        "prometheus volumes: {prom_volumes:?}"
    );
    let graf_volumes: Vec<&str> = array_at(&services["grafana"], "/volumes")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    let provider = yaml_one("grafana/provisioning/dashboards/send-worker.yml");
    let dash_path = str_at(&provider, "/providers/0/options/path");
    assert!(
        graf_volumes.contains(&format!("./grafana/dashboards:{dash_path}:ro").as_str()),
        "Grafana must mount the dashboards at {dash_path}: {graf_volumes:?}"
    );
    assert!(
        graf_volumes
            .iter()
            .any(|v| v.ends_with(":/etc/grafana/provisioning/datasources:ro"))
    );
    assert!(
        graf_volumes
            .iter()
            .any(|v| v.ends_with(":/etc/grafana/provisioning/dashboards:ro"))
    );
}

#[test]
fn prometheus_scrapes_the_worker_and_per_queue_rabbitmq_metrics() {
    let prom = yaml_one("prometheus/prometheus.yml");
    let mut targets: BTreeMap<String, (String, Json)> = BTreeMap::new();
    for job in array_at(&prom, "/scrape_configs") {
        let name = str_at(job, "/job_name").to_string();
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in array_at(sc, "/targets") {
                let path = job["metrics_path"]
                    .as_str()
                    .unwrap_or("/metrics")
                    .to_string();
                targets.insert(
                    format!("{name} {} {path}", t.as_str().unwrap()),
                    (name.clone(), job.clone()),
                );
            }
        }
    }
    assert!(
        targets.contains_key("send-worker worker:9090 /metrics"),
        "targets: {:?}",
        targets.keys()
    );
    assert!(
        targets
            .keys()
            .any(|k| k.contains("rabbitmq:15692 /metrics/detailed")),
        "no detailed RabbitMQ scrape"
    );
    let detailed = targets
        .iter()
        .find(|(k, _)| k.contains("/metrics/detailed"))
        .map(|(_, (_, job))| job)
        .unwrap();
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
    for rule_file in array_at(&prom, "/rule_files") {
        let rel = rule_file.as_str().unwrap();
        assert!(
            deploy_dir().join("prometheus").join(rel).exists(),
            "rule file {rel} does not exist"
        );
    }

    // The dashboard's default datasource is the provisioned one.
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

#[test]
fn rabbitmq_definitions_match_the_worker_configuration() {
    let config = default_config();
    let defs = json_file("rabbitmq/definitions.json");
    let exchange = config_value(&config, "amqp.exchange");
    let events = config_value(&config, "amqp.events_exchange");
    let queue = config_value(&config, "amqp.queue");
    let dlq = config_value(&config, "amqp.dead_letter_queue");
    let routing_key = config_value(&config, "amqp.routing_key");
    let dead_key = config_value(&config, "amqp.dead_routing_key");
    let prefix = config_value(&config, "amqp.retry_queue_prefix");

    assert!(
        array_at(&defs, "/users").is_empty(),
        "definitions.json must not carry users; the operator sets them"
    );
    assert!(
        array_at(&defs, "/permissions").is_empty(),
        "definitions.json must not carry permissions"
    );
    assert!(
        array_at(&defs, "/vhosts").iter().any(|v| v["name"] == "/"),
        "vhost / is declared"
    );

    let exchanges: BTreeMap<&str, &Json> = array_at(&defs, "/exchanges")
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    for name in [exchange.as_str(), events.as_str()] {
        let e = exchanges
            .get(name)
            .unwrap_or_else(|| panic!("exchange {name} is not declared"));
        assert_eq!(e["type"], "topic", "{name} type");
        assert_eq!(e["durable"], true, "{name} durable");
        assert_eq!(e["vhost"], "/", "{name} vhost");
    }

    let queues: BTreeMap<&str, &Json> = array_at(&defs, "/queues")
        .iter()
        .map(|q| (q["name"].as_str().unwrap(), q))
        .collect();
    for q in queues.values() {
        assert_eq!(q["durable"], true, "{} must be durable", q["name"]);
        assert_eq!(
            q["auto_delete"], false,
            "{} must not auto-delete",
            q["name"]
        );
        assert_eq!(
            q.pointer("/arguments/x-queue-type"),
            Some(&Json::from("quorum")),
            "{} must be a quorum queue",
            q["name"]
        );
    }
    // Queue arguments must be exactly what the worker passes when it declares
    // the same queues (src/amqp/topology.rs, Topology::*_args): RabbitMQ refuses a
    // redeclaration whose arguments differ, missing or extra keys included.
    let assert_args = |name: &str, expected: Json| {
        let q = queues
            .get(name)
            .unwrap_or_else(|| panic!("queue {name} is not declared"));
        assert_eq!(
            q["arguments"], expected,
            "{name}: arguments differ from what the worker declares"
        );
    };
    let delivery_limit = config_u64(&config, "amqp.delivery_limit");
    let mut work_args = serde_json::json!({
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": dead_key,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    });
    if delivery_limit > 0 {
        work_args["x-delivery-limit"] = Json::from(delivery_limit);
    }
    assert_args(&queue, work_args);
    assert_args(&dlq, serde_json::json!({ "x-queue-type": "quorum" }));

    let bindings: BTreeSet<(String, String, String)> = array_at(&defs, "/bindings")
        .iter()
        .map(|b| {
            assert_eq!(b["destination_type"], "queue");
            assert!(
                exchanges.contains_key(b["source"].as_str().unwrap()),
                "binding from an undeclared exchange: {b}"
            );
            assert!(
                queues.contains_key(b["destination"].as_str().unwrap()),
                "binding to an undeclared queue: {b}"
            );
            (
                b["source"].as_str().unwrap().to_string(),
                b["routing_key"].as_str().unwrap().to_string(),
                b["destination"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        bindings.contains(&(exchange.clone(), routing_key.clone(), queue.clone())),
        "{exchange} -{routing_key}-> {queue}"
    );
    assert!(
        bindings.contains(&(exchange.clone(), dead_key.clone(), dlq.clone())),
        "{exchange} -{dead_key}-> {dlq}"
    );

    // Retry tiers: exactly the ladder the worker computes from retry.*, each
    // dead-lettering back to the work queue. A retry copy carries its delay as
    // a per-message TTL, so a tier has no queue-level x-message-ttl.
    let expected_tiers: Vec<String> = retry_tier_labels(&config)
        .into_iter()
        .map(|label| format!("{prefix}.{label}"))
        .collect();
    let declared_tiers: Vec<String> = queues
        .keys()
        .filter(|n| n.starts_with(&format!("{prefix}.")))
        .map(|n| n.to_string())
        .collect();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(declared_tiers),
        sorted(expected_tiers.clone()),
        "retry tier queues differ from the worker's ladder (retry.base_ms, retry.factor, retry.cap_ms)"
    );
    for name in &expected_tiers {
        assert_args(
            name,
            serde_json::json!({
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": exchange,
                "x-dead-letter-routing-key": routing_key,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }),
        );
        let label = name.strip_prefix(&format!("{prefix}.")).unwrap();
        assert!(
            bindings.contains(&(exchange.clone(), format!("retry.{label}"), name.clone())),
            "{name}: no binding {exchange} -retry.{label}->"
        );
    }

    // The compose-only user file is a separate file and never part of the topology.
    let users = json_file("rabbitmq/compose-users.json");
    assert!(users.get("queues").is_none() && users.get("exchanges").is_none());
}

/// The retry tier labels for the `retry.*` settings, computed as the worker's
/// `retry::Backoff::tiers` does: half the base delay, then times the factor
/// (2 if the factor is about 1) while below the cap, then the cap; at most 24.
fn retry_tier_labels(config: &BTreeMap<String, String>) -> Vec<String> {
    const MAX_TIERS: usize = 24;
    let base = config_u64(config, "retry.base_ms") as f64;
    let cap = config_u64(config, "retry.cap_ms");
    let factor: f64 = config_value(config, "retry.factor")
        .parse()
        .expect("retry.factor");
    let step = if factor > 1.05 { factor } else { 2.0 };
    let mut delays: Vec<u64> = Vec::new();
    let mut d = (base * 0.5).max(1.0);
    while (d as u64) < cap && delays.len() < MAX_TIERS - 1 {
        delays.push(d as u64);
        d *= step;
    }
    delays.push(cap);
    delays.dedup();
    delays
        .into_iter()
        .map(|ms| {
            if ms >= 1000 && ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        })
        .collect()
}

#[test]
fn kubernetes_manifests_are_consistent() {
    let objects = k8s_objects();
    let config = default_config();

    // Kustomization: every resource exists; the example secret and the HPA
    // fallback are not applied alongside KEDA.
    let kustomization = yaml_one("k8s/kustomization.yaml");
    let resources: Vec<&str> = array_at(&kustomization, "/resources")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    for r in &resources {
        assert!(
            deploy_dir().join("k8s").join(r).exists(),
            "kustomization lists missing {r}"
        );
    }
    assert!(
        !resources.contains(&"secret.example.yaml"),
        "the example Secret must not be applied"
    );
    assert!(
        !(resources.contains(&"keda-scaledobject.yaml")
            && resources.contains(&"hpa-fallback.yaml")),
        "KEDA and the fallback HPA must not both scale the Deployment"
    );
    for required in [
        "deployment.yaml",
        "service.yaml",
        "configmap.yaml",
        "pdb.yaml",
    ] {
        assert!(
            resources.contains(&required),
            "kustomization does not list {required}"
        );
    }
    for file in [
        "secret.example.yaml",
        "hpa-fallback.yaml",
        "keda-scaledobject.yaml",
    ] {
        assert!(
            deploy_dir().join("k8s").join(file).exists(),
            "deploy/k8s/{file} is missing"
        );
    }

    let deploy = k8s(&objects, "Deployment", "send-worker");
    let pod = &deploy["spec"]["template"];
    let pod_labels = pod["metadata"]["labels"].as_object().expect("pod labels");
    let matches_pod = |selector: &Json, what: &str| {
        let sel = selector
            .as_object()
            .unwrap_or_else(|| panic!("{what}: selector"));
        assert!(!sel.is_empty(), "{what}: empty selector");
        for (k, v) in sel {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{what}: selector {k}={v} does not match the pod labels"
            );
        }
    };
    matches_pod(&deploy["spec"]["selector"]["matchLabels"], "Deployment");
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "replicas belong to the autoscaler"
    );

    let spec = &pod["spec"];
    let containers = array_at(spec, "/containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let ports: BTreeMap<&str, u64> = array_at(c, "/ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports.get("http"), Some(&9090), "container port http: 9090");
    let probe_path = |probe: &str| -> String {
        let port = &c[probe]["httpGet"]["port"];
        assert!(*port == "http" || *port == 9090, "{probe} port {port}");
        str_at(c, &format!("/{probe}/httpGet/path")).to_string()
    };
    assert_eq!(probe_path("readinessProbe"), "/readyz");
    assert_eq!(probe_path("livenessProbe"), "/healthz");
    if c.get("startupProbe").is_some() {
        assert_eq!(probe_path("startupProbe"), "/healthz");
    }

    // Drain: terminationGracePeriodSeconds must exceed the worker's shutdown grace.
    let cm = k8s(&objects, "ConfigMap", "send-worker-config");
    let cm_data = cm["data"].as_object().expect("ConfigMap data");
    let grace = cm_data
        .get("SEND_WORKER__WORKER__SHUTDOWN_GRACE_SECS")
        .and_then(Json::as_str)
        .map(|s| s.parse::<u64>().expect("shutdown grace"))
        .unwrap_or_else(|| config_u64(&config, "worker.shutdown_grace_secs"));
    let tgps = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        tgps > grace,
        "terminationGracePeriodSeconds {tgps} must exceed the {grace}s drain"
    );
    assert!(tgps > 25, "terminationGracePeriodSeconds {tgps}");
    assert_env_names_config_keys(
        "configmap.yaml",
        cm_data.keys().map(String::as_str),
        &config,
    );
    for (k, v) in cm_data {
        assert!(v.is_string(), "ConfigMap {k}: values must be strings");
    }

    // Security: non-root, read-only root filesystem, no privilege escalation.
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let csc = &c["securityContext"];
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert!(array_at(csc, "/capabilities/drop").contains(&Json::from("ALL")));
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );

    // Configuration: ConfigMap via envFrom, secrets by reference.
    assert!(
        array_at(c, "/envFrom")
            .iter()
            .any(|e| e["configMapRef"]["name"] == "send-worker-config")
    );
    let env: BTreeMap<&str, &Json> = array_at(c, "/env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let secret_ref = |var: &str| -> (String, String) {
        let e = env
            .get(var)
            .unwrap_or_else(|| panic!("env {var} is not set"));
        (
            str_at(e, "/valueFrom/secretKeyRef/name").to_string(),
            str_at(e, "/valueFrom/secretKeyRef/key").to_string(),
        )
    };
    assert_eq!(
        secret_ref("SEND_WORKER__TELNYX__API_KEY"),
        ("send-worker-telnyx".into(), "api-key".into())
    );
    let (amqp_secret, amqp_key) = secret_ref("SEND_WORKER__AMQP__URL");
    assert_env_names_config_keys("deployment.yaml", env.keys().copied(), &config);

    // The example secret defines every secret the manifests reference, with placeholders only.
    let examples = yaml_docs(&deploy_dir().join("k8s/secret.example.yaml")).unwrap();
    let example_key = |name: &str, key: &str| -> String {
        let s = examples
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("secret.example.yaml has no Secret {name}"));
        str_at(s, &format!("/stringData/{key}")).to_string()
    };
    assert!(example_key("send-worker-telnyx", "api-key").contains("REPLACE_ME"));
    assert!(example_key(&amqp_secret, &amqp_key).contains("REPLACE_ME"));

    // Service and PDB select the pods.
    let svc = k8s(&objects, "Service", "send-worker");
    matches_pod(&svc["spec"]["selector"], "Service");
    assert!(
        array_at(svc, "/spec/ports")
            .iter()
            .any(|p| p["targetPort"] == "http" || p["targetPort"] == 9090)
    );
    let pdb = k8s(&objects, "PodDisruptionBudget", "send-worker");
    matches_pod(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );

    // KEDA: scale the Deployment on the length of messages.send.
    let so = k8s(&objects, "ScaledObject", "send-worker");
    assert_eq!(str_at(so, "/spec/scaleTargetRef/name"), "send-worker");
    let min = so["spec"]["minReplicaCount"]
        .as_u64()
        .expect("minReplicaCount");
    let max = so["spec"]["maxReplicaCount"]
        .as_u64()
        .expect("maxReplicaCount");
    assert!(min >= 1 && min <= max, "replica bounds {min}..{max}");
    let triggers = array_at(so, "/spec/triggers");
    let rabbit = triggers
        .iter()
        .find(|t| t["type"] == "rabbitmq")
        .expect("a rabbitmq trigger");
    assert_eq!(
        rabbit["metadata"]["queueName"],
        config_value(&config, "amqp.queue").as_str(),
        "the KEDA trigger must watch the work queue"
    );
    assert_eq!(
        rabbit["metadata"]["mode"], "QueueLength",
        "KEDA trigger mode"
    );
    assert!(
        str_at(rabbit, "/metadata/value")
            .parse::<f64>()
            .is_ok_and(|v| v > 0.0)
    );
    for (k, v) in rabbit["metadata"].as_object().expect("trigger metadata") {
        assert!(
            v.is_string(),
            "KEDA trigger metadata {k} must be a string (the CRD rejects numbers)"
        );
    }
    let auth_name = str_at(rabbit, "/authenticationRef/name");
    let ta = k8s(&objects, "TriggerAuthentication", auth_name);
    let host_ref = array_at(ta, "/spec/secretTargetRef")
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("TriggerAuthentication maps a secret to `host`");
    let host = example_key(str_at(host_ref, "/name"), str_at(host_ref, "/key"));
    assert!(host.starts_with("amqp"), "KEDA host example {host}");

    // HPA fallback targets the same Deployment with the same bounds.
    let hpa = k8s(&objects, "HorizontalPodAutoscaler", "send-worker");
    assert_eq!(str_at(hpa, "/spec/scaleTargetRef/name"), "send-worker");
    assert_eq!(hpa["spec"]["minReplicas"].as_u64(), Some(min));
    assert_eq!(hpa["spec"]["maxReplicas"].as_u64(), Some(max));
    assert!(
        array_at(hpa, "/spec/metrics")
            .iter()
            .any(|m| m["resource"]["name"] == "cpu")
    );
}

#[test]
fn every_alert_is_complete() {
    let alerts = yaml_one("prometheus/alerts.yml");
    let mut names = BTreeSet::new();
    let mut exprs = String::new();
    for group in array_at(&alerts, "/groups") {
        for rule in array_at(group, "/rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            assert!(names.insert(name.to_string()), "duplicate alert {name}");
            let expr = rule["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no expr"));
            assert!(!expr.trim().is_empty(), "{name}: empty expr");
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
            for a in ["summary", "description"] {
                assert!(
                    rule["annotations"][a]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "{name}: no {a} annotation"
                );
            }
            exprs.push_str(expr);
            exprs.push('\n');
        }
    }
    // The situations the rules must cover.
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
    ] {
        assert!(
            exprs.contains(needle),
            "no alert covers {what} (expected `{needle}` in an expr)"
        );
    }
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

/// The check the metrics contract rests on: every `send_worker_*` family used
/// by an alert, an alert test or a dashboard is one the worker promises to export.
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
        contract.len() >= 19,
        "metrics-contract.txt lists only {} families",
        contract.len()
    );
    assert!(
        used.len() >= 15,
        "only {} send_worker_ families found in alerts and dashboards: {:?}",
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

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

fn run_promtool(promtool: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run promtool {args:?}: {e}"));
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prometheus' own checks: rule syntax, rule unit tests, the config, and
/// every dashboard query (Grafana variables replaced by plain values).
#[test]
fn promtool_accepts_rules_config_and_dashboard_queries() {
    let Some(promtool) = promtool() else {
        eprintln!("SKIPPED promtool checks: promtool is not on PATH (apt-get install prometheus)");
        return;
    };
    let prom_dir = deploy_dir().join("prometheus");
    run_promtool(&promtool, &prom_dir, &["check", "rules", "alerts.yml"]);
    run_promtool(&promtool, &prom_dir, &["check", "config", "prometheus.yml"]);
    if prom_dir.join("alerts.test.yml").exists() {
        run_promtool(&promtool, &prom_dir, &["test", "rules", "alerts.test.yml"]);
    }

    // Dashboard queries as recording rules, so promtool parses each one.
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
    let dir = std::env::temp_dir().join(format!("send-worker-deploy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard-queries.yml"), rules).unwrap();
    run_promtool(
        &promtool,
        &dir,
        &["check", "rules", "dashboard-queries.yml"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// deploy/rabbitmq/definitions.json must declare exactly what the worker
/// declares, or the worker's own declare fails with PRECONDITION_FAILED.
#[test]
fn definitions_match_the_topology_the_worker_declares() {
    use lapin::types::{AMQPValue, FieldTable};
    use send_worker::amqp::Topology;
    use send_worker::config::Settings;

    fn to_json(t: &FieldTable) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in t.inner() {
            let v = match v {
                AMQPValue::LongString(s) => {
                    serde_json::Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::LongLongInt(i) => serde_json::Value::from(*i),
                other => panic!("unexpected argument type {other:?}"),
            };
            m.insert(k.as_str().to_owned(), v);
        }
        serde_json::Value::Object(m)
    }

    let settings = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    let topology = Topology::from_settings(&settings);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rabbitmq/definitions.json"
    );
    let defs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("definitions.json"))
            .expect("JSON");
    let queues = defs["queues"].as_array().expect("queues");
    let args_of = |name: &str| {
        queues
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from definitions.json"))["arguments"]
            .clone()
    };
    assert_eq!(
        args_of(&topology.amqp.queue),
        to_json(&topology.work_queue_args())
    );
    assert_eq!(
        args_of(&topology.amqp.dead_letter_queue),
        to_json(&topology.dead_letter_queue_args())
    );
    for tier in &topology.tiers {
        assert_eq!(
            args_of(&topology.tier_queue(tier)),
            to_json(&topology.tier_queue_args()),
            "{}",
            topology.tier_queue(tier)
        );
    }
    assert_eq!(
        queues.len(),
        topology.queues().len(),
        "no queue the worker does not declare"
    );
    let bindings = defs["bindings"].as_array().expect("bindings");
    for tier in &topology.tiers {
        assert!(
            bindings
                .iter()
                .any(|b| b["destination"] == topology.tier_queue(tier).as_str()
                    && b["routing_key"] == topology.tier_routing_key(tier).as_str()
                    && b["source"] == topology.amqp.exchange.as_str()),
            "binding for {}",
            topology.tier_queue(tier)
        );
    }
}
