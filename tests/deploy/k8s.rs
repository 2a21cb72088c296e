//! deploy/k8s: every overlay is rendered with `kubectl kustomize`, and the
//! rendered objects are checked: one scrape path, probes, a termination grace
//! period above the worker's drain, a configuration (mounted file plus
//! variables) that the worker's own loader accepts, no message rate divided
//! by a replica count, selectors that select the pods, and a PrometheusRule
//! that holds exactly the rules of deploy/prometheus/alerts.yml.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value as Json;

use send_worker::config::Settings;

use crate::common::*;

/// Drain margin: SIGKILL must come at least this long after the drain ends.
const GRACE_MARGIN_SECS: u64 = 5;

fn render(dir: &Path) -> Vec<Json> {
    let kubectl = kubectl();
    let out = run(
        &cmd(&kubectl, &["kustomize", &dir.to_string_lossy()]),
        &repo_root(),
    );
    let docs = yaml_docs_str(&out).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(!docs.is_empty(), "{} renders nothing", dir.display());
    docs
}

fn overlays() -> Vec<(String, Vec<Json>)> {
    let dir = deploy_dir().join("k8s/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"dev".to_string()) && names.contains(&"prod".to_string()),
        "overlays: {names:?}"
    );
    names
        .into_iter()
        .map(|n| {
            let objects = render(&dir.join(&n));
            (n, objects)
        })
        .collect()
}

fn find<'a>(objects: &'a [Json], kind: &str, name: &str) -> Option<&'a Json> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(objects: &'a [Json], kind: &str, name: &str, overlay: &str) -> &'a Json {
    find(objects, kind, name).unwrap_or_else(|| panic!("{overlay}: no {kind}/{name}"))
}

fn of_kind<'a>(objects: &'a [Json], kind: &str) -> Vec<&'a Json> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The example Secrets (never applied): name -> key -> placeholder value.
fn example_secrets() -> BTreeMap<String, BTreeMap<String, String>> {
    let docs = yaml_docs(&deploy_dir().join("k8s/base/secret.example.yaml")).expect("secrets");
    let mut out = BTreeMap::new();
    for d in docs {
        assert_eq!(d["kind"], "Secret");
        let data: BTreeMap<String, String> = d["stringData"]
            .as_object()
            .expect("stringData")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_string()))
            .collect();
        for v in data.values() {
            assert!(
                v.contains("REPLACE_ME"),
                "example secrets hold placeholders only: {v}"
            );
        }
        out.insert(str_at(&d, "/metadata/name").to_string(), data);
    }
    out
}

/// What the worker container would see: its `--config` file (from the
/// mounted ConfigMap) and its environment (envFrom ConfigMaps, `env`
/// values, Secrets replaced by the example placeholders).
struct Effective {
    toml: String,
    env: HashMap<String, String>,
    settings: Settings,
}

fn effective_config(overlay: &str, objects: &[Json], container: &Json, pod: &Json) -> Effective {
    let secrets = example_secrets();
    let args: Vec<&str> = array_at(container, "/args")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .unwrap_or_else(|| panic!("{overlay}: args {args:?} pass no --config"));
    let path = args[at + 1];
    assert_eq!(args.last(), Some(&"run"), "{overlay}: args {args:?}");
    // The file comes from a ConfigMap volume mounted over its directory.
    let (dir, file) = path.rsplit_once('/').expect("an absolute --config path");
    let mount = array_at(container, "/volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{overlay}: nothing is mounted at {dir}"));
    assert_eq!(
        mount["readOnly"], true,
        "{overlay}: the config mount is read-only"
    );
    let volume = array_at(pod, "/volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let cm_name = str_at(volume, "/configMap/name");
    let cm = get(objects, "ConfigMap", cm_name, overlay);
    let toml = cm["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("{overlay}: ConfigMap {cm_name} has no key {file}"))
        .to_string();

    let mut env = HashMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let name = str_at(from, "/configMapRef/name");
        let cm = get(objects, "ConfigMap", name, overlay);
        for (k, v) in cm["data"].as_object().expect("ConfigMap data") {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{overlay}: ConfigMap {name} {k}: values are strings"));
            env.insert(k.clone(), v.to_string());
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = str_at(e, "/name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let s = str_at(e, "/valueFrom/secretKeyRef/name");
            let k = str_at(e, "/valueFrom/secretKeyRef/key");
            secrets
                .get(s)
                .and_then(|d| d.get(k))
                .unwrap_or_else(|| panic!("{overlay}: {name} reads Secret {s}/{k}, which secret.example.yaml does not show"))
                .clone()
        };
        env.insert(name, value);
    }
    let settings = load_settings(overlay, Some(&toml), &env).unwrap_or_else(|e| panic!("{e}"));
    settings
        .require_api_key()
        .unwrap_or_else(|e| panic!("{overlay}: {e}"));
    Effective {
        toml,
        env,
        settings,
    }
}

fn matches_labels(selector: &Json, labels: &Json, what: &str) {
    let sel = selector
        .as_object()
        .unwrap_or_else(|| panic!("{what}: selector {selector}"));
    assert!(!sel.is_empty(), "{what}: empty selector");
    for (k, v) in sel {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{what}: selector {k}={v} does not match the labels {labels}"
        );
    }
}

