//! HTTPS served directly (SPEC §12): certificates made here with rcgen, a real rustls client
//! (reqwest) that trusts only the test's CA, and the server's files changed while it runs.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use authflow::config::TlsSettings;
use authflow::tls::{Reload, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use reqwest::tls::TlsInfo;
use reqwest::{Method, StatusCode, Version};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_backends;
use crate::helpers::{assert_error, eventually, parse, Backend, TestApp, WAIT};
use crate::smtp_sink::free_port;

both_backends!(https_serves_the_api_with_hsts_over_http2_and_http1);

/// A certificate authority of the test's own.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, in PEM, and the certificate's DER (what a client sees).
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Issued {
    /// Certificate then key, as `reqwest::Identity::from_pem` reads them.
    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .unwrap()
    }
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// For `localhost` and 127.0.0.1, valid now.
    fn server(&self, name: &str) -> Issued {
        self.issue(server_params(name))
    }

    /// A client certificate with this common name.
    fn client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Auth Flow tests");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }
}

fn server_params(name: &str) -> CertificateParams {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// The server's files, in a folder of the test's own.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cert(&self) -> String {
        self.path("cert.pem").display().to_string()
    }

    fn key(&self) -> String {
        self.path("key.pem").display().to_string()
    }

    /// Written the way a certificate manager does: a new file renamed over the old one.
    fn write(&self, name: &str, contents: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        let mut file = std::fs::File::create(&tmp).unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file.sync_all().unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    fn install(&self, issued: &Issued) {
        self.write("cert.pem", &issued.cert_pem);
        self.write("key.pem", &issued.key_pem);
    }
}

/// A client that trusts only `ca` (no built-in roots), shows `identity` if given, and
/// reports the server's certificate.
fn client(ca: &Ca, identity: Option<&Issued>) -> reqwest::Client {
    client_builder(ca, identity).build().unwrap()
}

fn client_builder(ca: &Ca, identity: Option<&Issued>) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("authflow-tests");
    if let Some(identity) = identity {
        builder = builder.identity(identity.identity());
    }
    builder
}

/// The server's certificate as this response's connection saw it.
fn peer_certificate(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<TlsInfo>()
        .and_then(TlsInfo::peer_certificate)
        .expect("a TLS response carries the server's certificate")
        .to_vec()
}

/// An HTTPS server on `files`, its helpers speaking HTTPS through `client`.
async fn https_app(
    backend: Backend,
    files: &Files,
    client: reqwest::Client,
    vars: &[(&str, &str)],
) -> TestApp {
    let mut builder = TestApp::builder(backend)
        .env("TLS_CERT_PATH", &files.cert())
        .env("TLS_KEY_PATH", &files.key());
    for (name, value) in vars {
        builder = builder.env(name, value);
    }
    let mut app = builder.spawn().await;
    app.address = app.address.replacen("http://", "https://", 1);
    app.client = client;
    app
}

/// The server refuses the client's certificate (or its absence) in the handshake. Over TLS
/// 1.2 the client learns it during the handshake, from the server's alert (`alert`); over TLS
/// 1.3 the client has finished its side first, so its request fails without an answer.
async fn assert_refused_in_handshake(ca: &Ca, identity: Option<&Issued>, url: &str, alert: &str) {
    let tls13 = client_builder(ca, identity)
        .min_tls_version(reqwest::tls::Version::TLS_1_3)
        .build()
        .unwrap();
    let e = tls13.get(url).send().await.unwrap_err();
    assert!(e.is_connect() || e.is_request(), "TLS 1.3: {e:?}");
    let tls12 = client_builder(ca, identity)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let e = tls12.get(url).send().await.unwrap_err();
    assert!(e.is_connect(), "TLS 1.2: {e:?}");
    assert!(format!("{e:?}").contains(alert), "TLS 1.2, {alert}: {e:?}");
}

