//! A real SMTP server on a local port that keeps what it receives: the mail relay of the tests.
// Not every test uses every helper.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mailparse::{MailHeaderMap, ParsedMail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// One email as the sink received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`), without angle brackets.
    pub from: String,
    /// The envelope recipients (`RCPT TO`), without angle brackets.
    pub to: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, lines ending in CRLF.
    pub raw: String,
}

impl ReceivedMail {
    fn parsed(&self) -> ParsedMail<'_> {
        mailparse::parse_mail(self.raw.as_bytes())
            .unwrap_or_else(|e| panic!("received mail does not parse ({e}):\n{}", self.raw))
    }

    /// The decoded `Subject` header.
    pub fn subject(&self) -> String {
        self.parsed()
            .headers
            .get_first_value("Subject")
            .unwrap_or_else(|| panic!("received mail has no Subject:\n{}", self.raw))
    }

    /// The decoded `text/plain` part, with `\n` line endings (SMTP carries CRLF).
    pub fn text(&self) -> String {
        self.part("text/plain")
    }

    /// The decoded `text/html` part, with `\n` line endings.
    pub fn html(&self) -> String {
        self.part("text/html")
    }

    /// The value of the first `token=` query parameter of the text part.
    pub fn token(&self) -> Option<String> {
        let text = self.text();
        let start = ["?token=", "&token="]
            .iter()
            .filter_map(|marker| text.find(marker).map(|at| at + marker.len()))
            .min()?;
        let token: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '%'))
            .collect();
        (!token.is_empty()).then_some(token)
    }

    fn part(&self, mimetype: &str) -> String {
        fn find<'a, 'm>(mail: &'a ParsedMail<'m>, mimetype: &str) -> Option<&'a ParsedMail<'m>> {
            if mail.subparts.is_empty() {
                return (mail.ctype.mimetype == mimetype).then_some(mail);
            }
            mail.subparts.iter().find_map(|part| find(part, mimetype))
        }
        let parsed = self.parsed();
        let part = find(&parsed, mimetype)
            .unwrap_or_else(|| panic!("received mail has no {mimetype} part:\n{}", self.raw));
        part.get_body()
            .unwrap_or_else(|e| panic!("{mimetype} part does not decode ({e}):\n{}", self.raw))
            .replace("\r\n", "\n")
    }
}

/// A port that was free a moment ago (for a server that is "down" until started on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free local port: {e}"))
}

/// The sink: a listener on 127.0.0.1 and what it has received so far.
pub struct SmtpSink {
    port: u16,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    arrived: Arc<Notify>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl SmtpSink {
    /// On a free port of 127.0.0.1.
    pub async fn start() -> SmtpSink {
        Self::start_on(0).await
    }

    /// On the given port, e.g. to bring a "down" server back where the service expects it.
    /// Retries for a few seconds while the port is still held by an earlier listener.
    pub async fn start_on(port: u16) -> SmtpSink {
        let listener = bind(port).await;
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("SMTP sink: no local address: {e}"))
            .port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&received),
            Arc::clone(&arrived),
            stopped,
        ));
        SmtpSink {
            port,
            received,
            arrived,
            stop,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:<port>`: plain SMTP, no TLS, no authentication.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Everything received so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.received).clone()
    }

    /// Waits until at least `n` emails have arrived and returns them all; panics after
    /// `timeout` saying how many did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an arrival in between is not missed.
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let subjects: Vec<String> = messages.iter().map(|m| m.subject()).collect();
                panic!(
                    "SMTP sink on port {}: expected {n} email(s) within {timeout:?}, got {}: {subjects:?}",
                    self.port,
                    messages.len()
                );
            }
        }
    }

    /// Closes the listener and every open connection; the port refuses connections after.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.server).await;
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn lock(received: &Mutex<Vec<ReceivedMail>>) -> MutexGuard<'_, Vec<ReceivedMail>> {
    // A panicking connection task cannot leave the list half-written: pushes are atomic.
    received
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn bind(port: u16) -> TcpListener {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = TcpSocket::new_v4().and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(128)
        });
        match attempt {
            Ok(listener) => return listener,
            Err(_) if port != 0 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("SMTP sink: cannot listen on {addr}: {e}"),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    arrived: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(session(stream, Arc::clone(&received), Arc::clone(&arrived)));
                }
            }
            // Reap finished sessions so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    // Aborting the sessions drops their sockets: clients see the connection close.
    connections.shutdown().await;
}

/// One SMTP session: enough ESMTP for lettre's plain client.
async fn session(
    stream: TcpStream,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    arrived: Arc<Notify>,
) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    writer
        .write_all(b"220 127.0.0.1 ESMTP authflow test sink\r\n")
        .await?;

    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    loop {
        let Some(line) = read_line(&mut reader).await? else {
            return Ok(());
        };
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-127.0.0.1 greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n",
            "HELO" => b"250 127.0.0.1\r\n",
            "MAIL" => {
                from = Some(path_argument(&line));
                to.clear();
                b"250 2.1.0 OK\r\n"
            }
            "RCPT" if from.is_none() => b"503 5.5.1 MAIL first\r\n",
            "RCPT" => {
                to.push(path_argument(&line));
                b"250 2.1.5 OK\r\n"
            }
            "DATA" if to.is_empty() => b"503 5.5.1 RCPT first\r\n",
            "DATA" => {
                writer
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let Some(raw) = read_data(&mut reader).await? else {
                    return Ok(());
                };
                let mail = ReceivedMail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    raw,
                };
                lock(&received).push(mail);
                arrived.notify_waiters();
                b"250 2.0.0 OK: queued\r\n"
            }
            "RSET" => {
                from = None;
                to.clear();
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                writer.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            "STARTTLS" | "AUTH" => b"502 5.5.1 Not implemented\r\n",
            _ => b"500 5.5.2 Command not recognized\r\n",
        };
        writer.write_all(reply).await?;
    }
}

/// One line without its line ending; `None` at end of stream.
async fn read_line(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    if reader.read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The message after `DATA` up to the lone `.`, dot-unstuffed, each line ending in CRLF.
async fn read_data(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<String>> {
    let mut raw = String::new();
    loop {
        let Some(line) = read_line(reader).await? else {
            return Ok(None);
        };
        if line == "." {
            return Ok(Some(raw));
        }
        raw.push_str(line.strip_prefix('.').unwrap_or(&line));
        raw.push_str("\r\n");
    }
}

/// `MAIL FROM:<a@b> SIZE=…` → `a@b`.
fn path_argument(line: &str) -> String {
    let after_colon = line.split_once(':').map_or("", |(_, rest)| rest).trim();
    match (after_colon.find('<'), after_colon.find('>')) {
        (Some(open), Some(close)) if open < close => after_colon[open + 1..close].to_owned(),
        _ => after_colon
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}
