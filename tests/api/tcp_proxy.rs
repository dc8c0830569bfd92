//! A TCP forwarder between the service and its database, which a test can cut and restore:
//! the database "goes away" and comes back without touching the real server. On a plain
//! (`sslmode=disable`) PostgreSQL connection it can also read what the service asks of the
//! database: each round trip and the statement it ran.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct TcpProxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
    trips: Trips,
}

type Trips = Arc<Mutex<Vec<(usize, RoundTrip)>>>;

/// One round trip the service made to PostgreSQL: the frontend messages up to a `Sync` (or
/// one simple `Query`), whose answer it then waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoundTrip {
    /// Ran a statement: its SQL, as the service prepared it.
    Statement(String),
    /// Prepared a statement (`Parse`, `Describe`) without running it: a statement cache miss.
    Prepare(String),
    /// Nothing but a `Sync`: sqlx's ping.
    Ping,
}

/// Reads the frontend side of one PostgreSQL connection (protocol 3): an untyped start-up
/// message, then messages of one type byte and a big-endian length that counts itself.
#[derive(Default)]
struct Frontend {
    buffer: Vec<u8>,
    started: bool,
    /// Prepared statement name → SQL, from `Parse`.
    statements: std::collections::HashMap<String, String>,
    parsed: Option<String>,
    executed: Option<String>,
    bound: Option<String>,
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A NUL-terminated string at the start of `bytes`, and what follows it.
fn c_string(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let rest = bytes.get(end + 1..).unwrap_or_default();
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), rest)
}

impl Frontend {
    fn feed(&mut self, bytes: &[u8], trips: &mut impl FnMut(RoundTrip)) {
        self.buffer.extend_from_slice(bytes);
        loop {
            let header = if self.started { 5 } else { 4 };
            if self.buffer.len() < header {
                return;
            }
            let kind = self.started.then(|| self.buffer[0]);
            let at = header - 4;
            let len = u32::from_be_bytes(self.buffer[at..at + 4].try_into().unwrap()) as usize;
            let total = at + len;
            if self.buffer.len() < total {
                return;
            }
            let message: Vec<u8> = self.buffer.drain(..total).collect();
            let body = &message[header..];
            match kind {
                None => {
                    let code = u32::from_be_bytes(body[..4].try_into().unwrap());
                    self.started = code != SSL_REQUEST && code != GSSENC_REQUEST;
                }
                Some(b'P') => {
                    let (name, rest) = c_string(body);
                    let (sql, _) = c_string(rest);
                    self.statements.insert(name, sql.clone());
                    self.parsed = Some(sql);
                }
                Some(b'B') => {
                    let (_portal, rest) = c_string(body);
                    let (name, _) = c_string(rest);
                    self.bound = self.statements.get(&name).cloned();
                }
                Some(b'E') => self.executed = self.bound.take().or(Some(String::new())),
                Some(b'Q') => {
                    let (sql, _) = c_string(body);
                    trips(RoundTrip::Statement(sql));
                }
                Some(b'S') => {
                    let trip = match (self.executed.take(), self.parsed.take()) {
                        (Some(sql), _) => RoundTrip::Statement(sql),
                        (None, Some(sql)) => RoundTrip::Prepare(sql),
                        (None, None) => RoundTrip::Ping,
                    };
                    trips(trip);
                }
                Some(_) => {}
            }
        }
    }
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let trips: Trips = Arc::default();
        let accept = tokio::spawn({
            let open = Arc::clone(&open);
            let links = Arc::clone(&links);
            let trips = Arc::clone(&trips);
            async move {
                let mut accepted = 0;
                while let Ok((inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        // Cut: the connection is closed at once, as by a host that went away.
                        drop(inbound);
                        continue;
                    }
                    let trips = Arc::clone(&trips);
                    accepted += 1;
                    let connection = accepted;
                    let link = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(target).await {
                            let mut record = |trip| trips.lock().unwrap().push((connection, trip));
                            forward(inbound, outbound, &mut record).await;
                        }
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            }
        });
        TcpProxy {
            port,
            open,
            links,
            accept,
            trips,
        }
    }

    /// A proxy in front of the PostgreSQL server of `database_url`, and that URL pointed at
    /// the proxy.
    pub async fn in_front_of(database_url: &str) -> (TcpProxy, reqwest::Url) {
        let mut url = reqwest::Url::parse(database_url).unwrap();
        let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        let target = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = TcpProxy::start(target).await;
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(proxy.port)).unwrap();
        (proxy, url)
    }

    /// The round trips made through the proxy since the last call, in order, each with the
    /// number of the connection it was made on.
    pub fn take_round_trips(&self) -> Vec<(usize, RoundTrip)> {
        std::mem::take(&mut *self.trips.lock().unwrap())
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Copies both ways, reading the service's side as it passes.
async fn forward(inbound: TcpStream, outbound: TcpStream, trips: &mut impl FnMut(RoundTrip)) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_service, mut to_service) = inbound.into_split();
    let (mut from_database, mut to_database) = outbound.into_split();
    let upstream = async {
        let mut frontend = Frontend::default();
        let mut buffer = vec![0; 16 * 1024];
        loop {
            match from_service.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    frontend.feed(&buffer[..n], trips);
                    if to_database.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_database.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut from_database, &mut to_service).await;
        let _ = to_service.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