#[test]
fn every_overlay_renders_and_the_rendered_manifests_hold() {
    let mut numbers_from_env = false;
    let mut numbers_from_file = false;
    for (overlay, objects) in overlays() {
        let deploy = get(&objects, "Deployment", "send-worker", &overlay);
        assert!(
            deploy["spec"].get("replicas").is_none(),
            "{overlay}: replicas belong to the autoscaler"
        );
        let pod = &deploy["spec"]["template"];
        let pod_labels = &pod["metadata"]["labels"];
        matches_labels(
            &deploy["spec"]["selector"]["matchLabels"],
            pod_labels,
            "Deployment",
        );
        let spec = &pod["spec"];
        let containers = array_at(spec, "/containers");
        assert_eq!(containers.len(), 1, "{overlay}: one container");
        let c = &containers[0];

        // Probes: liveness /healthz, readiness /readyz, on the http port (9090).
        let ports: BTreeMap<&str, u64> = array_at(c, "/ports")
            .iter()
            .map(|p| {
                (
                    str_at(p, "/name"),
                    p["containerPort"].as_u64().expect("port"),
                )
            })
            .collect();
        assert_eq!(
            ports.get("http"),
            Some(&9090),
            "{overlay}: container port http"
        );
        let probe = |name: &str| -> Option<String> {
            let p = c.get(name)?;
            let port = &p["httpGet"]["port"];
            assert!(
                *port == "http" || *port == 9090,
                "{overlay}: {name} port {port}"
            );
            Some(str_at(p, "/httpGet/path").to_string())
        };
        assert_eq!(
            probe("readinessProbe").as_deref(),
            Some("/readyz"),
            "{overlay}"
        );
        assert_eq!(
            probe("livenessProbe").as_deref(),
            Some("/healthz"),
            "{overlay}"
        );
        if let Some(p) = probe("startupProbe") {
            assert_eq!(p, "/healthz", "{overlay}: startupProbe");
        }

        // The configuration the pod runs with, loaded by the worker's loader.
        let eff = effective_config(&overlay, &objects, c, spec);
        let drain = eff.settings.worker.shutdown_grace_secs;
        let tgps = spec["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{overlay}: terminationGracePeriodSeconds"));
        assert!(
            tgps >= drain + GRACE_MARGIN_SECS,
            "{overlay}: terminationGracePeriodSeconds {tgps} must exceed the {drain}s drain \
             (worker.shutdown_grace_secs) by at least {GRACE_MARGIN_SECS}s"
        );
        if eff.env.contains_key("SEND_WORKER__PACING__NUMBERS") {
            numbers_from_env = true;
            assert!(!eff.settings.pacing.numbers.is_empty(), "{overlay}");
        }
        if eff.toml.parse::<toml::Table>().ok().and_then(|t| {
            t.get("pacing")?
                .get("numbers")?
                .as_table()
                .map(|n| !n.is_empty())
        }) == Some(true)
        {
            numbers_from_file = true;
        }

        // Message rates are the account's, not shares of it: with the shared
        // limiter, dividing by the replica count only wastes throughput. Any
        // replica cap up to 16 counts (an overlay may share a file written
        // for another overlay's cap).
        let max_replicas = of_kind(&objects, "ScaledObject")
            .iter()
            .filter_map(|so| so["spec"]["maxReplicaCount"].as_u64())
            .chain(
                of_kind(&objects, "HorizontalPodAutoscaler")
                    .iter()
                    .filter_map(|h| h["spec"]["maxReplicas"].as_u64()),
            )
            .max()
            .unwrap_or(0)
            .max(16);
        let defaults = default_settings().pacing;
        let p = &eff.settings.pacing;
        for (key, value, default) in [
            (
                "account_sms_per_second",
                p.account_sms_per_second,
                defaults.account_sms_per_second,
            ),
            (
                "account_mms_per_second",
                p.account_mms_per_second,
                defaults.account_mms_per_second,
            ),
            (
                "long_code_per_second",
                p.long_code_per_second,
                defaults.long_code_per_second,
            ),
            (
                "toll_free_per_second",
                p.toll_free_per_second,
                defaults.toll_free_per_second,
            ),
            (
                "short_code_per_second",
                p.short_code_per_second,
                defaults.short_code_per_second,
            ),
            (
                "alphanumeric_per_second",
                p.alphanumeric_per_second,
                defaults.alphanumeric_per_second,
            ),
        ] {
            for n in 2..=max_replicas {
                let share = default / n as f64;
                assert!(
                    default == 0.0 || (value - share).abs() > 1e-9,
                    "{overlay}: pacing.{key} = {value} is the default {default} divided by {n} replicas"
                );
            }
        }

        // One scrape path: the pod template's annotations, or a
        // ServiceMonitor / PodMonitor, never both and never the Service.
        let annotations = &pod["metadata"]["annotations"];
        let pod_scraped = annotations["prometheus.io/scrape"] == "true";
        if pod_scraped {
            assert_eq!(annotations["prometheus.io/port"], "9090", "{overlay}");
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{overlay}");
        }
        let monitors =
            of_kind(&objects, "ServiceMonitor").len() + of_kind(&objects, "PodMonitor").len();
        assert_eq!(
            usize::from(pod_scraped) + monitors,
            1,
            "{overlay}: exactly one scrape path (pod annotations: {pod_scraped}, monitors: {monitors})"
        );
        for o in &objects {
            if o["kind"] != "Deployment" {
                let has = o["metadata"]["annotations"]
                    .as_object()
                    .is_some_and(|a| a.keys().any(|k| k.starts_with("prometheus.io/")));
                assert!(
                    !has,
                    "{overlay}: {} {} carries prometheus.io annotations (only the pod template may)",
                    o["kind"], o["metadata"]["name"]
                );
            }
        }

        // Service, PDB and ServiceMonitor select the pods.
        let svc = get(&objects, "Service", "send-worker", &overlay);
        matches_labels(&svc["spec"]["selector"], pod_labels, "Service");
        assert!(
            array_at(svc, "/spec/ports")
                .iter()
                .any(|p| p["name"] == "http"
                    && (p["targetPort"] == "http" || p["targetPort"] == 9090)),
            "{overlay}: Service port http"
        );
        let pdb = get(&objects, "PodDisruptionBudget", "send-worker", &overlay);
        matches_labels(&pdb["spec"]["selector"]["matchLabels"], pod_labels, "PDB");
        for sm in of_kind(&objects, "ServiceMonitor") {
            matches_labels(
                &sm["spec"]["selector"]["matchLabels"],
                &svc["metadata"]["labels"],
                "ServiceMonitor",
            );
            let ep = &array_at(sm, "/spec/endpoints")[0];
            assert_eq!(ep["port"], "http", "{overlay}: ServiceMonitor port");
            assert_eq!(ep["path"], "/metrics", "{overlay}: ServiceMonitor path");
        }

        // Security: non-root, read-only root filesystem, nothing extra.
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{overlay}");
        let csc = &c["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{overlay}");
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{overlay}");
        assert!(array_at(csc, "/capabilities/drop").contains(&Json::from("ALL")));
        assert!(
            c["resources"]["requests"]["cpu"].is_string()
                && c["resources"]["limits"]["memory"].is_string(),
            "{overlay}: resources"
        );

        // KEDA: scale the Deployment on the work queue the pods consume.
        for so in of_kind(&objects, "ScaledObject") {
            assert_eq!(str_at(so, "/spec/scaleTargetRef/name"), "send-worker");
            let min = so["spec"]["minReplicaCount"]
                .as_u64()
                .expect("minReplicaCount");
            let max = so["spec"]["maxReplicaCount"]
                .as_u64()
                .expect("maxReplicaCount");
            assert!(
                min >= 1 && min <= max,
                "{overlay}: replica bounds {min}..{max}"
            );
            let rabbit = array_at(so, "/spec/triggers")
                .iter()
                .find(|t| t["type"] == "rabbitmq")
                .expect("a rabbitmq trigger");
            assert_eq!(
                rabbit["metadata"]["queueName"],
                eff.settings.amqp.queue.as_str(),
                "{overlay}: the KEDA trigger must watch the work queue"
            );
            assert_eq!(rabbit["metadata"]["mode"], "QueueLength");
            for (k, v) in rabbit["metadata"].as_object().expect("trigger metadata") {
                assert!(v.is_string(), "KEDA trigger metadata {k} must be a string");
            }
            let auth = get(
                &objects,
                "TriggerAuthentication",
                str_at(rabbit, "/authenticationRef/name"),
                &overlay,
            );
            let host = array_at(auth, "/spec/secretTargetRef")
                .iter()
                .find(|r| r["parameter"] == "host")
                .expect("TriggerAuthentication maps a secret to `host`");
            let secrets = example_secrets();
            let value = secrets
                .get(str_at(host, "/name"))
                .and_then(|s| s.get(str_at(host, "/key")))
                .expect("the KEDA secret is in secret.example.yaml");
            assert!(value.starts_with("amqp"), "KEDA host example {value}");
        }
        assert!(
            of_kind(&objects, "ScaledObject").is_empty()
                || of_kind(&objects, "HorizontalPodAutoscaler").is_empty(),
            "{overlay}: KEDA and the fallback HPA must not both scale the Deployment"
        );
        assert!(
            of_kind(&objects, "Secret").is_empty(),
            "{overlay}: Secrets come from the operator, not the kustomization"
        );
    }
    assert!(
        numbers_from_env && numbers_from_file,
        "the overlays show [pacing.numbers] both ways (env: {numbers_from_env}, file: {numbers_from_file})"
    );
}

