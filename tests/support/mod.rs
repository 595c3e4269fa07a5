//! Real components for the integration tests: the moto S3 server and the Python readers, both
//! from the project's venv (`$KSQL_LAKE_VENV`, default `<crate>/.venv`), which `scripts/test.sh`
//! creates. A missing venv fails the test: nothing is silently skipped.
#![allow(dead_code)] // each test binary uses a different part

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ksql_lake::schema::{Column, KsqlType};
use ksql_lake::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The service binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_ksql-lake");

/// `ksql-lake run --config <path>`, quiet, killed with the test.
pub fn spawn_run(config_path: &Path) -> Child {
    Command::new(BINARY)
        .args(["run", "--config"])
        .arg(config_path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A simulator on 127.0.0.1 holding the table `USERS` (key `ID`; `NAME`, `SCORE`) over
/// `partitions` topic partitions.
pub async fn users_table(config: SimulatorConfig, partitions: u32) -> (Simulator, SimulatorHandle) {
    let sim = Simulator::new(config);
    sim.create_table(
        "USERS",
        vec![Column::new("ID", KsqlType::String)],
        vec![Column::new("NAME", KsqlType::String), Column::new("SCORE", KsqlType::Integer)],
        partitions,
    )
    .unwrap();
    let handle = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sim, handle)
}

/// The venv holding moto, DuckDB, pyarrow and pandas.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("KSQL_LAKE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    assert!(
        venv.join("bin/python").is_file(),
        "no Python venv at {}: run `scripts/test.sh` (it creates it), or set KSQL_LAKE_VENV",
        venv.display()
    );
    venv
}

/// Reads `output` line by line until `found` picks a value out of one (at most `limit`), then
/// keeps draining it in the background so the writer never blocks on a full pipe.
async fn watch_lines<T>(
    output: impl AsyncRead + Unpin + Send + 'static,
    limit: Duration,
    what: &str,
    found: impl Fn(&str) -> Option<T>,
) -> T {
    watch_and_keep_lines(output, limit, what, found, None).await
}

/// Like [`watch_lines`], appending every line (before and after) to `kept` when given.
async fn watch_and_keep_lines<T>(
    output: impl AsyncRead + Unpin + Send + 'static,
    limit: Duration,
    what: &str,
    found: impl Fn(&str) -> Option<T>,
    kept: Option<Arc<Mutex<String>>>,
) -> T {
    let mut lines = BufReader::new(output).lines();
    let mut seen = Vec::new();
    let keep = |kept: &Option<Arc<Mutex<String>>>, line: &str| {
        if let Some(kept) = kept {
            let mut kept = kept.lock().unwrap();
            kept.push_str(line);
            kept.push('\n');
        }
    };
    let value = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            keep(&kept, &line);
            if let Some(value) = found(&line) {
                return Some(value);
            }
            seen.push(line);
        }
        None
    })
    .await;
    let Ok(Some(value)) = value else { panic!("{what} not seen within {limit:?}; output:\n{}", seen.join("\n")) };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            keep(&kept, &line);
        }
    });
    value
}

/// Starts the `ksql-lake` binary at log level `rust_log` with `envs`, keeping everything it
/// writes to stderr in the returned buffer; returns once it serves /metrics, with the address.
pub async fn spawn_service_logged(
    binary: &str,
    args: &[&OsStr],
    rust_log: &str,
    envs: &[(&str, &str)],
) -> (Child, SocketAddr, Arc<Mutex<String>>) {
    let mut child = Command::new(binary)
        .args(["--log-format", "json"])
        .args(args)
        .env("RUST_LOG", rust_log)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ksql-lake starts");
    let stderr = child.stderr.take().unwrap();
    let kept = Arc::new(Mutex::new(String::new()));
    let found = |line: &str| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        if entry["fields"]["message"] != "serving /metrics, /healthz, /readyz" {
            return None;
        }
        entry["fields"]["address"].as_str()?.parse().ok()
    };
    let address =
        watch_and_keep_lines(stderr, Duration::from_secs(30), "the metrics address", found, Some(kept.clone())).await;
    (child, address, kept)
}

/// Starts the `ksql-lake` binary with `args` (its config listening on 127.0.0.1:0) and
/// returns it with the address it bound for /metrics, read from its JSON log.
pub async fn spawn_service(binary: &str, args: &[&OsStr]) -> (Child, SocketAddr) {
    let (child, address, _) = spawn_service_logged(binary, args, "warn,ksql_lake::pipeline=info", &[]).await;
    (child, address)
}

/// A moto S3 server on 127.0.0.1, killed when dropped.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub endpoint: String,
}

impl Moto {
    /// Starts moto with `bucket` created; waits at most 30 s.
    pub async fn start(bucket: &str) -> Moto {
        let mut moto = Moto::start_empty().await;
        moto.create_bucket(bucket).await;
        moto
    }

    /// Starts moto on a port the system picks (state starts empty); it says which on stderr.
    pub async fn start_empty() -> Moto {
        let binary = venv().join("bin/moto_server");
        assert!(binary.is_file(), "moto_server not found at {}: run `scripts/test.sh`", binary.display());
        let mut child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let stderr = child.stderr.take().unwrap();
        let port: u16 = watch_lines(stderr, Duration::from_secs(30), "moto's port", |line| {
            line.split("Running on http://127.0.0.1:").nth(1)?.trim().parse().ok()
        })
        .await;
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(response) = client.get(format!("{endpoint}/moto-api/")).send().await {
                    if response.status().is_success() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "moto_server did not answer on {endpoint} within 30 s");
        Moto { child: Some(child), port, endpoint }
    }

    pub async fn create_bucket(&mut self, bucket: &str) {
        let created = reqwest::Client::new().put(format!("{}/{bucket}", self.endpoint)).send().await.unwrap();
        assert!(created.status().is_success(), "create bucket: {}", created.status());
    }

    /// Freezes the server (SIGSTOP): connections hang, state is kept.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(|child| child.id()).expect("moto is running");
        let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// S3 options for a moto endpoint.
pub fn s3_options(endpoint: &str) -> ksql_lake::lake::S3Options {
    ksql_lake::lake::S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        allow_http: true,
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        ..Default::default()
    }
}

/// Reads a lake folder with DuckDB and pyarrow (scripts/read_lake.py) and returns their answers.
pub async fn read_with_python(path: &Path, sums: &[&str], s3: Option<(&str, &str)>) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/read_lake.py");
    let mut command = Command::new(venv().join("bin/python"));
    command.arg(script).arg(path);
    for column in sums {
        command.args(["--sum", column]);
    }
    if let Some((endpoint, location)) = s3 {
        command.args(["--s3", endpoint, location]);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the Python readers finish within 120 s")
        .expect("python runs");
    assert!(output.status.success(), "read_lake.py failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("read_lake.py prints JSON")
}