async fn https_serves_the_api_with_hsts_over_http2_and_http1(backend: Backend) {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let server = ca.server("authflow test server");
    files.install(&server);
    let app = https_app(backend, &files, client(&ca, None), &[]).await;

    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.version(), Version::HTTP_2, "ALPN chose h2");
    assert_eq!(peer_certificate(&r), server.der);
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    let body: Value = parse(r, 200).await;
    assert_eq!(body["status"], "ok");

    // The whole sign-in path, over HTTP/2.
    let (_, tokens) = app.signed_in_user().await;
    let me = app.me(&tokens).await;
    assert_eq!(me.id, tokens.user_id);

    // The edge's answers work the same over HTTP/2: an oversized body is refused (its
    // `Connection: close` has no place in HTTP/2 and is dropped), and the connection serves on.
    let huge = serde_json::json!({"username": "a", "password": "x".repeat(70 * 1024)});
    let r = app
        .client
        .post(app.url("/api/auth/signin"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_2);
    assert_error(r, 413, "payload_too_large").await;
    let r = app.client.get(app.url("/api/nope")).send().await.unwrap();
    assert!(r.headers().contains_key("strict-transport-security"));
    assert_error(r, 404, "not_found").await;

    // HTTP/1.1 when the client offers only that.
    let http1 = client_builder(&ca, None).http1_only().build().unwrap();
    let r = http1
        .get(app.url("/api/auth/me"))
        .bearer_auth(&tokens.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_11);
    assert!(r.headers().contains_key("strict-transport-security"));
    assert_eq!(r.status(), 200);

    // Plain HTTP on the HTTPS port gets no answer.
    let plain = reqwest::Client::new();
    let plain_url = app.url("/health").replacen("https://", "http://", 1);
    assert!(plain.get(&plain_url).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_or_meeting_an_expired_certificate_refuses() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    files.install(&ca.server("authflow test server"));
    let app = https_app(Backend::Sqlite, &files, client(&ca, None), &[]).await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let stranger = client(&Ca::new("Another CA"), None);
    let e = stranger.get(app.url("/health")).send().await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");

    // The server serves an expired certificate (it does not judge its own); clients refuse it.
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let mut params = server_params("expired server");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    files.install(&ca.issue(params));
    let app = https_app(Backend::Sqlite, &files, client(&ca, None), &[]).await;
    let e = app.client.get(app.url("/health")).send().await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    assert!(format!("{e:?}").contains("Expired"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_on_disk_is_served_to_new_connections_while_old_ones_go_on() {
    let logs = crate::helpers::captured_logs();
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let first = ca.server("first");
    files.install(&first);
    let app = https_app(
        Backend::Sqlite,
        &files,
        client(&ca, None),
        &[("TLS_RELOAD_INTERVAL_SECS", "1")],
    )
    .await;
    // A connection opened before the change, kept alive in the client's pool.
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(peer_certificate(&r), first.der);
    let (_, tokens) = app.signed_in_user().await;

    let second = ca.server("second");
    files.install(&second);
    let seen = eventually(
        "a new connection sees the new certificate",
        WAIT,
        || async {
            let fresh = client(&ca, None);
            let r = fresh.get(app.url("/health")).send().await.ok()?;
            let der = peer_certificate(&r);
            (der != first.der).then_some(der)
        },
    )
    .await;
    assert_eq!(seen, second.der);

    // The old connection was not dropped: the same client, on its pooled connection, still
    // sees the first certificate and is served.
    let r = app
        .client
        .get(app.url("/api/auth/me"))
        .bearer_auth(&tokens.token)
        .send()
        .await
        .unwrap();
    assert_eq!(peer_certificate(&r), first.der, "the same connection");
    assert_eq!(r.status(), 200);

    // A broken replacement is not taken: the watcher says why, once, and the second
    // certificate stays in use.
    files.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    let cert_path = files.cert();
    eventually("the watcher logs the bad file", WAIT, || {
        let logged = logs.contents();
        let found = logged
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&cert_path) && l.contains("TLS_CERT_PATH"));
        async move { found.then_some(()) }
    })
    .await;
    let r = client(&ca, None)
        .get(app.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_certificate(&r), second.der);
    assert_eq!(r.status(), 200);
}

fn settings(files: &Files) -> TlsSettings {
    TlsSettings {
        cert_path: files.path("cert.pem"),
        key_path: files.path("key.pem"),
        reload_interval: Duration::from_secs(60),
        client_auth: None,
    }
}

/// What the watcher does at each check, step by step: only a changed, valid pair is taken;
/// a bad one is reported (naming the variable) and the certificate in use stays.
#[test]
fn a_reload_takes_a_valid_new_pair_only() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let first = ca.server("first");
    files.install(&first);
    let tls = ServerTls::load(&settings(&files)).unwrap();
    assert_eq!(tls.reload(), Reload::Unchanged);

    let second = ca.server("second");
    // Half-way through a rotation: the new certificate beside the old key.
    files.write("cert.pem", &second.cert_pem);
    match tls.reload() {
        Reload::Kept(why) => {
            assert!(why.contains("TLS_KEY_PATH"), "{why}");
            assert!(why.contains("does not match"), "{why}");
            assert!(!why.contains("PRIVATE KEY"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // The same bad pair again is not news.
    assert_eq!(tls.reload(), Reload::Unchanged);
    files.write("key.pem", &second.key_pem);
    assert_eq!(tls.reload(), Reload::Replaced);
    assert_eq!(tls.reload(), Reload::Unchanged);

    std::fs::remove_file(files.path("key.pem")).unwrap();
    match tls.reload() {
        Reload::Kept(why) => assert!(why.contains("TLS_KEY_PATH"), "{why}"),
        other => panic!("{other:?}"),
    }
    files.write("key.pem", "garbage");
    match tls.reload() {
        Reload::Kept(why) => assert!(why.contains("TLS_KEY_PATH"), "{why}"),
        other => panic!("{other:?}"),
    }
}

/// Start-up refuses bad files with one line that names the variable (and never the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_bad_files_naming_the_variable() {
    let ca = Ca::new("Test CA");
    let good = ca.server("good");
    let other = ca.server("other");
    let files = Files::new();
    files.install(&good);
    files.write("other-key.pem", &other.key_pem);
    files.write("empty.pem", "");
    files.write("ca.pem", &ca.pem());
    files.write("no-cert.pem", "just text\n");
    let missing = files.path("missing.pem").display().to_string();
    let path = |name: &str| files.path(name).display().to_string();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![
                ("TLS_CERT_PATH", missing.clone()),
                ("TLS_KEY_PATH", files.key()),
            ],
            "TLS_CERT_PATH",
        ),
        (
            vec![
                ("TLS_CERT_PATH", files.cert()),
                ("TLS_KEY_PATH", missing.clone()),
            ],
            "TLS_KEY_PATH",
        ),
        (
            vec![
                ("TLS_CERT_PATH", path("no-cert.pem")),
                ("TLS_KEY_PATH", files.key()),
            ],
            "TLS_CERT_PATH",
        ),
        (
            vec![
                ("TLS_CERT_PATH", files.cert()),
                ("TLS_KEY_PATH", path("empty.pem")),
            ],
            "TLS_KEY_PATH",
        ),
        // A certificate where the key should be: no private key in it.
        (
            vec![
                ("TLS_CERT_PATH", files.cert()),
                ("TLS_KEY_PATH", files.cert()),
            ],
            "TLS_KEY_PATH",
        ),
        (
            vec![
                ("TLS_CERT_PATH", files.cert()),
                ("TLS_KEY_PATH", path("other-key.pem")),
            ],
            "TLS_KEY_PATH",
        ),
        (
            vec![
                ("TLS_CERT_PATH", files.cert()),
                ("TLS_KEY_PATH", files.key()),
                ("TLS_CLIENT_CA_PATH", missing.clone()),
            ],
            "TLS_CLIENT_CA_PATH",
        ),
        (
            vec![
                ("TLS_CERT_PATH", files.cert()),
                ("TLS_KEY_PATH", files.key()),
                ("TLS_CLIENT_CA_PATH", path("no-cert.pem")),
            ],
            "TLS_CLIENT_CA_PATH",
        ),
        (vec![("TLS_CERT_PATH", files.cert())], "TLS_KEY_PATH"),
        (vec![("TLS_KEY_PATH", files.key())], "TLS_CERT_PATH"),
        (
            vec![
                ("TLS_CERT_PATH", files.cert()),
                ("TLS_KEY_PATH", files.key()),
                ("TLS_CLIENT_AUTH", "optional".to_owned()),
            ],
            "TLS_CLIENT_AUTH",
        ),
    ];
    for (vars, variable) in cases {
        let mut builder = TestApp::builder(Backend::Sqlite);
        for (name, value) in &vars {
            builder = builder.env(name, value);
        }
        let err = match builder.try_spawn().await {
            Ok(_) => panic!("{vars:?} started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(variable), "{vars:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            !err.contains("PRIVATE KEY") && !err.contains(&good.key_pem),
            "{err}"
        );
    }

    // The real binary exits with the line on stderr.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authflow"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("APP_PORT", "0")
        .env("DATA_DIR", files.dir.path())
        .env("TLS_CERT_PATH", files.cert())
        .env("TLS_KEY_PATH", path("other-key.pem"))
        .current_dir(files.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("authflow:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("TLS_KEY_PATH") && line.contains("does not match"),
        "{stderr}"
    );
}

/// The plain listener sends every request to `APP_URL` (its own host, whatever the client
/// said), keeping path, query and method; `/health` it answers itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_port_sends_plain_requests_to_app_url() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    files.install(&ca.server("server"));
    let redirect_port = free_port();
    let app = https_app(
        Backend::Sqlite,
        &files,
        client(&ca, None),
        &[
            ("HTTP_REDIRECT_PORT", &redirect_port.to_string()),
            ("APP_URL", "https://auth.example.test:8443"),
        ],
    )
    .await;

    for (head, location) in [
        (
            "GET /api/auth/me?x=1&y=%2F HTTP/1.1\r\nHost: evil.example\r\n",
            "https://auth.example.test:8443/api/auth/me?x=1&y=%2F",
        ),
        (
            "POST /api/auth/signin HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n",
            "https://auth.example.test:8443/api/auth/signin",
        ),
        // An absolute target names a host too; it is not followed either.
        (
            "GET http://evil.example/account?tab=keys HTTP/1.1\r\nHost: evil.example\r\n",
            "https://auth.example.test:8443/account?tab=keys",
        ),
        (
            "GET //evil.example/ HTTP/1.1\r\nHost: a\r\n",
            "https://auth.example.test:8443//evil.example/",
        ),
        ("GET / HTTP/1.1\r\n", "https://auth.example.test:8443/"),
    ] {
        let answer = raw_request(redirect_port, head).await;
        let status = answer.lines().next().unwrap_or_default();
        assert_eq!(
            status, "HTTP/1.1 308 Permanent Redirect",
            "{head}: {answer}"
        );
        let found = answer
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(found, location, "{head}");
        assert!(!answer.contains("strict-transport-security"), "{answer}");
    }

    // Also with a client that follows nothing and sends its own Host.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!(
            "http://127.0.0.1:{redirect_port}/reset-password?token=abc"
        ))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        "https://auth.example.test:8443/reset-password?token=abc"
    );

    let r = reqwest::get(format!("http://127.0.0.1:{redirect_port}/health"))
        .await
        .unwrap();
    assert!(!r.headers().contains_key("strict-transport-security"));
    let body: Value = parse(r, 200).await;
    assert_eq!(body["status"], "ok");

    // The HTTPS port itself is not affected.
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

async fn raw_request(port: u16, head: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    answer
}

/// `TLS_CLIENT_AUTH=required`: no certificate, or one of another CA, fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_are_checked_in_the_handshake() {
    let ca = Ca::new("Server CA");
    let clients = Ca::new("Client CA");
    let files = Files::new();
    files.install(&ca.server("server"));
    files.write("clients.pem", &clients.pem());
    let ca_path = files.path("clients.pem").display().to_string();
    let alice = clients.client("alice");
    let app = https_app(
        Backend::Sqlite,
        &files,
        client(&ca, Some(&alice)),
        &[
            ("TLS_CLIENT_CA_PATH", &ca_path),
            ("TLS_CLIENT_AUTH", "required"),
        ],
    )
    .await;

    // A valid certificate gets through, to every route.
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, admin) = app.signed_in_admin().await;
    let r = app.get_with("/api/users/users", &admin.token).await;
    assert_eq!(r.status(), 200);

    let url = app.url("/health");
    assert_refused_in_handshake(&ca, None, &url, "CertificateRequired").await;
    let rogue = Ca::new("Rogue CA").client("alice");
    assert_refused_in_handshake(&ca, Some(&rogue), &url, "UnknownCA").await;
    // The server's own CA is not the clients' CA.
    let misissued = ca.client("alice");
    assert_refused_in_handshake(&ca, Some(&misissued), &url, "UnknownCA").await;
    // Both versions work with a valid one.
    for version in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let c = client_builder(&ca, Some(&alice))
            .min_tls_version(version)
            .max_tls_version(version)
            .build()
            .unwrap();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{version:?}");
    }
}

