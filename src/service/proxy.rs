//! The reverse proxy in front of services (`--proxy-listen`): HTTP/1.1 and HTTP/2 (TLS
//! with the server's certificate when HTTPS is on), routed by Host and path prefix to an
//! environment's stable release — or, during a canary, to the canary by its weight —
//! over a keep-alive pool of connections to the instances. WebSocket upgrades are
//! tunnelled; `X-Forwarded-For/Proto/Host` and `X-Request-Id` are set; a body over the
//! limit is refused (413); an instance that does not answer is a 502, one too slow a 504.
//! All HTTP is hyper's; nothing here parses HTTP (only a Host header's host is told
//! from its port). The proxy runs on threads of its own, one per core, so proxied
//! traffic and the server's own work do not share a runtime, and a request writes
//! almost nothing another proxy thread writes: each thread keeps its own copy of the
//! route table and its own counts, and the shared counters are sharded
//! ([`super::shard`]); only a canary's split is one count for all. New connections are
//! spread evenly over the threads: the thread that accepts one hands it to the thread
//! with the fewest open (Envoy's "exact balance"), since left to the kernel a burst of
//! connections all goes to whichever thread woke first, and one core serves them all.

use super::pool::{Lease, Pool};
use super::shard::{Counter, Gauge, Histogram};
use super::{RouteTable, Services, Site, Track};
use bytes::{Bytes, BytesMut};
use http_body_util::{Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A proxy thread's count of open connections (prometheus-client's own gauge: it is
/// written once per connection, so it needs no sharding).
type OpenGauge = prometheus_client::metrics::gauge::Gauge;

/// The proxy's limits.
#[derive(Clone, Copy, Debug)]
pub struct ProxyLimits {
    /// Largest request body forwarded (413 past it).
    pub max_body: u64,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header: usize,
    /// How long an instance may take to send its response head (504 past it).
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SetLabels {
    service: String,
    track: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    service: String,
    track: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    thread: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    service: String,
    track: &'static str,
    kind: &'static str,
}

/// `/metrics` families, labelled by service (`project/environment`, bounded by the
/// environments that exist) and track (stable, canary) — never by host or path as sent.
#[derive(Clone, Default)]
pub struct ProxyMetrics {
    requests: Family<ClassLabels, Counter>,
    durations: Family<SetLabels, Histogram>,
    in_flight: Family<SetLabels, Gauge>,
    upstream_errors: Family<ErrorLabels, Counter>,
    unrouted: Counter,
    /// Client connections open, by proxy thread (bounded by the cores).
    connections: Family<ThreadLabels, OpenGauge>,
}

/// One site's and track's metric handles, made once (a request only increments).
#[derive(Clone)]
pub struct Meters {
    in_flight: Gauge,
    durations: Histogram,
    /// By status class: 1xx … 5xx.
    requests: [Counter; 5],
    timeouts: Counter,
    unanswered: Counter,
}

impl ProxyMetrics {
    /// The handles of `service`'s `track`, stable first.
    pub fn meters(&self, service: &str) -> [Meters; 2] {
        [Track::Stable, Track::Canary].map(|track| {
            let set = SetLabels {
                service: service.to_string(),
                track: track.as_str(),
            };
            let class = |class| {
                self.requests
                    .get_or_create(&ClassLabels {
                        service: service.to_string(),
                        track: track.as_str(),
                        class,
                    })
                    .clone()
            };
            let error = |kind| {
                self.upstream_errors
                    .get_or_create(&ErrorLabels {
                        service: service.to_string(),
                        track: track.as_str(),
                        kind,
                    })
                    .clone()
            };
            Meters {
                in_flight: self.in_flight.get_or_create(&set).clone(),
                durations: self.durations.get_or_create(&set).clone(),
                requests: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
                timeouts: error("timeout"),
                unanswered: error("connect"),
            }
        })
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "betcycle_proxy_requests",
            "Requests the proxy answered, by service, track and status class",
            self.requests.clone(),
        );
        registry.register(
            "betcycle_proxy_request_duration_seconds",
            "Time to an instance's response head through the proxy, by service and track",
            self.durations.clone(),
        );
        registry.register(
            "betcycle_proxy_in_flight_requests",
            "Requests (and WebSockets) open through the proxy, by service and track",
            self.in_flight.clone(),
        );
        registry.register(
            "betcycle_proxy_upstream_errors",
            "Requests an instance did not answer (connect, timeout), by service and track",
            self.upstream_errors.clone(),
        );
        registry.register(
            "betcycle_proxy_unrouted_requests",
            "Requests for a host (and path) no service serves",
            self.unrouted.clone(),
        );
        registry.register(
            "betcycle_proxy_open_connections",
            "Client connections open to the proxy, by proxy thread",
            self.connections.clone(),
        );
    }
}

/// What the proxy's threads share (read only).
struct Shared {
    services: Arc<Services>,
    limits: ProxyLimits,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// What one proxy thread keeps to itself.
#[derive(Default)]
struct Local {
    /// The random first half of this thread's request ids.
    id_prefix: u64,
    /// Requests this thread took: its request ids and its round-robin over instances.
    requests: u64,
    /// Room for this thread's next request ids: each id is a slice of one allocation
    /// shared by many, so making one allocates nothing and cloning one copies nothing.
    ids: BytesMut,
    /// A copy of the route table and the version it was copied at; its sites are this
    /// thread's own allocations, so counting references to them stays on this core.
    table: Option<(u64, RouteTable)>,
}

/// Request ids made per allocation.
const IDS_PER_ALLOCATION: usize = 128;

/// The thread's next request number, and a new request id, unique across threads and
/// restarts (32 hex digits: the thread's random prefix, then the count).
fn next_request() -> (u64, HeaderValue) {
    LOCAL.with_borrow_mut(|local| {
        local.requests += 1;
        let mut id = [0u8; 32];
        for (i, digit) in id.iter_mut().enumerate() {
            let word = if i < 16 {
                local.id_prefix
            } else {
                local.requests
            };
            let nibble = (word >> (60 - 4 * (i % 16))) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        if local.ids.capacity() < id.len() {
            local.ids = BytesMut::with_capacity(id.len() * IDS_PER_ALLOCATION);
        }
        local.ids.extend_from_slice(&id);
        let id = HeaderValue::from_maybe_shared(local.ids.split().freeze())
            .expect("hex digits are a header value");
        (local.requests, id)
    })
}

/// The site serving `host` and `path`, from this thread's copy of the route table
/// (copied again when the table's version moved), with that version.
fn route(services: &Services, host: &str, path: &str) -> Option<(Arc<Site>, u64)> {
    LOCAL.with_borrow_mut(|local| {
        let version = services.version();
        if local.table.as_ref().is_none_or(|(v, _)| *v != version) {
            let (version, table) = services.versioned_table();
            let sites = table
                .sites
                .iter()
                .map(|s| Arc::new(Site::clone(s)))
                .collect();
            local.table = Some((version, RouteTable { sites }));
        }
        let (version, table) = local.table.as_ref()?;
        Some((table.find(host, path)?.clone(), *version))
    })
}

/// One proxy thread: its own runtime and its own pool of upstream connections, so a
/// request, its downstream connection and the upstream connection it borrows are all
/// driven by one thread (no hand-off between threads per request, as in nginx's
/// workers).
struct Worker {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
}

/// A connection on its way to the thread that serves it, counted open there.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    open: Open,
}

/// One of a thread's open connections (its count goes down when dropped).
struct Open(OpenGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where new connections go: each thread's count of open connections (its
/// `betcycle_proxy_open_connections`), and the way to hand it one.
struct Balance {
    open: Vec<OpenGauge>,
    inboxes: Vec<tokio::sync::mpsc::UnboundedSender<Handoff>>,
}

impl Balance {
    /// The thread a new connection goes to — one with the fewest open, `own` if it is
    /// one of those — counted open there from now on.
    fn pick(&self, own: usize) -> (usize, Open) {
        let mut best = own;
        let mut least = self.open[own].get();
        for (n, open) in self.open.iter().enumerate() {
            let count = open.get();
            if count < least {
                (best, least) = (n, count);
            }
        }
        (best, self.count(best))
    }

    /// One more connection open on thread `n`.
    fn count(&self, n: usize) -> Open {
        self.open[n].inc();
        Open(self.open[n].clone())
    }
}

/// Serves the proxy on `listener` until `shutdown`, with one thread per core, each
/// accepting from the same socket and handing what it accepts to the least busy.
pub async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    limits: ProxyLimits,
    shutdown: CancellationToken,
) {
    let tls = tls.map(|config| crate::http::tls::Alpn::new(config, &[b"h2", b"http/1.1"]));
    let shared = Arc::new(Shared { services, limits });
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the proxy cannot take its listener");
            return;
        }
    };
    let threads = super::shard::shards();
    let (inboxes, mut inbox_rx): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    let balance = Arc::new(Balance {
        open: (0..threads)
            .map(|n| {
                shared
                    .services
                    .metrics
                    .connections
                    .get_or_create(&ThreadLabels {
                        thread: n.to_string(),
                    })
                    .clone()
            })
            .collect(),
        inboxes,
    });
    let mut stopped = Vec::with_capacity(threads);
    for (n, inbox) in inbox_rx.drain(..).enumerate() {
        let (done, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the proxy cannot share its listener");
                break;
            }
        };
        let thread = ProxyThread {
            n,
            shared: shared.clone(),
            tls: tls.clone(),
            balance: balance.clone(),
        };
        let (permits, stop) = (permits.clone(), shutdown.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("proxy-{n}"))
            .spawn(move || {
                super::shard::enter(n);
                let mut seed = [0u8; 8];
                getrandom::fill(&mut seed).expect("the system's random numbers");
                LOCAL.with_borrow_mut(|local| local.id_prefix = u64::from_le_bytes(seed));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a proxy thread's runtime");
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept(listener, thread, inbox, permits, stop).await,
                        Err(e) => tracing::error!(error = %e, "the proxy cannot listen"),
                    }
                });
                drop(runtime);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => stopped.push(stopped_rx),
            Err(e) => tracing::error!(error = %e, "the proxy cannot start a thread"),
        }
    }
    drop(listener);
    for thread in stopped {
        let _ = thread.await;
    }
}

