//! The backends every store scenario runs on, each fresh per test.

use std::sync::Arc;

use effp_store::sqlite::SqliteStore;
use effp_store::{Benchmarks, JobStore, Notifications, Queue};

/// Both faces of a backend, as the service uses them.
pub trait Store: JobStore + Queue + Notifications + Benchmarks {}
impl<T: JobStore + Queue + Notifications + Benchmarks> Store for T {}

/// A backend and whatever keeps it alive (its directory, its server process).
pub struct Backend {
    store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

impl Backend {
    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

/// The embedded backend in a fresh directory.
pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("effp.sqlite3")).unwrap();
    Backend {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

/// The distributed backend on a fresh `redis-server` of its own.
pub async fn redis() -> Backend {
    let server = effp_testkit::servers::RedisServer::start();
    let store = effp_store::redis::RedisStore::connect(&server.url(), "effp")
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        _keep: Box::new(server),
    }
}
