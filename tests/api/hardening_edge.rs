//! SPEC §9 at the edge: slow and idle connections, the connection cap, what a request's head
//! and body may be, request ids, owner-only files, and the start-up checks of the binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{assert_error, Backend, TestApp, TestUser, PASSWORD, SECRET};

/// An answer read off a raw connection.
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    TcpStream::connect(address).await.unwrap()
}

/// Reads one HTTP/1.1 answer (head and `Content-Length` body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]);
                return Ok(RawResponse {
                    status,
                    head,
                    body: body.into_owned(),
                });
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` and reads the answer, in at most 5 s.
async fn exchange(stream: &mut TcpStream, request: &str) -> RawResponse {
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_response(stream))
        .await
        .expect("an answer within 5 s")
        .unwrap()
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

async fn sqlite_app(extra: &[(&str, &str)]) -> TestApp {
    let mut app = TestApp::builder(Backend::Sqlite);
    for (name, value) in extra {
        app = app.env(name, value);
    }
    app.spawn().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_slowly_is_cut_off_with_408() {
    let app = sqlite_app(&[]).await;
    let started = Instant::now();
    let stream = connect(&app).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // One more header line every 3 s: never a complete head.
    let trickle = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if writer
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), reader.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(read.is_ok(), "the connection was still open after 15 s");
    // Closed by the header timeout, not by anything sooner.
    assert!(
        elapsed >= Duration::from_secs(9),
        "closed after {elapsed:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    eprintln!("slow head: closed with 408 after {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
    let app = sqlite_app(&[]).await;
    let mut stream = connect(&app).await;
    assert_eq!(exchange(&mut stream, HEALTH).await.status, 200);
    // Idle for longer than a head may take: still open (idle connections get 75 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(exchange(&mut stream, HEALTH).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_oversized_body_is_refused_at_once() {
    let app = sqlite_app(&[]).await;
    let mut stream = connect(&app).await;
    let started = Instant::now();
    // The head only: the server must not wait for 10 GB that never come.
    let r = exchange(
        &mut stream,
        "POST /api/auth/signin HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    assert!(elapsed < Duration::from_secs(1), "413 after {elapsed:?}");
    eprintln!("declared 10 GB body: 413 after {elapsed:?}");

    // Just over the limit too; at the limit the body is read (and judged as JSON).
    let over = app
        .client
        .post(app.url("/api/auth/signin"))
        .header("content-type", "application/json")
        .body(vec![b' '; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_error(over, 413, "payload_too_large").await;
    let at = app
        .client
        .post(app.url("/api/auth/signin"))
        .header("content-type", "application/json")
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(at, 400, "invalid_body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_refused() {
    let app = sqlite_app(&[]).await;
    let mut stream = connect(&app).await;
    let r = exchange(
        &mut stream,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "bad_request");
    // One Host is fine on the same kind of request.
    let mut stream = connect(&app).await;
    assert_eq!(exchange(&mut stream, HEALTH).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_be_json_objects_in_utf8() {
    let app = sqlite_app(&[]).await;
    app.sign_up(&TestUser::named("array.body")).await;
    let signin = app.url("/api/auth/signin");
    // serde would read the fields by position and sign in.
    let r = app
        .client
        .post(&signin)
        .json(&json!(["array.body", null, PASSWORD]))
        .send()
        .await
        .unwrap();
    let e = assert_error(r, 400, "invalid_body").await;
    assert!(e.message.contains("object"), "{e:?}");
    for scalar in [json!("array.body"), json!(42), json!(null), json!(true)] {
        let r = app.client.post(&signin).json(&scalar).send().await.unwrap();
        assert_error(r, 400, "invalid_body").await;
    }

    let body = json!({"username": "array.body", "password": PASSWORD}).to_string();
    let with_type = |content_type: &'static str| {
        app.client
            .post(&signin)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
    };
    for refused in [
        "application/json; charset=latin1",
        "application/json; charset=ISO-8859-1",
        "application/json; charset=utf-16",
    ] {
        assert_error(
            with_type(refused).await.unwrap(),
            415,
            "unsupported_media_type",
        )
        .await;
    }
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
    ] {
        assert_eq!(
            with_type(accepted).await.unwrap().status(),
            200,
            "{accepted}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_numbers_written_with_a_fraction_are_integers() {
    let app = sqlite_app(&[]).await;
    let (_, tokens) = app.signed_in_user().await;
    let token = tokens.token.as_str();
    // `password` is ignored where a key needs none, and required where it does (§9).
    let key = app
        .create_key(
            &tokens,
            json!({"name": "thirty days", "expires_in_days": 30.0}),
        )
        .await;
    let created = chrono::DateTime::parse_from_rfc3339(&key.created_at).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(key.expires_at.as_deref().unwrap()).unwrap();
    assert_eq!((expires - created).num_days(), 30);

    let r = app
        .try_create_key(
            &tokens,
            json!({"name": "a day and a half", "expires_in_days": 1.5}),
        )
        .await;
    assert_error(r, 400, "invalid_body").await;

    // The same in a query string.
    let r = app
        .get_with("/api/users/me/login-history?limit=30.0", token)
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .get_with("/api/users/me/login-history?limit=30.5", token)
        .await;
    assert_error(r, 400, "validation_failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_plain_request_ids_are_kept() {
    let app = sqlite_app(&[]).await;
    let request = |id: Vec<u8>| {
        app.client
            .get(app.url("/api/nope"))
            .header(
                "x-request-id",
                reqwest::header::HeaderValue::from_bytes(&id).unwrap(),
            )
            .send()
    };
    let kept = "Trace-1.2_abc";
    let r = request(kept.into()).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], kept);
    assert_eq!(assert_error(r, 404, "not_found").await.request_id, kept);
    let longest = "a".repeat(64);
    let r = request(longest.clone().into()).await.unwrap();
    assert_eq!(r.headers()["x-request-id"], longest.as_str());

    for forged in [
        b"forged id\" level=error msg=\"admin signed in".to_vec(),
        b"a".repeat(65),
        b"tab\there".to_vec(),
        "\u{e9}vil".as_bytes().to_vec(),
        b"{\"json\":1}".to_vec(),
    ] {
        let r = request(forged.clone()).await.unwrap();
        let echoed = r.headers()["x-request-id"].as_bytes().to_vec();
        assert_ne!(echoed, forged);
        let echoed = String::from_utf8(echoed).unwrap();
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
        let e = assert_error(r, 404, "not_found").await;
        assert_eq!(e.request_id, echoed, "the envelope names the same id");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_mailbox_and_data_folder_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let dir = tempfile::tempdir().unwrap();
    // A folder that does not exist yet: the service makes it (the temp dir is 0700 already).
    let data = dir.path().join("state");
    let database_url = format!("sqlite://{}", data.join("authflow.db").display());
    let data_dir = data.display().to_string();
    let app = TestApp::builder(Backend::Sqlite)
        .database_url(&database_url)
        .dir(dir)
        .env("DATA_DIR", &data_dir)
        .spawn()
        .await;
    app.sign_up(&TestUser::new()).await;
    // The welcome email lands in the development mailbox.
    app.deliver_all_emails().await;
    let mailbox = data.join("mail");
    let eml = std::fs::read_dir(&mailbox)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "eml"))
        .unwrap_or_else(|| panic!("no email in {}", mailbox.display()));
    assert_eq!(mode(&data), 0o700, "data folder");
    assert_eq!(mode(&mailbox), 0o700, "mailbox folder");
    assert_eq!(mode(&eml), 0o600, "{}", eml.display());
    for file in ["authflow.db", "authflow.db-wal", "authflow.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
}

/// The real binary in `dir` (no stray `.env`) with only these variables, stdin not a terminal.
fn authflow(dir: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_authflow"))
        .current_dir(dir)
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn production_refuses_a_plain_http_app_url() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("authflow.db").display());
    let production = [
        ("APP_ENV", "production"),
        ("JWT_SECRET", SECRET),
        ("SMTP_URL", "smtp://127.0.0.1:25"),
        ("DATABASE_URL", &database_url),
    ];
    for app_url in [None, Some("http://auth.example.com")] {
        let mut vars = production.to_vec();
        vars.extend(app_url.map(|url| ("APP_URL", url)));
        let out = authflow(dir.path(), &["migrate"], &vars);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{app_url:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("APP_URL"), "{stderr}");
    }
    let mut vars = production.to_vec();
    vars.push(("APP_URL", "https://auth.example.com"));
    let out = authflow(dir.path(), &["migrate"], &vars);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn create_admin_without_a_terminal_asks_for_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("authflow.db").display());
    let data_dir = dir.path().display().to_string();
    let out = authflow(
        dir.path(),
        &[
            "create-admin",
            "--username",
            "no.terminal",
            "--email",
            "root@example.com",
        ],
        &[
            ("DATABASE_URL", &database_url),
            ("JWT_SECRET", SECRET),
            ("DATA_DIR", &data_dir),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("set ADMIN_PASSWORD"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_held_connections_are_still_served() {
    let app = sqlite_app(&[("MAX_CONNECTIONS", "4")]).await;
    // Four kept-alive connections, each served once, so each holds a slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(&app).await;
        assert_eq!(exchange(&mut stream, HEALTH).await.status, 200);
        held.push(stream);
    }
    // A fifth gets through to the kernel's backlog, but is not served.
    let mut fifth = connect(&app).await;
    fifth.write_all(HEALTH.as_bytes()).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(1500), read_response(&mut fifth)).await;
    assert!(waited.is_err(), "a fifth connection was served at the cap");

    // The held ones still are, at once.
    let started = Instant::now();
    assert_eq!(exchange(&mut held[0], HEALTH).await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));

    // When one closes, the waiting one is taken in and answered.
    drop(held.pop());
    let r = tokio::time::timeout(Duration::from_secs(5), read_response(&mut fifth))
        .await
        .expect("the waiting connection is served once a slot frees")
        .unwrap();
    assert_eq!(r.status, 200);
}
