//! The two shapes effp is deployed in, started for real so one test can run on
//! either: embedded (one `effp serve`: SQLite, a local directory, worker processes it
//! starts itself) and distributed (a real redis-server and S3 server, two API replicas
//! behind a round-robin balancer, two `effp worker` processes, each process in a data
//! directory of its own).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use effp_testkit::balancer::Balancer;
use effp_testkit::servers::{RedisServer, S3Server};

use super::Server;

/// Which deployment a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One `effp serve` with the embedded stores.
    Embedded,
    /// Redis + S3, two API replicas, two workers.
    Distributed,
}

/// Runs a test function `fn name(shape: Shape)` once per deployment, as the tests
/// `name::embedded` and `name::distributed`.
#[macro_export]
macro_rules! on_both_deployments {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn embedded() {
                    super::$name($crate::service::Shape::Embedded)
                }
                #[test]
                fn distributed() {
                    super::$name($crate::service::Shape::Distributed)
                }
            }
        )*
    };
}

/// Redis and the S3 server a distributed deployment runs on.
pub struct Backing {
    pub redis: RedisServer,
    pub s3: S3Server,
}

impl Backing {
    pub fn start() -> Self {
        Self {
            redis: RedisServer::start(),
            s3: S3Server::start(),
        }
    }

    /// The settings every effp process of the deployment gets.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .s3
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.push(("EFFP_REDIS_URL".into(), self.redis.url()));
        env
    }

    /// The content-addressed files in the bucket.
    pub fn objects(&self) -> Vec<PathBuf> {
        list(self.s3.bucket_dir().join("effp/objects"))
    }

    /// The checkpoints kept in the bucket.
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        list(self.s3.bucket_dir().join("effp/named/checkpoints"))
    }
}

fn list(dir: PathBuf) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// A running `effp worker` in a data directory of its own; killed (SIGKILL) when
/// dropped.
pub struct Worker {
    pub child: Child,
    pub data: tempfile::TempDir,
    /// Where it serves its Prometheus metrics.
    pub metrics_url: String,
}