/// The HPA fallback (not in the kustomization) targets the same Deployment
/// with the same bounds as the base's ScaledObject.
#[test]
fn the_hpa_fallback_matches_the_scaled_object() {
    let base = render(&deploy_dir().join("k8s/base"));
    let so = of_kind(&base, "ScaledObject")[0];
    let hpa = yaml_one("k8s/base/hpa-fallback.yaml");
    assert_eq!(str_at(&hpa, "/spec/scaleTargetRef/name"), "send-worker");
    assert_eq!(hpa["spec"]["minReplicas"], so["spec"]["minReplicaCount"]);
    assert_eq!(hpa["spec"]["maxReplicas"], so["spec"]["maxReplicaCount"]);
    assert!(
        array_at(&hpa, "/spec/metrics")
            .iter()
            .any(|m| m["resource"]["name"] == "cpu")
    );
}

/// The PrometheusRule text that belongs in components/monitoring: the
/// groups of alerts.yml, verbatim, under `spec:`.
fn expected_prometheus_rule() -> String {
    let alerts = read(&deploy_dir().join("prometheus/alerts.yml"));
    let at = alerts.find("\ngroups:\n").expect("alerts.yml has groups:") + 1;
    let mut out = String::from(
        "# GENERATED from deploy/prometheus/alerts.yml: do not edit. The rules are the\n\
         # same; tests/deploy checks that they are. After changing alerts.yml, run\n\
         #   SEND_WORKER_REGENERATE=1 cargo test --test deploy prometheus_rule\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: send-worker\n  labels:\n    app.kubernetes.io/name: send-worker\n    \
         app.kubernetes.io/component: worker\n\
         spec:\n",
    );
    for line in alerts[at..].split_inclusive('\n') {
        if line.trim().is_empty() {
            out.push_str(line);
        } else {
            out.push_str("  ");
            out.push_str(line);
        }
    }
    out
}

