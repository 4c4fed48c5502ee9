//! One proxy thread's keep-alive connections to the instances (HTTP/1.1, hyper's
//! connection API): a request borrows an idle connection to its instance, or opens one,
//! and gives it back when its response body is done. Nothing here is shared with
//! another thread, so a request takes no lock another thread takes, spawns no task and
//! boxes no future.
//!
//! A connection the instance closed while it sat idle is found closed and dropped; one
//! that closes just as a request is given to it hands the request back unsent
//! (`try_send_request`), and the request goes on another connection — so a release
//! that stops after its drain never fails a request the proxy had not sent yet.

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The body a proxied request is sent with.
pub type Outgoing = Limited<Incoming>;
type Sender = SendRequest<Outgoing>;

/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per instance at most.
const MAX_IDLE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections looked at for a ready one before a new one is opened.
const LOOK_AT: usize = 8;
/// Connections a request is offered to before it fails (each handed it back unsent).
const ATTEMPTS: usize = 4;

/// A thread's idle connections, by instance address. The lock is only ever taken by
/// the thread that owns the pool (and its sweep), so it is never contended.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(Sender, Instant)>>>,
}

/// Why a request got no response.
pub enum Failure {
    /// The instance could not be reached.
    Connect(String),
    /// The connection failed while the request was sent or answered.
    Http(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "{e}"),
            Failure::Http(e) => write!(f, "{e}"),
        }
    }
}

impl Failure {
    /// Whether the request's own body was over its limit (the client's fault).
    pub fn body_too_large(&self) -> bool {
        let Failure::Http(e) = self else {
            return false;
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return true;
            }
            source = s.source();
        }
        false
    }
}

/// A borrowed connection: back to its pool when dropped (once the response body it
/// answered with is done).
pub struct Lease {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Lease {
    /// Keeps the connection out of the pool (it carries an upgraded protocol now).
    pub fn forget(mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(self.addr, sender);
        }
    }
}

impl Pool {
    /// Sends `req` to the instance at `addr`; the lease goes with the response's body.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Outgoing>,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        for _ in 0..ATTEMPTS {
            let mut sender = match self.take(addr) {
                Some(sender) => sender,
                None => connect(addr).await?,
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let lease = Lease {
                        pool: self.clone(),
                        addr,
                        sender: Some(sender),
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection closed first. Another one takes it.
                    Some(unsent) => req = unsent,
                    None => return Err(Failure::Http(e.into_error())),
                },
            }
        }
        Err(Failure::Connect(format!(
            "{ATTEMPTS} connections to {addr} closed before the request could be sent"
        )))
    }

    /// The most recently idle connection to `addr` that is ready for a request. One
    /// given back a moment ago may still be finishing its last response; it is left for
    /// a later request (only the last few are looked at), closed ones are dropped.
    fn take(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(&addr)?;
        let mut i = list.len();
        let mut looked = 0;
        while i > 0 && looked < LOOK_AT {
            i -= 1;
            let (sender, since) = &list[i];
            if sender.is_closed() || since.elapsed() >= IDLE_TIMEOUT {
                // The last one, moved here, was looked at already.
                list.swap_remove(i);
                continue;
            }
            looked += 1;
            if sender.is_ready() {
                return Some(list.swap_remove(i).0);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push((sender, Instant::now()));
        }
    }

    /// Drops the connections that closed or sat idle past [`IDLE_TIMEOUT`] (and the
    /// instances left with none).
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|_, list| {
            list.retain(|(sender, since)| !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT);
            !list.is_empty()
        });
    }
}

/// A new connection to `addr`, driven by a task of the calling thread's runtime
/// (upgrades included, for WebSockets).
async fn connect(addr: SocketAddr) -> Result<Sender, Failure> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::Connect(format!("connecting to {addr} timed out")))?
        .map_err(|e| Failure::Connect(format!("cannot connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(Failure::Http)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(upstream = %addr, error = %e, "an upstream connection ended");
        }
    });
    Ok(sender)
}