impl Worker {
    /// Starts one on `backing` with extra flags and settings, serving its metrics on
    /// a free port.
    pub fn start(backing: &Backing, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_effp"));
        command
            .args(["worker", "--metrics-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .envs(backing.env())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("effp worker running"), "{line:?}");
        let metrics_url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no metrics URL in {line:?}"))
            .to_string();
        Self {
            child,
            data,
            metrics_url,
        }
    }

    /// Stops it with SIGTERM, as a container runtime does, and returns its exit code.
    pub fn terminate(mut self) -> Option<i32> {
        // SAFETY: kill(2) on the pid of a child this value owns and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap().code()
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An API replica (`effp serve --no-worker`) on `backing`, in a data directory of its
/// own.
pub fn replica(backing: &Backing, flags: &[&str], env: &[(&str, &str)]) -> Server {
    let mut all: Vec<(String, String)> = backing.env();
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut flags = flags.to_vec();
    flags.push("--no-worker");
    Server::start(&flags, &all)
}

/// `flags` less `--workers N`, and N (2 when absent): API replicas run no jobs.
fn without_workers_flag<'a>(flags: &[&'a str]) -> (Vec<&'a str>, usize) {
    let mut kept = Vec::new();
    let mut workers = 2;
    let mut rest = flags.iter();
    while let Some(&flag) = rest.next() {
        if flag == "--workers" {
            workers = rest
                .next()
                .expect("a count after --workers")
                .parse()
                .unwrap();
        } else {
            kept.push(flag);
        }
    }
    (kept, workers)
}

/// A running deployment of either shape; everything it started stops when dropped.
pub struct Deployment {
    /// Where clients send requests: the server, or the balancer before the replicas.
    pub url: String,
    pub shape: Shape,
    parts: Parts,
}

enum Parts {
    Embedded(Server),
    Distributed {
        _balancer: Balancer,
        replicas: Vec<Server>,
        workers: Vec<Worker>,
        backing: Backing,
    },
}

impl Deployment {
    /// Starts a deployment. `flags` go to `effp serve` (every replica); `env` to every
    /// effp process, so settings of how jobs run belong there (`EFFP_CHECKPOINT_EVERY`).
    /// `--workers 0` (jobs stay queued) starts no worker process.
    pub fn start(shape: Shape, flags: &[&str], env: &[(&str, &str)]) -> Self {
        match shape {
            Shape::Embedded => {
                let server = Server::start(flags, env);
                Self {
                    url: server.url.clone(),
                    shape,
                    parts: Parts::Embedded(server),
                }
            }
            Shape::Distributed => {
                let backing = Backing::start();
                let (flags, workers) = without_workers_flag(flags);
                let replicas: Vec<Server> =
                    (0..2).map(|_| replica(&backing, &flags, env)).collect();
                let workers = (0..workers.min(2))
                    .map(|_| Worker::start(&backing, &[], env))
                    .collect();
                let addresses = replicas
                    .iter()
                    .map(|r| r.url.trim_start_matches("http://").parse().unwrap())
                    .collect();
                let balancer = Balancer::start(addresses);
                Self {
                    url: balancer.url(),
                    shape,
                    parts: Parts::Distributed {
                        _balancer: balancer,
                        replicas,
                        workers,
                        backing,
                    },
                }
            }
        }
    }

    /// What `GET /metrics` of every process of the deployment says, one after another
    /// (an API process counts jobs and times requests, each worker times its jobs).
    pub fn metrics(&self) -> String {
        let mut urls: Vec<String> = self
            .api_servers()
            .map(|s| format!("{}/metrics", s.url))
            .collect();
        if let Parts::Distributed { workers, .. } = &self.parts {
            urls.extend(workers.iter().map(|w| w.metrics_url.clone()));
        }
        urls.iter()
            .map(|url| String::from_utf8(super::call("GET", url, None, None).body).unwrap())
            .collect()
    }

    /// The content-addressed files in the object store.
    pub fn objects(&self) -> Vec<PathBuf> {
        match &self.parts {
            Parts::Embedded(server) => server.objects(),
            Parts::Distributed { backing, .. } => backing.objects(),
        }
    }

    /// The training checkpoints in the object store.
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        match &self.parts {
            Parts::Embedded(server) => server.checkpoints(),
            Parts::Distributed { backing, .. } => backing.checkpoints(),
        }
    }

    /// What the API processes' scratch folders hold (requests in progress).
    pub fn scratch(&self) -> Vec<PathBuf> {
        self.api_servers().flat_map(Server::scratch).collect()
    }

    /// Uploads begun and not finished: files in each API process's folder of uploads
    /// in progress, and multipart uploads the S3 server holds.
    pub fn unfinished_uploads(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = self
            .api_servers()
            .flat_map(|server| {
                let mine = server
                    .data
                    .path()
                    .join("objects/partial")
                    .join(server.child.id().to_string());
                list(mine)
            })
            .collect();
        if let Parts::Distributed { backing, .. } = &self.parts {
            let root = backing.s3.bucket_dir().parent().unwrap().to_path_buf();
            found.extend(list(root).into_iter().filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".upload")
            }));
        }
        found
    }

    /// The process ids of the API processes.
    pub fn api_pids(&self) -> Vec<u32> {
        self.api_servers().map(|s| s.child.id()).collect()
    }

    /// Every data directory of the deployment's processes.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        match &self.parts {
            Parts::Embedded(server) => vec![server.data.path().to_path_buf()],
            Parts::Distributed {
                replicas, workers, ..
            } => replicas
                .iter()
                .map(|r| r.data.path().to_path_buf())
                .chain(workers.iter().map(|w| w.data.path().to_path_buf()))
                .collect(),
        }
    }

    fn api_servers(&self) -> impl Iterator<Item = &Server> {
        match &self.parts {
            Parts::Embedded(server) => std::slice::from_ref(server).iter(),
            Parts::Distributed { replicas, .. } => replicas.iter(),
        }
    }
}
