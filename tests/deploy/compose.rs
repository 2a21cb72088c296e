//! deploy/docker-compose.yml, as `docker compose config` normalises it (the
//! tool rejects what the compose specification does not allow): the worker
//! talks to the simulator, the broker and Redis of the stack with logins that
//! work, its configuration loads, every long-running service has a
//! healthcheck, and the mounts are where the images read them.

use std::collections::HashMap;

use serde_json::Value as Json;

use crate::common::*;

/// The stack with every profile, as `docker compose config` prints it.
fn compose_config() -> Json {
    let mut cmd = docker_compose();
    for a in [
        "-f",
        "docker-compose.yml",
        "--profile",
        "demo",
        "config",
        "--format",
        "json",
    ] {
        cmd.push(a.into());
    }
    let out = run(&cmd, &deploy_dir());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("docker compose config output: {e}"))
}

fn env_of(svc: &Json) -> HashMap<String, String> {
    svc["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn built_from_the_dockerfile(svc: &Json) -> bool {
    svc["build"]["dockerfile"] == "deploy/Dockerfile"
}

#[test]
fn the_worker_uses_the_stacks_simulator_broker_and_redis() {
    let compose = compose_config();
    let services = compose["services"].as_object().expect("services");
    for name in [
        "rabbitmq",
        "redis",
        "worker",
        "simulator",
        "demo",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let worker = &services["worker"];
    let simulator = &services["simulator"];

    // One image, built from deploy/Dockerfile with the simulator compiled in
    // (the production image has none).
    for name in ["worker", "simulator", "demo"] {
        let svc = &services[name];
        assert_eq!(svc["image"], worker["image"], "{name}: image");
        assert!(built_from_the_dockerfile(svc), "{name}: {}", svc["build"]);
        let context = std::path::Path::new(str_at(svc, "/build/context"));
        assert!(context.join("Cargo.toml").exists(), "{name}: build context");
        assert!(context.join("deploy/Dockerfile").exists());
        assert!(
            str_at(svc, "/build/args/CARGO_FEATURES").contains("sim"),
            "{name}: `simulate` and `demo` need the sim feature"
        );
    }

    // The simulator listens where the worker sends.
    let sim_cmd: Vec<&str> = array_at(simulator, "/command")
        .iter()
        .filter_map(Json::as_str)
        .collect();
    assert_eq!(sim_cmd.first(), Some(&"simulate"), "{sim_cmd:?}");
    let listen = sim_cmd
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| sim_cmd.get(i + 1))
        .expect("simulator --listen ADDR");
    let port = listen.rsplit(':').next().unwrap();

    // The worker's configuration, loaded by the worker's own loader.
    let env = env_of(worker);
    let settings = load_settings("compose worker", None, &env).unwrap_or_else(|e| panic!("{e}"));
    settings
        .require_api_key()
        .expect("the worker needs a (dummy) key");
    assert_eq!(
        settings.telnyx.base_url,
        format!("http://simulator:{port}/v2"),
        "the worker must call the simulator"
    );
    for name in ["simulator", "demo"] {
        load_settings(name, None, &env_of(&services[name])).unwrap_or_else(|e| panic!("{e}"));
    }

    // The AMQP login is the compose-only user, with its real password.
    let url = settings.amqp.url.expose();
    let rest = url.strip_prefix("amqp://").expect("amqp:// URL");
    let (login, host) = rest.split_once('@').expect("user:password@host");
    let (user, password) = login.split_once(':').expect("user:password");
    assert!(host.starts_with("rabbitmq:5672/"), "AMQP host {host}");
    let users = json_file("rabbitmq/compose-users.json");
    let entry = array_at(&users, "/users")
        .iter()
        .find(|u| u["name"] == user)
        .unwrap_or_else(|| panic!("compose-users.json has no user {user}"));
    assert!(
        rabbit_password_matches(str_at(entry, "/password_hash"), password),
        "the password in the worker's AMQP URL is not {user}'s"
    );
    assert_eq!(
        services["demo"]["environment"]["SEND_WORKER__AMQP__URL"], url,
        "the demo uses the same login"
    );

    // Redis: the stack's own.
    let redis = settings.redis.url.expose();
    assert!(
        redis.starts_with("redis://redis:6379"),
        "SEND_WORKER__REDIS__URL must point at the redis service: {redis}"
    );

    for dep in ["rabbitmq", "redis", "simulator"] {
        assert_eq!(
            worker["depends_on"][dep]["condition"], "service_healthy",
            "the worker must wait for {dep} to be healthy"
        );
    }

    // The drain must fit in the stop grace period.
    let stop = str_at(worker, "/stop_grace_period");
    let stop_secs: u64 = stop
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("stop_grace_period {stop}"));
    assert!(
        stop_secs >= settings.worker.shutdown_grace_secs + 5,
        "stop_grace_period {stop} must exceed the {}s drain with a margin",
        settings.worker.shutdown_grace_secs
    );
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ password)).
fn rabbit_password_matches(hash_b64: &str, password: &str) -> bool {
    use base64::Engine;
    use sha2::Digest;
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(hash_b64) else {
        return false;
    };
    if bytes.len() != 4 + 32 {
        return false;
    }
    let (salt, digest) = bytes.split_at(4);
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finalize().as_slice() == digest
}

