//! The real `send-worker` binary as a child process, for tests whose subject
//! is the process: signals, kill -9, halts, broker restarts, several
//! replicas. Its configuration is a TOML file serialized from [`Settings`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{LogFormat, Settings};

/// What a finished command printed, and its exit status (-1: killed by a
/// signal); displayed whole, for assertion messages.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The `send-worker` binary to run: `$SEND_WORKER_BIN`, else the one Cargo
/// built beside the running test or benchmark (`target/<profile>/`; Cargo
/// builds a package's binaries for its integration tests and benchmarks).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SEND_WORKER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the path of the running executable");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test executable under target/<profile>/deps");
    let bin = dir.join("send-worker");
    assert!(
        bin.exists(),
        "{} does not exist; build it (cargo build) or set SEND_WORKER_BIN",
        bin.display()
    );
    bin
}

/// A configuration file in the temp directory, removed on drop. It holds
/// secrets in clear (the child needs them), so it is readable by its owner only.
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    /// `settings` as a TOML file, for a child's `--config`.
    pub fn write(settings: &Settings) -> ConfigFile {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        let path = std::env::temp_dir().join(format!(
            "send-worker-test-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        let text = settings.to_toml(true).expect("settings serialize to TOML");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create the child's config file");
        f.write_all(text.as_bytes())
            .expect("write the child's config file");
        ConfigFile(path)
    }
}

impl ConfigFile {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A free loopback port (bound, read and released: the child binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `send-worker run` as a child process. Its stdout and stderr are captured
/// line by line; dropping it kills the process (SIGKILL) and reaps it, so no
/// test leaves a worker running, even when it panics.
pub struct WorkerProcess {
    pub name: String,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`: the ops endpoints.
    pub ops: String,
    _config: ConfigFile,
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    http: reqwest::Client,
}

impl WorkerProcess {
    /// Start `send-worker run` configured by `settings` (JSON logs on a
    /// fresh loopback port), plus `extra` variables. The settings reach the
    /// child as a TOML file serialized from them, so every key is passed.
    pub fn spawn(name: &str, settings: &Settings, extra: &[(&str, &str)]) -> WorkerProcess {
        Self::spawn_in(&bin(), name, settings, extra)
    }

    /// [`WorkerProcess::spawn`] with another binary (the benchmarks', or an
    /// installed one).
    pub fn spawn_in(
        bin: &std::path::Path,
        name: &str,
        settings: &Settings,
        extra: &[(&str, &str)],
    ) -> WorkerProcess {
        Self::spawn_command(bin, name, settings, "run", extra)
    }

    /// [`WorkerProcess::spawn_in`] with another subcommand that serves
    /// `http.listen` (`webhooks`).
    pub fn spawn_command(
        bin: &std::path::Path,
        name: &str,
        settings: &Settings,
        command: &str,
        extra: &[(&str, &str)],
    ) -> WorkerProcess {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        let port = free_port();
        let mut settings = settings.clone();
        settings.http.listen = format!("127.0.0.1:{port}");
        settings.log.format = LogFormat::Json;
        let config = ConfigFile::write(&settings);
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config.0).arg(command);
        // Nothing inherited may change what the child does: no other
        // SEND_WORKER__* value, no RUST_LOG, no proxy for loopback traffic.
        for (k, _) in std::env::vars() {
            if k.starts_with("SEND_WORKER__")
                || k == "TELNYX_API_KEY"
                || k == "RUST_LOG"
                || k.to_ascii_lowercase().ends_with("_proxy")
            {
                cmd.env_remove(k);
            }
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn send-worker {command}: {e}"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for stream in out {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            }));
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("http client");
        WorkerProcess {
            name: name.to_owned(),
            pid: child.id(),
            _config: config,
            ops: format!("http://127.0.0.1:{port}"),
            child,
            log,
            readers,
            http,
        }
    }

    /// Every line the child has written so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lines that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    fn tail(&self, n: usize) -> String {
        let logs = self.logs();
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// Send a signal by name ("TERM", "INT", "KILL") with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid);
    }

    /// The exit status, if the child has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Wait (bounded) for the child to exit; then every line it wrote has
    /// been collected. `None` if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                // The pipes close with the process: the readers end promptly.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panic (with the child's last log lines) if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!(
                "worker {} exited unexpectedly ({status}); last log lines:\n{}",
                self.name,
                self.tail(40)
            );
        }
    }

    /// GET a path on the ops listener: status and body, or None if the
    /// request failed (not listening yet, or gone).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.ops))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.text().await.ok()?;
        Some((status, body))
    }

    /// `/readyz`: its status and JSON body.
    pub async fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let (status, body) = self.get("/readyz").await?;
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/readyz body is not JSON ({e}): {body}"));
        Some((status, json))
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> Option<String> {
        match self.get("/metrics").await? {
            (200, body) => Some(body),
            _ => None,
        }
    }

    /// Wait until `/readyz` answers 200 (connected and consuming).
    pub async fn wait_ready(&mut self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if let Some((200, body)) = self.readyz().await {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} not ready after {timeout:?}; last log lines:\n{}",
                self.name,
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        match self.wait_exit(timeout).await {
            Some(status) => status,
            None => panic!(
                "worker {} still running {timeout:?} after SIGTERM; last log lines:\n{}",
                self.name,
                self.tail(40)
            ),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Every line the child wrote, for a post-mortem, when asked for.
        if let Some(dir) = std::env::var_os("SEND_WORKER_TEST_LOG_DIR") {
            let path = std::path::Path::new(&dir).join(format!("{}-{}.log", self.name, self.pid));
            let _ = std::fs::write(path, self.logs().join("\n"));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- last log lines of worker {} (pid {}) ---\n{}",
                self.name,
                self.pid,
                self.tail(60)
            );
        }
    }
}