#[test]
fn the_prometheus_rule_holds_the_rules_of_alerts_yml() {
    let path = deploy_dir().join("k8s/components/monitoring/prometheusrule.yaml");
    let expected = expected_prometheus_rule();
    if std::env::var_os("SEND_WORKER_REGENERATE").is_some() {
        std::fs::write(&path, &expected).expect("write prometheusrule.yaml");
    }
    assert_eq!(
        read(&path),
        expected,
        "{} is out of date with alerts.yml: run SEND_WORKER_REGENERATE=1 cargo test --test deploy prometheus_rule",
        path.display()
    );
    // And as Prometheus would read them: the same groups, rule for rule.
    let rule = &yaml_docs(&path).expect("PrometheusRule")[0];
    let alerts = yaml_one("prometheus/alerts.yml");
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
    // The prod overlay ships it.
    let prod = render(&deploy_dir().join("k8s/overlays/prod"));
    let rendered = get(&prod, "PrometheusRule", "send-worker", "prod");
    assert_eq!(rendered["spec"]["groups"], alerts["groups"]);
}

#[test]
fn the_base_kustomization_applies_no_example_and_one_autoscaler() {
    let k = yaml_one("k8s/base/kustomization.yaml");
    let resources: Vec<&str> = array_at(&k, "/resources")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    for r in &resources {
        assert!(
            deploy_dir().join("k8s/base").join(r).exists(),
            "lists missing {r}"
        );
    }
    assert!(!resources.contains(&"secret.example.yaml"));
    assert!(
        !(resources.contains(&"keda-scaledobject.yaml")
            && resources.contains(&"hpa-fallback.yaml"))
    );
    for file in [
        "secret.example.yaml",
        "hpa-fallback.yaml",
        "keda-scaledobject.yaml",
    ] {
        assert!(
            deploy_dir().join("k8s/base").join(file).exists(),
            "{file} missing"
        );
    }
}