/// What a proxy thread starts with.
struct ProxyThread {
    n: usize,
    shared: Arc<Shared>,
    tls: Option<crate::http::tls::Alpn>,
    balance: Arc<Balance>,
}

/// One thread's accept loop, until `shutdown`: a connection it accepts runs on its own
/// runtime or on the thread it is handed to ([`Balance::pick`]); those handed to it
/// come from `inbox`.
async fn accept(
    listener: TcpListener,
    thread: ProxyThread,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    permits: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
) {
    let ProxyThread {
        n,
        shared,
        tls,
        balance,
    } = thread;
    let pool = Arc::new(Pool::default());
    // Ends with the thread's runtime.
    tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut every = tokio::time::interval(super::pool::IDLE_TIMEOUT / 2);
            loop {
                every.tick().await;
                pool.sweep();
            }
        }
    });
    let worker = Arc::new(Worker { shared, pool });
    // Ends with the thread's runtime, dropping any connection still on its way.
    tokio::spawn({
        let (worker, tls) = (worker.clone(), tls.clone());
        async move {
            while let Some(h) = inbox.recv().await {
                match tokio::net::TcpStream::from_std(h.stream) {
                    Ok(stream) => start(stream, h.peer, &worker, &tls, h.permit, h.open),
                    Err(e) => tracing::warn!(error = %e, "the proxy cannot take a connection"),
                }
            }
        }
    });
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "the proxy cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (to, open) = balance.pick(n);
        if to == n {
            start(stream, peer, &worker, &tls, permit, open);
            continue;
        }
        let handoff = match stream.into_std() {
            Ok(stream) => Handoff {
                stream,
                peer,
                permit,
                open,
            },
            Err(e) => {
                tracing::warn!(error = %e, "the proxy cannot hand a connection on");
                continue;
            }
        };
        // A thread that is gone (only at shutdown) leaves its connections to this one.
        if let Err(back) = balance.inboxes[to].send(handoff) {
            let h = back.0;
            drop(h.open);
            if let Ok(stream) = tokio::net::TcpStream::from_std(h.stream) {
                start(stream, h.peer, &worker, &tls, h.permit, balance.count(n));
            }
        }
    }
}

