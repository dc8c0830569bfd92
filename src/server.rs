//! The accept loop: HTTP/1 connections with header and idle timeouts (and HTTP/2 where TLS
//! negotiated it), a connection cap and graceful shutdown, over any byte stream a
//! [`Handshake`] makes of a TCP connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// How long a client may take to send a request's head once it started (or, on a new
/// connection, once connected) before the connection is closed (SPEC §9).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may sit idle between requests. Longer than the 60 s of
/// common load balancers, so that they, not we, close the idle connections they pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Pause after an accept error that is not the client's (EMFILE, ENFILE, ENOMEM): retrying at
/// once would spin while nothing has been freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Streams an HTTP/2 connection may open at once (each a request in flight).
const HTTP2_MAX_STREAMS: u32 = 100;
/// The largest request head HTTP/2 accepts (decoded), about what HTTP/1 allows.
const HTTP2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Turns an accepted TCP connection into the stream HTTP is spoken over: the plain
/// connection itself, or a TLS session (`tls::TlsHandshake`). It runs in the connection's
/// own task, within the header timeout, so a slow handshake holds up no one else.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;

    /// What the handshake settled for the connection's requests.
    fn info(_io: &Self::Io) -> ConnectionInfo {
        ConnectionInfo::default()
    }
}

/// What a handshake settled: the HTTP version (ALPN) and the client's verified certificate.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// ALPN chose `h2`: the connection speaks HTTP/2.
    pub http2: bool,
    /// Put in the extensions of each of the connection's requests.
    pub client_certificate: Option<crate::tls::ClientCertificate>,
}

/// Plain HTTP.
#[derive(Debug, Clone, Copy)]
pub struct PlainTcp;

impl Handshake for PlainTcp {
    type Io = TcpStream;
    async fn handshake(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish its request in flight, and returns once all are closed. At most
/// `max_connections` are open at once; further ones wait in the listen backlog.
pub async fn serve<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    router: Router,
    max_connections: u32,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: at the cap, new connections are left to the kernel.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let handshake = handshake.clone();
        let router = router.clone();
        let stopping = stopping.clone();
        // Connections are their own kind of work: the connection slot and the `stopping`
        // signal bound them, and shutdown waits for them through the server future.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let _slot = slot;
            let io = match tokio::time::timeout(HEADER_READ_TIMEOUT, handshake.handshake(tcp)).await
            {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "handshake timed out");
                    return;
                }
            };
            let info = H::info(&io);
            serve_connection(io, peer, info, router, stopping).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it is closed: all slots back means all closed.
    let _ = slots.acquire_many(max_connections).await;
}

/// Accept errors that concern one client's connection only: try the next one at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection: HTTP/1 with keep-alive (or HTTP/2) until the client leaves, a timeout
/// closes it, or the server stops.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    info: ConnectionInfo,
    router: Router,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = Arc::new(HeadWatch::default());
    let mut io = TokioIo::new(Watched {
        inner: io,
        head: Arc::clone(&head),
    });
    let client_certificate = info.client_certificate;
    let service = TowerToHyperService::new(router.map_request(
        move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(certificate) = &client_certificate {
                request.extensions_mut().insert(certificate.clone());
            }
            request
        },
    ));
    if info.http2 {
        serve_http2(io, peer, head, service, stopping).await;
        return;
    }
    let served = {
        let mut builder = http1::Builder::new();
        builder
            .timer(HeadTimer {
                head: Arc::clone(&head),
            })
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        let connection = builder.serve_connection(&mut io, service);
        tokio::pin!(connection);
        tokio::select! {
            served = connection.as_mut() => served,
            () = stopped(&mut stopping) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    match served {
        Ok(()) => {}
        // hyper reports a header timeout as an error only when part of a head had arrived:
        // that client is waiting for an answer.
        Err(e) if e.is_timeout() => {
            tracing::debug!(%peer, "request head not received in time");
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                answer_request_timeout(io.inner_mut()),
            )
            .await;
        }
        Err(e) => tracing::debug!(error = %e, %peer, "connection ended with an error"),
    }
}