#[test]
fn the_password_check_rejects_a_wrong_password() {
    let users = json_file("rabbitmq/compose-users.json");
    let hash = str_at(&users, "/users/0/password_hash");
    assert!(!rabbit_password_matches(hash, "guest"));
    assert!(!rabbit_password_matches(hash, "send-worker-dev "));
}

#[test]
fn every_long_running_service_has_a_healthcheck() {
    let compose = compose_config();
    for (name, svc) in compose["services"].as_object().expect("services") {
        let hc = &svc["healthcheck"];
        let one_shot =
            svc["profiles"].as_array().is_some_and(|p| !p.is_empty()) && svc["restart"].is_null();
        if one_shot {
            // `run --rm` jobs (the demo) serve no /readyz.
            assert_eq!(
                hc["disable"], true,
                "{name}: disable the image's HEALTHCHECK"
            );
            continue;
        }
        let test: Vec<&str> = array_at(hc, "/test")
            .iter()
            .filter_map(Json::as_str)
            .collect();
        assert!(
            test.first()
                .is_some_and(|t| *t == "CMD" || *t == "CMD-SHELL"),
            "{name}: healthcheck {test:?}"
        );
        if built_from_the_dockerfile(svc) {
            // Distroless: no shell, no curl. The binary probes itself.
            assert_eq!(test[0], "CMD", "{name}: the image has no shell");
            assert_eq!(test.get(1), Some(&"/usr/local/bin/send-worker"), "{name}");
            assert_eq!(test.get(2), Some(&"probe"), "{name}");
        }
    }
}

#[test]
fn mounts_exist_and_land_where_the_images_read_them() {
    let compose = compose_config();
    let services = compose["services"].as_object().expect("services");
    let deploy = std::fs::canonicalize(deploy_dir()).expect("deploy dir");
    let mounts = |name: &str| -> Vec<(String, String)> {
        services[name]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["type"] == "bind")
            .map(|v| {
                (
                    str_at(v, "/source").to_string(),
                    str_at(v, "/target").to_string(),
                )
            })
            .collect()
    };
    for name in services.keys() {
        for (source, _) in mounts(name) {
            assert!(
                std::path::Path::new(&source).exists(),
                "{name}: bind mount source {source} does not exist"
            );
        }
    }
    let from = |rel: &str| deploy.join(rel).to_string_lossy().into_owned();

    // RabbitMQ 4.x, its plugins, its config, and the definitions where it
    // loads them.
    let image = str_at(&services["rabbitmq"], "/image");
    let major: u32 = image
        .strip_prefix("rabbitmq:")
        .and_then(|t| t.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("rabbitmq image {image}"));
    assert!(major >= 4, "{image}: RabbitMQ 3.x has no community support");
    let rabbit = mounts("rabbitmq");
    let conf = read(&deploy_dir().join("rabbitmq/rabbitmq.conf"));
    let defs_dir = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("load_definitions"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .map(str::trim)
        .expect("rabbitmq.conf sets load_definitions");
    let target_of = |mounts: &[(String, String)], rel: &str| {
        mounts
            .iter()
            .find(|(s, _)| *s == from(rel))
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("{rel} is not mounted"))
    };
    assert!(target_of(&rabbit, "rabbitmq/definitions.json").starts_with(&format!("{defs_dir}/")));
    assert!(target_of(&rabbit, "rabbitmq/compose-users.json").starts_with(&format!("{defs_dir}/")));
    assert!(target_of(&rabbit, "rabbitmq/rabbitmq.conf").starts_with("/etc/rabbitmq/conf.d/"));
    assert_eq!(
        target_of(&rabbit, "rabbitmq/enabled_plugins"),
        "/etc/rabbitmq/enabled_plugins"
    );
    let plugins = read(&deploy_dir().join("rabbitmq/enabled_plugins"));
    for plugin in ["rabbitmq_management", "rabbitmq_prometheus"] {
        assert!(plugins.contains(plugin), "enabled_plugins lacks {plugin}");
    }

    // Prometheus gets its config and rules, Grafana its provisioning.
    assert_eq!(
        target_of(&mounts("prometheus"), "prometheus"),
        "/etc/prometheus"
    );
    let grafana = mounts("grafana");
    let provider = yaml_one("grafana/provisioning/dashboards/send-worker.yml");
    assert_eq!(
        target_of(&grafana, "grafana/dashboards"),
        str_at(&provider, "/providers/0/options/path")
    );
    assert_eq!(
        target_of(&grafana, "grafana/provisioning/datasources"),
        "/etc/grafana/provisioning/datasources"
    );
    assert_eq!(
        target_of(&grafana, "grafana/provisioning/dashboards"),
        "/etc/grafana/provisioning/dashboards"
    );
}