/// Serves one client connection on the calling thread's runtime. No cancellation
/// future per connection (polling one locks its waiter list on every wake-up): at
/// shutdown the accept loop returns and the thread drops its runtime, which drops every
/// connection it still holds.
fn start(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    worker: &Arc<Worker>,
    tls: &Option<crate::http::tls::Alpn>,
    permit: OwnedSemaphorePermit,
    open: Open,
) {
    let (worker, tls) = (worker.clone(), tls.clone());
    tokio::spawn(async move {
        match tls {
            None => connection(TokioIo::new(stream), peer, false, worker).await,
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                match tokio::time::timeout(
                    worker.shared.limits.header_read_timeout,
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(s)) => connection(TokioIo::new(s), peer, true, worker).await,
                    _ => tracing::debug!(%peer, "proxy TLS handshake failed"),
                }
            }
        }
        drop((permit, open));
    });
}

/// Who a downstream connection is from: its address, and its IP as the
/// `X-Forwarded-For` value (made once per connection, not per request).
struct Peer {
    addr: SocketAddr,
    ip: HeaderValue,
}

async fn connection<I>(io: I, addr: SocketAddr, tls: bool, worker: Arc<Worker>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(worker.shared.limits.header_read_timeout)
        .max_buf_size(worker.shared.limits.max_header.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(worker.shared.limits.max_header).unwrap_or(u32::MAX));
    let peer = Arc::new(Peer {
        addr,
        ip: HeaderValue::from_maybe_shared(Bytes::from(addr.ip().to_string()))
            .expect("an IP address is a header value"),
    });
    let service = hyper::service::service_fn(move |req| {
        let (worker, peer) = (worker.clone(), peer.clone());
        async move { Ok::<_, Infallible>(handle(worker, &peer, tls, req).await) }
    });
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(peer = %addr, error = %e, "proxy connection ended");
    }
}