/// HTTP/2 (negotiated by ALPN over TLS): at most [`HTTP2_MAX_STREAMS`] requests at once, and
/// the connection closed gracefully once nothing has arrived for [`IDLE_TIMEOUT`] (hyper's
/// HTTP/2 has no head timeout of its own; every stream is still bounded by the request
/// timeout of the router).
async fn serve_http2<I, S>(
    io: TokioIo<Watched<I>>,
    peer: SocketAddr,
    head: Arc<HeadWatch>,
    service: S,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            axum::http::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .max_header_list_size(HTTP2_MAX_HEADER_LIST);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stopped(&mut stopping) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = idle(&head) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, %peer, "HTTP/2 connection ended with an error");
    }
}

/// Resolves once nothing has been read for [`IDLE_TIMEOUT`].
async fn idle(head: &HeadWatch) {
    let start = Instant::now();
    loop {
        let quiet_until = head.last_read().unwrap_or(start) + IDLE_TIMEOUT;
        if Instant::now() >= quiet_until {
            return;
        }
        tokio::time::sleep_until(quiet_until.into()).await;
    }
}

async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A 408 in the envelope of SPEC §4, for a head that never arrived (so no path or method).
async fn answer_request_timeout<W: AsyncWrite + Unpin>(io: &mut W) -> io::Result<()> {
    let body = serde_json::json!({"error": {
        "status": 408,
        "code": "request_timeout",
        "message": "The request headers took too long to arrive.",
        "details": [],
        "timestamp": crate::time::rfc3339(crate::time::Clock::system().now()),
        "path": "",
        "method": "",
        "request_id": uuid::Uuid::new_v4().to_string(),
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    );
    io.write_all(response.as_bytes()).await?;
    io.shutdown().await
}

/// When the request head now being read started to arrive, shared by the stream (which sees
/// the bytes) and the timer (which hyper restarts for every head).
#[derive(Default)]
struct HeadWatch {
    state: Mutex<HeadState>,
}

#[derive(Default)]
struct HeadState {
    /// Heads hyper has started waiting for on this connection.
    heads: u64,
    /// The first byte read since the current wait began.
    first_byte: Option<Instant>,
    /// When bytes last arrived.
    last_read: Option<Instant>,
}

impl HeadWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeadState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// hyper begins waiting for a head; `true` if this is the connection's first.
    fn begin(&self) -> bool {
        let mut state = self.lock();
        state.heads += 1;
        state.first_byte = None;
        state.heads == 1
    }

    fn bytes_arrived(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        if state.first_byte.is_none() {
            state.first_byte = Some(now);
        }
        state.last_read = Some(now);
    }

    fn last_read(&self) -> Option<Instant> {
        self.lock().last_read
    }

    fn first_byte(&self) -> Option<Instant> {
        self.lock().first_byte
    }
}

/// The connection's stream, noting when bytes arrive.
struct Watched<I> {
    inner: I,
    head: Arc<HeadWatch>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.head.bytes_arrived();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// hyper's header-read timer, made to tell a slow head from an idle connection: hyper starts
/// it whenever it waits for a head, also between keep-alive requests. The first head of a
/// connection must be complete within [`HEADER_READ_TIMEOUT`] of the connection; a later one
/// within that time of its first byte, and until a first byte comes the connection may idle
/// for [`IDLE_TIMEOUT`].
struct HeadTimer {
    head: Arc<HeadWatch>,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let first = self.head.begin();
        let idle_until = if first {
            deadline
        } else {
            Instant::now() + IDLE_TIMEOUT
        };
        Box::pin(HeadSleep {
            head: Arc::clone(&self.head),
            first,
            idle_until,
            sleep: Box::pin(tokio::time::sleep_until(idle_until.into())),
        })
    }
}

struct HeadSleep {
    head: Arc<HeadWatch>,
    first: bool,
    idle_until: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = match self.head.first_byte() {
            Some(first_byte) if !self.first => first_byte + HEADER_READ_TIMEOUT,
            _ => self.idle_until,
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// Raises the soft limit on open files to the hard limit, so the connection cap, not the
/// default soft limit (often 1024), bounds how many clients are served.
#[cfg(unix)]
pub fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(limit = ?limit.maximum, "raised the open-file limit"),
        Err(e) => tracing::debug!(error = %e, "could not raise the open-file limit"),
    }
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() {}
