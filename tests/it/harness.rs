//! A real hookscope server for tests: the built binary, started on an ephemeral port
//! with its own data directory, stopped with SIGTERM or killed with SIGKILL.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The hookscope binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_hookscope")
}

/// Runs a `hookscope` command on the data directory `lake` (no config file).
pub fn cli(lake: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .arg("--data-dir")
        .arg(lake)
        .env_remove("HOOKSCOPE_CONFIG")
        .output()
        .expect("run hookscope")
}

/// [`cli`], which must succeed: its standard output.
pub fn cli_ok(lake: &Path, args: &[&str]) -> String {
    let out = cli(lake, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// How to start a server.
#[derive(Clone, Default)]
pub struct Options {
    pub env: HashMap<String, String>,
    pub config: Option<String>,
    pub args: Vec<String>,
}

impl Options {
    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }
}

/// A running server process.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    pub options: Options,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts a server on a fresh temporary data directory.
    pub fn start(options: Options) -> (Server, tempfile::TempDir) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let server = Server::start_in(tmp.path(), options);
        (server, tmp)
    }

    /// Starts a server whose data directory is `dir/lake` (logs in `dir/server.log`).
    pub fn start_in(dir: &Path, options: Options) -> Server {
        let mut cmd = serve_command(dir, &options);
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("server.log"))
                .expect("log file"),
        ));
        let mut child = cmd.spawn().expect("start hookscope");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("server did not start; log:\n{log}");
            }
        };
        let url = line
            .strip_prefix("hookscope listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child: Some(child),
            url,
            dir: dir.to_path_buf(),
            options,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// The most resident memory the server process has used so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kib * 1024
    }

    /// The data directory.
    pub fn lake(&self) -> PathBuf {
        self.dir.join("lake")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..600 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("server did not stop within 30 s of SIGTERM");
    }

    /// Starts a new process on the same data directory and options.
    pub fn restart(&mut self) {
        self.kill();
        let next = Server::start_in(&self.dir, self.options.clone());
        self.url = next.url.clone();
        self.child = next.into_child();
    }

    fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }

    /// GETs `path` (e.g. `/healthz`) from the server.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET")
    }

    /// POSTs a webhook body; returns (status, JSON answer).
    pub async fn post(
        &self,
        source: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{}/webhook/{source}", self.url))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("post webhook");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs a JSON webhook; returns the delivery id.
    pub async fn post_json(&self, source: &str, body: &Value) -> String {
        let (status, answer) = self
            .post(
                source,
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await;
        assert_eq!(status, 200, "webhook answer: {answer}");
        answer["id"].as_str().expect("id").to_string()
    }

    /// Runs SQL through `/query`; returns (status, raw body).
    pub async fn query_raw(&self, sql: &str, format: &str) -> (u16, bytes::Bytes) {
        let resp = self
            .client
            .post(format!("{}/query", self.url))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": sql, "format": format }).to_string())
            .send()
            .await
            .expect("post query");
        (
            resp.status().as_u16(),
            resp.bytes().await.expect("query body"),
        )
    }

    /// Runs SQL and returns its rows; panics unless 200.
    pub async fn query(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.query_raw(sql, "json").await;
        assert_eq!(
            status,
            200,
            "query {sql} failed: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("json rows")
    }

    /// Waits (up to 5 s) until `table` has at least `n` rows.
    pub async fn wait_for_rows(&self, table: &str, n: i64) {
        for _ in 0..250 {
            if self.count(table).await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{table} did not reach {n} rows");
    }

    /// `SELECT count(*)` of a table.
    pub async fn count(&self, table: &str) -> i64 {
        let rows = self
            .query(&format!("SELECT count(*) AS n FROM {table}"))
            .await;
        rows[0]["n"].as_i64().expect("count")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `hookscope serve` on `dir/lake`, on an ephemeral port, with `options`.
fn serve_command(dir: &Path, options: &Options) -> Command {
    let mut cmd = Command::new(binary());
    cmd.current_dir(dir)
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("lake"))
        .args(&options.args)
        .env_remove("HOOKSCOPE_TOKEN")
        .env_remove("HOOKSCOPE_CONFIG")
        .env("HOOKSCOPE_LOG", "info");
    if let Some(toml) = &options.config {
        let path = dir.join("hookscope.toml");
        std::fs::write(&path, toml).expect("write config");
        cmd.arg("--config").arg(path);
    }
    for (k, v) in &options.env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts `hookscope serve` on `dir/lake` expecting it to refuse to start; returns
/// what it printed on stderr.
pub fn start_fails(dir: &Path, options: &Options) -> String {
    let mut child = serve_command(dir, options)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hookscope");
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success(), "the server exited successfully");
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use std::io::Read;
                let _ = stderr.read_to_string(&mut err);
            }
            return err;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the server started (still running after 60 s) although it should refuse to");
}

/// Every Parquet file under `dir`, recursively.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