/// A plain-text answer from the proxy itself.
fn plain(status: StatusCode, text: String, request_id: &HeaderValue) -> Response<Body> {
    let mut r = Response::new(Body::Own(Full::new(Bytes::from(format!(
        "{} {}\n{text}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id.clone());
    r
}

/// The Host a request is for, without its port or a trailing dot and lowercased, as a
/// header value: the Host header, or (HTTP/2, which carries no Host header from
/// browsers) the URI's authority. Usually that is the Host header as sent, and then it
/// is that header's own value (nothing is copied).
fn host_of(req: &Request<Incoming>) -> Option<HeaderValue> {
    let Some(value) = req.headers().get(header::HOST) else {
        let host = bare_host(req.uri().authority()?.as_str())?;
        return HeaderValue::from_str(&host.to_ascii_lowercase()).ok();
    };
    let sent = value.to_str().ok()?;
    let host = bare_host(sent)?;
    if host.len() == sent.len() && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(value.clone());
    }
    HeaderValue::from_str(&host.to_ascii_lowercase()).ok()
}

/// The host of a Host header's `host[:port]`, without trailing dots; None unless it is
/// a name of letters, digits and `-._~` or a bracketed IPv6 address, and the port (if
/// any) digits.
fn bare_host(authority: &str) -> Option<&str> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')? + 2;
            let literal = &authority[1..end - 1];
            if literal.is_empty()
                || !literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return None;
            }
            (&authority[..end], &authority[end..])
        }
        None => {
            let end = authority.find(':').unwrap_or(authority.len());
            let name = authority[..end].trim_end_matches('.');
            let name_char =
                |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
            if name.is_empty() || !name.bytes().all(name_char) {
                return None;
            }
            (name, &authority[end..])
        }
    };
    match port.strip_prefix(':') {
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        None if port.is_empty() => Some(host),
        _ => None,
    }
}

