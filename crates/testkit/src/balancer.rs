//! A round-robin TCP load balancer on loopback, in front of replicas of one server.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Hands each new connection to the next replica that accepts one, as a load balancer
/// with health checks would: a replica that died is skipped, so a client that retries
/// after losing its connection reaches a live one. Stopped when dropped.
pub struct Balancer {
    address: SocketAddr,
    replicas: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    accepting: Option<JoinHandle<()>>,
}

impl Balancer {
    /// Starts one on a free loopback port in front of `replicas`.
    pub fn start(replicas: Vec<SocketAddr>) -> Self {
        assert!(!replicas.is_empty(), "a balancer needs a replica");
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let address = listener.local_addr().expect("the balancer's address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let replicas = Arc::new(Mutex::new(replicas));
        let current = replicas.clone();
        let next = AtomicUsize::new(0);
        let accepting = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let first = next.fetch_add(1, Ordering::SeqCst);
                let replicas = current.lock().unwrap().clone();
                let replica = (0..replicas.len()).find_map(|i| {
                    let to = replicas[(first + i) % replicas.len()];
                    TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()
                });
                // No live replica: the client sees its connection closed.
                if let Some(replica) = replica {
                    relay(client, replica);
                }
            }
        });
        Self {
            address,
            replicas,
            stop,
            accepting: Some(accepting),
        }
    }

    /// Puts `address` in the place of replica `index` (a replica started again on
    /// another port).
    pub fn replace(&self, index: usize, address: SocketAddr) {
        self.replicas.lock().unwrap()[index] = address;
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// Copies bytes both ways until each side has closed its half.
fn relay(client: TcpStream, replica: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = replica.set_nodelay(true);
    let pairs = [
        (client.try_clone(), replica.try_clone()),
        (replica.try_clone(), client.try_clone()),
    ];
    for pair in pairs {
        if let (Ok(mut from), Ok(mut to)) = pair {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
                let _ = from.shutdown(Shutdown::Read);
            });
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.accepting.take() {
            let _ = thread.join();
        }
    }
}