/// `TLS_CLIENT_AUTH=optional`: anyone connects, the administration routes need the
/// certificate (403 in the envelope before any credential is read); the subject goes into
/// the request log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_guard_the_administration_routes() {
    let logs = crate::helpers::captured_logs();
    let ca = Ca::new("Server CA");
    let clients = Ca::new("Client CA");
    let files = Files::new();
    files.install(&ca.server("server"));
    files.write("clients.pem", &clients.pem());
    let ca_path = files.path("clients.pem").display().to_string();
    let operator = format!(
        "operator-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let certificate = clients.client(&operator);
    let mut app = https_app(
        Backend::Sqlite,
        &files,
        client(&ca, None),
        &[
            ("TLS_CLIENT_CA_PATH", &ca_path),
            ("TLS_CLIENT_AUTH", "optional"),
        ],
    )
    .await;
    let (_, admin) = app.signed_in_admin().await;
    let (_, user) = app.signed_in_user().await;
    let r = app.get_with("/api/auth/me", &user.token).await;
    assert_eq!(r.status(), 200);

    for (method, path) in [
        (Method::GET, "/api/users/users".to_owned()),
        (Method::GET, format!("/api/admin/users/{}", user.user_id)),
        (
            Method::POST,
            format!("/api/admin/users/{}/logout", user.user_id),
        ),
        (Method::GET, "/admin".to_owned()),
    ] {
        let r = app
            .request(method.clone(), &path, Some(&admin.token), None)
            .await;
        let e = assert_error(r, 403, "forbidden").await;
        assert!(e.message.contains("client certificate"), "{path}: {e:?}");
    }
    // Without credentials too: the certificate is checked first.
    let r = app
        .request(Method::GET, "/api/users/users", None, None)
        .await;
    assert_error(r, 403, "forbidden").await;

    // The OpenAPI says so on those routes.
    let doc: Value = parse(
        app.client
            .get(app.url("/api/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let listed = doc["paths"]["/api/users/users"]["get"]["responses"]["403"]["description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(listed.contains("client certificate"), "{listed}");
    let me = doc["paths"]["/api/auth/me"]["get"]["responses"]["403"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(!me.contains("client certificate"), "{me}");

    // With the certificate, the administrator gets through.
    app.client = client(&ca, Some(&certificate));
    let r = app.get_with("/api/users/users", &admin.token).await;
    assert_eq!(r.status(), 200);
    let r = app.get_with("/api/auth/me", &user.token).await;
    assert_eq!(r.status(), 200);
    // And a certificate still has to be valid: another CA's fails the handshake.
    let rogue = Ca::new("Rogue CA").client("operator");
    assert_refused_in_handshake(&ca, Some(&rogue), &app.url("/health"), "UnknownCA").await;

    let logged = logs.contents();
    let line = logged
        .lines()
        .find(|l| l.contains(&operator) && l.contains("/api/users/users"))
        .unwrap_or_else(|| panic!("no request line with the certificate's subject"));
    assert!(line.contains(&format!("CN={operator}")), "{line}");
    assert!(!logged.contains(certificate.key_pem.lines().nth(1).unwrap()));
}

/// SIGHUP makes the real binary re-read its files at once.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_in_the_real_binary() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let first = ca.server("first");
    files.install(&first);
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_authflow"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", port.to_string())
        .env("DATA_DIR", files.dir.path())
        .env("TLS_CERT_PATH", files.cert())
        .env("TLS_KEY_PATH", files.key())
        // Only the signal can make it look before the test ends.
        .env("TLS_RELOAD_INTERVAL_SECS", "3600")
        .current_dir(files.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let url = format!("https://localhost:{port}/health");
    let served = |wanted: Vec<u8>| {
        let (ca, url) = (&ca, url.clone());
        async move {
            let r = client(ca, None).get(&url).send().await.ok()?;
            (peer_certificate(&r) == wanted).then_some(())
        }
    };
    eventually("the binary serves HTTPS", WAIT, || {
        served(first.der.clone())
    })
    .await;

    let second = ca.server("second");
    files.install(&second);
    let r = client(&ca, None).get(&url).send().await.unwrap();
    assert_eq!(peer_certificate(&r), first.der, "not before the signal");
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.0.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    eventually("the new certificate after SIGHUP", WAIT, || {
        served(second.der.clone())
    })
    .await;
    // SIGHUP did not stop it.
    assert!(child.0.try_wait().unwrap().is_none());
}

/// The child process, stopped with the test (also when it fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