/// Hop-by-hop headers, never forwarded (RFC 9110 section 7.6.1); names, not text, so
/// removing them parses nothing. Connection first (`strip_hop_by_hop` relies on it).
const HOPS: usize = 9;
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and those the Connection header names. Most
/// messages carry none, or only `Connection: keep-alive`: each name is looked at once
/// (rather than nine removals hashing each), and the usual connection options
/// (`keep-alive`, `close`, `upgrade`) cost no allocation.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOPS];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        let mut named = Vec::new();
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
        {
            let hop_by_hop = HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(token));
            if !token.is_empty()
                && !hop_by_hop
                && headers.contains_key(token)
                && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            {
                named.push(name);
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

fn wants_upgrade(req: &Request<Incoming>) -> Option<HeaderValue> {
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if connection_upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Which set of `site` serves a request, and whether to set the sticky cookie. Request
/// n of a canary goes to it when `n * 61 mod 100` is under its weight (61 is prime to
/// 100, so every 100 requests give the canary exactly its weight, interleaved).
fn choose(site: &Site, req: &Request<Incoming>) -> (Track, bool) {
    let Some((canary, weight)) = site.canary.as_ref().filter(|(_, w)| *w > 0) else {
        return (Track::Stable, false);
    };
    if site.sticky {
        let pinned = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE_PREFIX));
        match pinned {
            Some("canary") => return (Track::Canary, false),
            Some("stable") => return (Track::Stable, false),
            _ => {}
        }
    }
    let n = canary.split.fetch_add(1, Ordering::Relaxed);
    if (n.wrapping_mul(61)) % 100 < u64::from(*weight) {
        (Track::Canary, site.sticky)
    } else {
        (Track::Stable, site.sticky)
    }
}

const COOKIE_PREFIX: &str = "betcycle_track=";

/// Holds a request's place in its set's in-flight count (and gauge) until the response
/// body (or the WebSocket) is done.
struct InFlight {
    site: Arc<Site>,
    track: Track,
}

impl InFlight {
    /// `site`'s meters are made.
    fn new(site: Arc<Site>, track: Track) -> Self {
        site.set(track).in_flight.enter();
        if let Some(meters) = site.meters.get() {
            meters[track as usize].in_flight.inc();
        }
        InFlight { site, track }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.site.set(self.track).in_flight.leave();
        if let Some(meters) = self.site.meters.get() {
            meters[self.track as usize].in_flight.dec();
        }
    }
}

/// What the proxy answers with: an instance's body, which keeps its request counted in
/// flight and its upstream connection borrowed until it has been sent, or a text of the
/// proxy's own (empty for an upgrade). One type for both, so no answer is boxed.
enum Body {
    Proxied {
        inner: Incoming,
        _in_flight: InFlight,
        _lease: Lease,
    },
    Own(Full<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Proxied { inner, .. } => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Body::Own(text) => Pin::new(text)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            Body::Proxied { inner, .. } => inner.is_end_stream(),
            Body::Own(text) => text.is_end_stream(),
        }
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Proxied { inner, .. } => inner.size_hint(),
            Body::Own(text) => text.size_hint(),
        }
    }
}

