//! Real servers the tests talk to, each started on a free loopback port in its own
//! directory and stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process (the Debian package) with append-only persistence.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one; panics with what to install when `redis-server` is missing.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Another process may take the free port first: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn_redis(dir.path(), port).unwrap_or_else(|e| panic!("{e}"));
            if wait_ready(&mut child, || ping(port), Duration::from_secs(10)) {
                return Self { child, port, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL); [`RedisServer::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server (SIGKILL) if it runs and starts it again on the same port and
    /// data: what it had written to its append-only file comes back.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_redis(self.dir.path(), self.port).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            wait_ready(&mut self.child, || ping(self.port), Duration::from_secs(10)),
            "redis-server did not come back on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server is `ready`; false when it exits or the time is up.
fn wait_ready(child: &mut Child, ready: impl Fn() -> bool, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn spawn_redis(dir: &Path, port: u16) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "redis-server cannot be started ({e}): install the Debian package redis-server \
                 (`make servers` does)"
            )
        })
}

/// Whether something on the port answers Redis' PING.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An S3-compatible server: `s3s-fs` (crates.io, installed by `make servers` into
/// `$EFFP_CACHE/tools`), serving one bucket from a temporary directory.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    root: tempfile::TempDir,
}

impl S3Server {
    /// The bucket every server has.
    pub const BUCKET: &'static str = "effp-test";
    /// The access key id it accepts.
    pub const ACCESS_KEY: &'static str = "effp-test-key";
    /// The secret it accepts.
    pub const SECRET_KEY: &'static str = "effp-test-secret";

    /// Starts one; panics with what to install when `s3s-fs` is missing.
    pub fn start() -> Self {
        let mut root = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir(root.path().join(Self::BUCKET)).expect("the bucket's directory");
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
                root,
            };
            if server.spawn() {
                return server;
            }
            root = server.take_root();
        }
        panic!("s3s-fs did not start on any of five free ports");
    }

    fn take_root(mut self) -> tempfile::TempDir {
        self.stop();
        std::mem::replace(
            &mut self.root,
            tempfile::tempdir().expect("a temporary directory"),
        )
    }

    fn spawn(&mut self) -> bool {
        let binary = s3s_fs_binary();
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} cannot be started ({e}): `make servers` installs s3s-fs 0.14.1 from crates.io",
                    binary.display()
                )
            });
        let port = self.port;
        let ready = wait_ready(
            &mut child,
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            Duration::from_secs(10),
        );
        self.child = Some(child);
        ready
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory the server keeps the bucket's objects in (`BUCKET/KEY`).
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(Self::BUCKET)
    }

    /// The `EFFP_S3_*` settings that point effp at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EFFP_S3_BUCKET", Self::BUCKET.into()),
            ("EFFP_S3_ENDPOINT", self.endpoint()),
            ("EFFP_S3_REGION", "us-east-1".into()),
            ("EFFP_S3_PATH_STYLE", "true".into()),
            ("EFFP_S3_ACCESS_KEY_ID", Self::ACCESS_KEY.into()),
            ("EFFP_S3_SECRET_ACCESS_KEY", Self::SECRET_KEY.into()),
        ]
    }

    /// Stops the server (SIGKILL); its files stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and files.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "s3s-fs did not come back on port {}",
            self.port
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `s3s-fs` is: `EFFP_S3S_FS`, else `make servers`' install in the cache, else
/// the `PATH`.
fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EFFP_S3S_FS") {
        return path.into();
    }
    let cache = std::env::var_os("EFFP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/effp")));
    cache
        .map(|c| c.join("tools/bin/s3s-fs"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "s3s-fs".into())
}
