//! Real components for the integration tests: the moto S3 server and the Python readers, both
//! from the project's venv (`$KSQL_LAKE_VENV`, default `<crate>/.venv`), which `scripts/test.sh`
//! creates. A missing venv fails the test: nothing is silently skipped.
#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

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

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A moto S3 server on 127.0.0.1, killed when dropped.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub endpoint: String,
}

impl Moto {
    /// Starts moto on a free port with `bucket` created; waits at most 30 s.
    pub async fn start(bucket: &str) -> Moto {
        let mut moto = Moto::start_on(free_port()).await;
        moto.create_bucket(bucket).await;
        moto
    }

    /// Starts moto on `port` (state starts empty).
    pub async fn start_on(port: u16) -> Moto {
        let binary = venv().join("bin/moto_server");
        assert!(binary.is_file(), "moto_server not found at {}: run `scripts/test.sh`", binary.display());
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
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