async fn handle(
    worker: Arc<Worker>,
    peer: &Peer,
    tls: bool,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let shared = &*worker.shared;
    let (n, new_id) = next_request();
    let request_id = req
        .headers()
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned()
        .unwrap_or(new_id);
    let Some(host) = host_of(&req) else {
        shared.services.metrics.unrouted.inc();
        return plain(
            StatusCode::BAD_REQUEST,
            "the request names no host".into(),
            &request_id,
        );
    };
    let host_name = host.to_str().expect("a host is ASCII");
    // Counted in flight before the table's version is checked again: a request either
    // is counted for the set it goes to, or sees that the table moved (a switch) and is
    // routed again; so a retired set's count cannot miss it (see `Services::retire`).
    let (site, track, set_cookie, in_flight) = loop {
        let Some((site, version)) = route(&shared.services, host_name, req.uri().path()) else {
            shared.services.metrics.unrouted.inc();
            return plain(
                StatusCode::NOT_FOUND,
                format!("no service is deployed for host {host_name}"),
                &request_id,
            );
        };
        let (track, set_cookie) = choose(&site, &req);
        site.meters
            .get_or_init(|| shared.services.metrics.meters(&site.service));
        let in_flight = InFlight::new(site.clone(), track);
        if shared.services.version() == version {
            break (site, track, set_cookie, in_flight);
        }
    };
    if let Some(length) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > shared.limits.max_body
    {
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the proxy's limit of {} bytes",
                shared.limits.max_body
            ),
            &request_id,
        );
    }
    let meters = &site.meters.get().expect("made above")[track as usize];
    let set = site.set(track);
    let Some(upstream) = set.pick(n as usize) else {
        return plain(
            StatusCode::BAD_GATEWAY,
            "the service has no instance".into(),
            &request_id,
        );
    };

    let upgrade = wants_upgrade(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // Origin-form (`/path?query`) on the instance's own connection.
    parts.uri = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.version = hyper::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::HOST, host.clone());
    parts
        .headers
        .insert(HeaderName::from_static("x-forwarded-host"), host);
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => HeaderValue::from_str(&format!("{earlier}, {}", peer.addr.ip())).ok(),
        None => Some(peer.ip.clone()),
    };
    if let Some(value) = forwarded_for {
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    parts
        .headers
        .insert(HeaderName::from_static("x-request-id"), request_id.clone());
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    let limited = Limited::new(
        body,
        usize::try_from(shared.limits.max_body).unwrap_or(usize::MAX),
    );
    let forwarded = Request::from_parts(parts, limited);

    let started = Instant::now();
    let answer = tokio::time::timeout(
        shared.limits.upstream_timeout,
        worker.pool.send(upstream.addr, forwarded),
    )
    .await;
    let took = started.elapsed();
    let failed = |error: &Counter, status: StatusCode, text: String| {
        error.inc();
        count(meters, status, took);
        set.stats.record(true, took);
        plain(status, text, &request_id)
    };
    let response = match answer {
        Err(_) => {
            return failed(
                &meters.timeouts,
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the service did not answer within {} s",
                    shared.limits.upstream_timeout.as_secs()
                ),
            );
        }
        Ok(Err(e)) => {
            if e.body_too_large() {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is over the proxy's limit".into(),
                    &request_id,
                );
            }
            tracing::debug!(error = %e, upstream = %upstream.addr, "an instance did not answer");
            return failed(
                &meters.unanswered,
                StatusCode::BAD_GATEWAY,
                "the service did not answer".into(),
            );
        }
        Ok(Ok(answer)) => answer,
    };
    let (mut response, lease) = response;
    let status = response.status();
    count(meters, status, took);
    set.stats.record(status.is_server_error(), took);

    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        // The connection is the tunnel's now, never another request's.
        lease.forget();
        let closing = set.closing.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                () = closing.cancelled() => {}
            }
        });
        let (mut parts, _) = response.into_parts();
        parts
            .headers
            .insert(HeaderName::from_static("x-request-id"), request_id);
        return Response::from_parts(parts, Body::Own(Full::new(Bytes::new())));
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(HeaderName::from_static("x-request-id"), request_id);
    if set_cookie {
        let value = format!(
            "{COOKIE_PREFIX}{}; Path=/; HttpOnly; SameSite=Lax",
            track.as_str()
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.append(header::SET_COOKIE, v);
        }
    }
    let body = Body::Proxied {
        inner: body,
        _in_flight: in_flight,
        _lease: lease,
    };
    Response::from_parts(parts, body)
}

fn count(meters: &Meters, status: StatusCode, took: Duration) {
    let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
    meters.requests[class].inc();
    meters.durations.observe(took);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_told_from_its_port_and_anything_else_is_no_host() {
        for (sent, host) in [
            ("app.test", Some("app.test")),
            ("app.test:8080", Some("app.test")),
            ("app.test.:8080", Some("app.test")),
            ("App.Test", Some("App.Test")),
            ("my_app-2.test~x", Some("my_app-2.test~x")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1]", Some("[::1]")),
            ("[2001:db8::7]:443", Some("[2001:db8::7]")),
            ("app.test:", Some("app.test")),
            ("", None),
            (".", None),
            (":80", None),
            ("app.test:80x", None),
            ("app.test:80:81", None),
            ("app test", None),
            ("user@app.test", None),
            ("app/test", None),
            ("[::1", None),
            ("[]", None),
            ("[::1]x", None),
            ("[fe80::1%eth0]", None),
        ] {
            assert_eq!(bare_host(sent), host, "{sent:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Trace, close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-trace", "1"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("host", "app.test"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);

        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("app.test"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn request_ids_are_unique_hex_and_outlive_their_allocation() {
        let ids: Vec<HeaderValue> = (0..IDS_PER_ALLOCATION * 3)
            .map(|_| next_request().1)
            .collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let text = id.to_str().expect("ASCII");
            assert_eq!(text.len(), 32);
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
            assert!(seen.insert(text.to_owned()), "{text} twice");
        }
    }
}
