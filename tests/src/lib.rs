//! Fixtures for Apiary's end-to-end tests: the `apiary` binary, real `apiary` processes, and a real
//! S3-compatible server (`moto`) on loopback.
//!
//! The Python virtual environment that holds `moto_server` (and the Python clients) is created by
//! `scripts/test`; tests find it through `APIARY_TEST_VENV` (default `~/.cache/apiary/venv`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every batch of a FlightInfo's first endpoint, read through `client`.
pub async fn fetch(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    info: &arrow_flight::FlightInfo,
) -> Vec<arrow::record_batch::RecordBatch> {
    use futures::TryStreamExt;
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    client
        .do_get(ticket)
        .await
        .expect("DoGet")
        .try_collect()
        .await
        .expect("the stream")
}

/// Path of the `apiary` binary built alongside the test executables.
pub fn apiary_bin() -> PathBuf {
    if let Ok(p) = std::env::var("APIARY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/apiary
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join("apiary");
    assert!(
        bin.exists(),
        "{} not found: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// The Python venv made by `scripts/test`.
pub fn venv() -> PathBuf {
    if let Ok(v) = std::env::var("APIARY_TEST_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/apiary/venv")
}

/// This package's directory, as cargo gives it to the running test (a build shared between two
/// checkouts through one target directory keeps the compile-time path of the first).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Wait until something accepts connections on `port`, while `child` (the process meant to
/// listen there) runs: `false` on timeout or as soon as the child has exited.
pub fn wait_for_port(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A `moto_server` process on loopback with one bucket; killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl Moto {
    /// Start moto and create `bucket`. moto binds port 0 and prints the port the kernel gave it
    /// (tests/python/moto_locked.py), so no other process can take the port in between.
    pub fn start(bucket: &str) -> Self {
        // moto behind one lock: see tests/python/moto_locked.py for why.
        let python = venv().join("bin/python");
        assert!(
            python.exists(),
            "{} not found: run scripts/test (it installs the test venv)",
            python.display()
        );
        let launcher = manifest_dir().join("python/moto_locked.py");
        let mut child = Command::new(&python)
            .arg(&launcher)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        // The first line is `moto_locked listening on port N`; the reader keeps draining stdout
        // after it.
        let stdout = child.stdout.take().expect("moto's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(60));
        let port = match &line {
            Ok(Some(Ok(l))) => l
                .strip_prefix("moto_locked listening on port ")
                .and_then(|p| p.trim().parse().ok()),
            _ => None,
        };
        let moto = Moto {
            child,
            port: port.unwrap_or(0),
            bucket: bucket.to_string(),
        };
        assert!(port.is_some(), "moto_server did not start: {line:?}");
        if let Err(e) = moto.create_bucket(bucket) {
            panic!("moto_server did not start: {e}");
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://bucket/prefix` for a storage root inside the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix)
    }

    /// Environment variables that point `apiary` at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("APIARY_S3_ENDPOINT".into(), self.endpoint()),
            ("APIARY_S3_REGION".into(), "us-east-1".into()),
            ("APIARY_S3_ACCESS_KEY_ID".into(), "testing".into()),
            ("APIARY_S3_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("APIARY_S3_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        // moto does not check signatures, so a bare PUT creates the bucket.
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("connect to port {}: {e}", self.port))?;
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .map_err(|e| format!("write: {e}"))?;
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        if resp.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "creating bucket failed on port {}: {resp:.200}",
                self.port
            ))
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SeaweedFS (`weed mini` from the test venv) on loopback with one bucket: an S3 server that
/// checks credentials and serves requests in parallel, unlike moto.
#[derive(Debug)]
pub struct Seaweed {
    child: Child,
    pub port: u16,
    pub bucket: String,
    _dir: tempfile::TempDir,
}

impl Seaweed {
    const KEY: &'static str = "apiary-test";
    const SECRET: &'static str = "apiary-test-secret";

    /// Start SeaweedFS with `bucket`.
    pub fn start(bucket: &str) -> Self {
        let weed_bin = venv().join("bin/weed");
        assert!(
            weed_bin.exists(),
            "{} not found: run scripts/test (it installs the test venv)",
            weed_bin.display()
        );
        // weed takes no port 0: its five ports (and their gRPC twins, +10000) are picked free
        // beforehand, so another process may take one in between. weed then exits, and starts
        // again on other ports.
        let mut weed = None;
        for _ in 0..5 {
            let ports: Vec<u16> = loop {
                let base = free_port();
                if base > 55000 {
                    continue;
                }
                let ports: Vec<u16> = (0..5).map(|i| base + i).collect();
                let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
                if ports.iter().all(|&p| free(p) && free(p + 10000)) {
                    break ports;
                }
            };
            let dir = tempfile::tempdir().expect("tempdir");
            let child = Command::new(&weed_bin)
                .arg("mini")
                .arg(format!("-dir={}", dir.path().display()))
                .args([
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-master.telemetry=false",
                    "-admin.ui=false",
                    "-webdav=false",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                ])
                .arg(format!("-bucket={bucket}"))
                .arg(format!("-s3.port={}", ports[0]))
                .arg(format!("-master.port={}", ports[1]))
                .arg(format!("-filer.port={}", ports[2]))
                .arg(format!("-volume.port={}", ports[3]))
                .arg(format!("-admin.port={}", ports[4]))
                .env("AWS_ACCESS_KEY_ID", Self::KEY)
                .env("AWS_SECRET_ACCESS_KEY", Self::SECRET)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn weed mini");
            let mut started = Seaweed {
                child,
                port: ports[0],
                bucket: bucket.to_string(),
                _dir: dir,
            };
            if wait_for_port(&mut started.child, started.port, Duration::from_secs(60)) {
                weed = Some(started);
                break;
            }
        }
        let weed = weed.expect("SeaweedFS did not start in 5 tries");
        // The S3 port opens before the bucket exists: wait until it answers for the bucket.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut s = TcpStream::connect(("127.0.0.1", weed.port)).expect("connect weed");
            let _ = write!(
                s,
                "HEAD /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                weed.port
            );
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            // Anonymous: 403 once the bucket exists, 404 before.
            if resp.starts_with("HTTP/1.1 403") || resp.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS bucket {bucket} did not appear: {resp}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        weed
    }

    /// `s3://bucket/prefix` for a storage root inside the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix)
    }

    /// Environment variables that point `apiary` at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "APIARY_S3_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("APIARY_S3_REGION".into(), "us-east-1".into()),
            ("APIARY_S3_ACCESS_KEY_ID".into(), Self::KEY.into()),
            ("APIARY_S3_SECRET_ACCESS_KEY".into(), Self::SECRET.into()),
            ("APIARY_S3_ALLOW_HTTP".into(), "true".into()),
        ]
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `apiary <args>` to completion with extra environment.
pub fn apiary(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(apiary_bin());
    cmd.args(args).env("APIARY_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run apiary")
}

/// Run `apiary sql` on `storage` and return stdout; panics with stderr on failure.
pub fn sql(storage: &str, env: &[(String, String)], query: &str) -> String {
    let out = apiary(
        &["sql", "--storage", storage, "--format", "csv", query],
        env,
    );
    assert!(
        out.status.success(),
        "apiary sql {query:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Run `apiary sql` expecting failure; returns stderr.
pub fn sql_err(storage: &str, env: &[(String, String)], query: &str) -> String {
    let out = apiary(
        &["sql", "--storage", storage, "--format", "csv", query],
        env,
    );
    assert!(
        !out.status.success(),
        "apiary sql {query:?} should have failed, printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).expect("utf8")
}

/// Spawn `apiary` in the background (stderr piped so callers can wait for log lines).
pub fn spawn_apiary(args: &[&str], env: &[(String, String)]) -> Child {
    let mut cmd = Command::new(apiary_bin());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn apiary")
}

/// Read lines from `reader` until one contains `needle` or `timeout` passes. Returns the line.
pub fn wait_for_line(reader: &mut impl BufRead, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) if line.contains(needle) => return Some(line.clone()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// A reader over a child's stderr.
pub fn stderr_reader(child: &mut Child) -> BufReader<std::process::ChildStderr> {
    BufReader::new(child.stderr.take().expect("stderr piped"))
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
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
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A running `apiary serve` process on 127.0.0.1 with an OS-assigned port; killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// An arrow-flight Flight SQL client connected to this server (no authentication).
    pub async fn flight_sql_client(
        &self,
    ) -> arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel> {
        let ch = tonic::transport::Channel::from_shared(self.url())
            .expect("server url")
            .connect()
            .await
            .expect("connect to the server");
        arrow_flight::sql::client::FlightSqlServiceClient::new(ch)
    }

    /// Start a server on `storage` with extra flags and environment; waits until it listens.
    pub fn start(storage: &str, args: &[&str], env: &[(String, String)]) -> Server {
        let mut full: Vec<&str> = vec!["serve", "--storage", storage];
        if !args.contains(&"--listen") {
            full.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        }
        full.extend_from_slice(args);
        let mut cmd = Command::new(apiary_bin());
        cmd.args(&full)
            .env("APIARY_LOG", "info,buoyant_kernel=warn,deltalake_core=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn apiary serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                let mut sent = false;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            log.lock().unwrap().push_str(&line);
                            if !sent && let Some(i) = line.find("listening on ") {
                                let rest = &line[i + "listening on ".len()..];
                                // Text or JSON logs: the address ends at a space or a quote.
                                let addr = rest
                                    .split(|c: char| c.is_whitespace() || c == '"')
                                    .next()
                                    .unwrap_or("")
                                    .trim_start_matches("grpc+tls://")
                                    .trim_start_matches("grpc://")
                                    .to_string();
                                let _ = tx.send(addr);
                                sent = true;
                            }
                        }
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child: Some(child),
            addr,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `host:port` of the metrics listener, as the server logged it once bound: start the
    /// server with `--metrics-listen 127.0.0.1:0` and the system picks a free port, with no
    /// window in which another process could take it.
    pub fn metrics_addr(&self) -> String {
        const NEEDLE: &str = "metrics on http://";
        assert!(
            self.wait_log(NEEDLE, Duration::from_secs(10)),
            "no metrics listener in the log:\n{}",
            self.log()
        );
        let log = self.log();
        let at = log.find(NEEDLE).expect("logged") + NEEDLE.len();
        log[at..].split('/').next().expect("an address").to_string()
    }

    /// Resident memory of the server process, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS:") * 1024
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGTERM, without waiting (see [`Server::wait_exit`]).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    /// Wait for the process to exit; `Some(success)`, or `None` if it is still running.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<bool> {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL, no cleanup.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: the server's side of the story goes with it.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- log of the server on {} (last {} lines) ----",
                self.addr,
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A field of /proc/<pid>/status in kB (VmRSS:, VmHWM:, ...).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
