//! The pages in a real browser (SPEC §10): Debian's Chromium, headless, driven through its
//! chromedriver over WebDriver (fantoccini), against the real server of the harness.
//!
//! Each test starts its own chromedriver and Chromium session (with a fresh profile) and
//! ends both, also when it fails; at most two run at a time (the machine has 2 cores).
//! Every wait has a deadline and polls for the thing itself, never a fixed sleep.
//! Screenshots go to `target/browser-screenshots/<name>-<desktop|phone>.png`, to be looked at.
//! Without Chromium the tests say `SKIPPED (Chromium)` and pass; under `CI` they fail.

use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::helpers::{in_ci, Backend, TestApp, TestUser, WAIT};
use crate::smtp_sink::free_port;

/// Debian's packages (`chromium`, `chromium-driver`), installed by `.ci/run`; `CHROMIUM` and
/// `CHROMEDRIVER` name others.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long any one thing may take to appear in the browser.
const DEADLINE: Duration = WAIT;

/// Chromium sessions at the same time, in the whole test process.
static SESSIONS: Semaphore = Semaphore::const_new(2);

/// The size of the window a page is looked at in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewport {
    /// 1280×900, a laptop.
    Desktop,
    /// 390×844 CSS pixels, a mobile device (touch, and `<meta name="viewport">` honoured).
    Phone,
}

impl Viewport {
    pub const BOTH: [Viewport; 2] = [Viewport::Desktop, Viewport::Phone];

    pub fn name(self) -> &'static str {
        match self {
            Viewport::Desktop => "desktop",
            Viewport::Phone => "phone",
        }
    }

    /// Width and height in CSS pixels (and in the screenshot's pixels).
    pub fn size(self) -> (u32, u32) {
        match self {
            Viewport::Desktop => (1280, 900),
            Viewport::Phone => (390, 844),
        }
    }
}

/// Chromium and chromedriver, or why the browser tests cannot run.
fn executables() -> Result<(PathBuf, PathBuf), String> {
    let find = |var: &str, default: &str| {
        let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{} is missing (Debian: apt-get install chromium chromium-driver; or set {var})",
                path.display()
            ))
        }
    };
    Ok((
        find("CHROMIUM", CHROMIUM)?,
        find("CHROMEDRIVER", CHROMEDRIVER)?,
    ))
}

/// Where screenshots are kept: `target/browser-screenshots` (or under `CARGO_TARGET_DIR`).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("browser-screenshots")
}

/// A chromedriver process, killed when this is dropped.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn start(executable: &Path, dir: &Path) -> Driver {
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let child = Command::new(executable)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} did not start: {e}", executable.display()));
        Driver { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What chromedriver logged, for a failure's message.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits until chromedriver answers that it is ready for a session.
    async fn ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        let status = format!("{}/status", self.url());
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("chromedriver exited ({exit}):\n{}", self.log());
            }
            if let Ok(answer) = reqwest::get(&status).await {
                if let Ok(body) = answer.json::<Value>().await {
                    if body["value"]["ready"] == json!(true) {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {DEADLINE:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ends a session without the async client (from `Drop`, after a failed test): a plain
    /// HTTP `DELETE /session/{id}`, which quits its Chromium.
    fn delete_session(&self, id: &str) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.port
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Chrome DevTools command through chromedriver (`goog/cdp/execute`): device emulation.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (reqwest::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params});
        (reqwest::Method::POST, Some(body.to_string()))
    }
}

/// One headless Chromium session with its own profile, on its own chromedriver.
pub struct Browser {
    client: Client,
    session: String,
    viewport: Viewport,
    /// Set by `close()`: the session is already over when this is dropped.
    closed: bool,
    // Dropped in this order, after `Drop::drop`: chromedriver, the profile, the slot.
    driver: Driver,
    _profile: TempDir,
    _slot: SemaphorePermit<'static>,
}

impl Browser {
    /// A new session in a desktop-sized window, or `None` (after saying `SKIPPED (Chromium)`
    /// on stderr) when Chromium is not installed and `CI` is not set.
    pub async fn start() -> Option<Browser> {
        let (chromium, chromedriver) = match executables() {
            Ok(found) => found,
            Err(why) => {
                assert!(!in_ci(), "CI is set and Chromium cannot run: {why}");
                // Not through the test's captured output: this must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED (Chromium): {why}; set CI=1 to make this a failure"
                );
                return None;
            }
        };
        let slot = SESSIONS.acquire().await.unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut driver = Driver::start(&chromedriver, profile.path());
        driver.ready().await;
        let (width, height) = Viewport::Desktop.size();
        let user_data_dir = profile.path().join("chromium");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--lang=en-US",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", user_data_dir.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("no Chromium session: {e}\n{}", driver.log()));
        let session = client.session_id().await.unwrap().expect("a session id");
        let mut browser = Browser {
            client,
            session,
            viewport: Viewport::Desktop,
            closed: false,
            driver,
            _profile: profile,
            _slot: slot,
        };
        browser.set_viewport(Viewport::Desktop).await;
        Some(browser)
    }

    /// Ends the session (Chromium quits) and chromedriver.
    pub async fn close(mut self) {
        self.closed = true;
        let client = self.client.clone();
        client.close().await.unwrap();
    }

    async fn cdp(&self, cmd: &'static str, params: Value) {
        self.client
            .issue_cmd(Cdp { cmd, params })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }

    /// Looks at pages in this size from now on (until set again).
    pub async fn set_viewport(&mut self, viewport: Viewport) {
        let (width, height) = viewport.size();
        let mobile = viewport == Viewport::Phone;
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        self.cdp(
            "Emulation.setTouchEmulationEnabled",
            json!({"enabled": mobile, "maxTouchPoints": if mobile { 5 } else { 1 }}),
        )
        .await;
        self.viewport = viewport;
    }

    pub fn viewport(&self) -> Viewport {
        self.viewport
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    pub async fn url(&self) -> url::Url {
        self.client.current_url().await.unwrap()
    }

    pub async fn title(&self) -> String {
        self.client.title().await.unwrap()
    }

    /// The page's HTML as the browser has it now.
    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// What the page says, for a failure's message.
    async fn describe(&self) -> String {
        let url = self.client.current_url().await.map(String::from);
        let text = match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let text: String = text.chars().take(600).collect();
        format!("on {}:\n{text}", url.unwrap_or_default())
    }

    /// The first element `css` selects, waiting for it to appear (at most `DEADLINE`).
    pub async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(DEADLINE)
            .every(Duration::from_millis(25))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!(
                "`{css}` did not appear within {DEADLINE:?} ({e}) {}",
                self.describe().await
            ),
        }
    }

    /// Every element `css` selects now (none is an answer, not a wait).
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// Waits until `css` selects exactly `n` elements (at most `DEADLINE`).
    pub async fn wait_for_count(&self, css: &str, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let found = self.all(css).await.len();
            if found == n {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{css}`: {found} elements, not {n}, after {DEADLINE:?} {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Types `text` into the field `css` (after emptying it).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.wait_for(css).await;
        field.clear().await.unwrap();
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into `{css}`: {e}"));
    }

    pub async fn click(&self, css: &str) {
        self.wait_for(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
    }

    /// Clicks `css` and waits until the browser has left the page it was on (a form's
    /// answer, a link): later look-ups then see the next page, not the old one.
    pub async fn click_and_wait(&self, css: &str) {
        let old = self.client.find(Locator::Css("html")).await.unwrap();
        self.click(css).await;
        let deadline = Instant::now() + DEADLINE;
        // The old page's root goes stale once the next page has replaced it.
        while old.tag_name().await.is_ok() {
            if Instant::now() >= deadline {
                panic!(
                    "clicking `{css}` led nowhere within {DEADLINE:?} {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.wait_for("body").await;
    }

    /// Sends the form `form` with its submit button and waits for the answer's page.
    pub async fn submit(&self, form: &str) {
        self.click_and_wait(&format!("{form} button[type=submit]"))
            .await;
    }

    /// The visible text of the first element `css` selects (waiting for it).
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css).await.text().await.unwrap()
    }

    /// An attribute of the first element `css` selects (waiting for it).
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.wait_for(css).await.attr(name).await.unwrap()
    }

    /// The value of the cookie `name`, if the browser holds it.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        self.client
            .get_named_cookie(name)
            .await
            .ok()
            .map(|c| c.value().to_owned())
    }

    pub async fn forget_cookies(&self) {
        self.client.delete_all_cookies().await.unwrap();
    }

    /// A PNG of what the window shows now, saved as
    /// `target/browser-screenshots/<name>-<desktop|phone>.png`; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{}.png", self.viewport.name()));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    /// The page at both sizes (desktop, then phone), back in the size it was in.
    pub async fn screenshots(&mut self, name: &str) -> [PathBuf; 2] {
        let before = self.viewport;
        let mut paths = Vec::new();
        for viewport in Viewport::BOTH {
            self.set_viewport(viewport).await;
            paths.push(self.screenshot(name).await);
        }
        self.set_viewport(before).await;
        paths.try_into().unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed {
            // A failed test: quit Chromium before chromedriver is killed (which would leave it).
            self.driver.delete_session(&self.session);
        }
    }
}

/// Width and height of a PNG file, after checking it is one.
pub fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// The screenshots exist, are PNGs of the window's size, and hold more than a blank page.
fn assert_screenshots(paths: &[PathBuf; 2]) {
    for (path, viewport) in paths.iter().zip(Viewport::BOTH) {
        let file = path.file_name().unwrap().to_string_lossy();
        assert!(
            file.ends_with(&format!("-{}.png", viewport.name())),
            "{file}"
        );
        assert_eq!(png_size(path), viewport.size(), "{}", path.display());
        let bytes = std::fs::metadata(path).unwrap().len();
        // Chromium's PNG of an empty page: 5.3 kB at desktop size, 2.7 kB at phone size.
        let blank = match viewport {
            Viewport::Desktop => 5_300,
            Viewport::Phone => 2_700,
        };
        assert!(
            bytes > blank * 3 / 2,
            "{}: {bytes} bytes, about an empty page's",
            path.display()
        );
    }
}

/// An emailed link, on this test's server: the links carry `APP_URL`, and the harness's
/// server listens on a port chosen at start, so only the path and query are kept.
fn on_app(app: &TestApp, link: &str) -> String {
    if link.starts_with('/') {
        return app.url(link);
    }
    let link = url::Url::parse(link).unwrap_or_else(|e| panic!("{link}: {e}"));
    match link.query() {
        Some(query) => app.url(&format!("{}?{query}", link.path())),
        None => app.url(link.path()),
    }
}

// What works today: the pages the API already serves.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_docs_page_in_a_browser() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    browser.goto(&app.url("/api/docs")).await;
    assert_eq!(browser.url().await.path(), "/api/docs");
    assert_eq!(browser.title().await, "Auth Flow API");
    let heading = browser.text("h1").await;
    assert!(heading.starts_with("Auth Flow API"), "{heading}");
    assert_eq!(browser.all("h1").await.len(), 1);
    // A row per route, the sign-in among them, and the link to the machine-readable document.
    assert!(browser.all("tr").await.len() > 20);
    assert!(browser.source().await.contains("/api/auth/signin"));
    assert_eq!(
        browser.attr("a[href='/api/openapi.json']", "href").await,
        Some("/api/openapi.json".to_owned())
    );

    let shots = browser.screenshots("api-docs").await;
    assert_screenshots(&shots);
    assert_eq!(browser.viewport(), Viewport::Desktop);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_link_pages_in_a_browser() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::builder(Backend::Sqlite).smtp_sink().spawn().await;

    // A made-up link: the page says why it does not work.
    browser
        .goto(&app.url("/api/auth/verify-email?token=bogus"))
        .await;
    assert_eq!(browser.text("h1").await, "Link not valid");
    assert_eq!(browser.title().await, "Link not valid · Auth Flow");
    let message = browser.text("p").await;
    assert!(
        message.contains("invalid, was already used, or has expired"),
        "{message}"
    );
    assert_screenshots(&browser.screenshots("verify-email-invalid").await);

    // The real link of the welcome email, opened by the person it was sent to.
    let user = TestUser::new();
    app.sign_up(&user).await;
    app.deliver_all_emails().await;
    let token = app.email(1).await.token().expect("a token in the link");
    browser
        .goto(&app.url(&format!("/api/auth/verify-email?token={token}")))
        .await;
    assert_eq!(browser.text("h1").await, "Email verified");
    assert!(browser.text("p").await.contains("is verified"));
    assert!(app.sign_in(&user).await.user.email_verified);
    assert_screenshots(&browser.screenshots("verify-email-done").await);
    browser.close().await;
}

// The flows of issue 11, against the pages' HTML contract (branch `pages`):
// - forms `form#signup` (name, username, email, password), `form#signin` (username,
//   password), `form#forgot` (email), `form#reset` (password, password_confirm), each sent
//   with its `button[type=submit]`; a result page has one `h1`;
// - `/dev/mailbox`: one `article.mail` per email, newest first, subject in `h2`, links as `a`;
// - `/account`: `section#sessions` with one `li.session` per session (the current one with
//   class `current`), each with a `form.signout`; `section#keys` with `form#create-key`
//   (name, password), the new key shown once in `code#new-key`, one `li.key` per key with a
//   `form.revoke`;
// - `/admin`: one `tr.user[data-username="…"]` per user, with a `form.deactivate`.

/// A result page: one heading, saying what happened.
async fn assert_result_page(browser: &Browser) -> String {
    browser.wait_for_count("h1", 1).await;
    let heading = browser.text("h1").await;
    assert!(!heading.trim().is_empty(), "an empty h1");
    heading
}

/// Signs in on `/signin`, as a person types it: the browser then holds the session cookie.
async fn sign_in_on_page(browser: &Browser, app: &TestApp, username: &str, password: &str) {
    browser.goto(&app.url("/signin")).await;
    browser
        .fill("form#signin input[name=username]", username)
        .await;
    browser
        .fill("form#signin input[name=password]", password)
        .await;
    browser.submit("form#signin").await;
    assert!(
        browser.cookie("auth.sid").await.is_some(),
        "no auth.sid cookie after signing in as {username} {}",
        browser.describe().await
    );
}

/// The newest email on `/dev/mailbox` with a link whose address contains `path`: that link,
/// on this test's server. Delivers what is queued first.
async fn mailed_link(browser: &mut Browser, app: &TestApp, path: &str, shot: &str) -> String {
    app.deliver_all_emails().await;
    browser.goto(&app.url("/dev/mailbox")).await;
    browser.wait_for("article.mail").await;
    for mail in browser.all("article.mail").await {
        let subject = mail.find(Locator::Css("h2")).await.unwrap();
        assert!(!subject.text().await.unwrap().trim().is_empty());
        let links = mail
            .find_all(Locator::Css(&format!("a[href*='{path}']")))
            .await
            .unwrap();
        if let Some(link) = links.first() {
            let href = link.attr("href").await.unwrap().expect("an href");
            browser.screenshots(shot).await;
            return on_app(app, &href);
        }
    }
    panic!(
        "no email with a {path} link on /dev/mailbox {}",
        browser.describe().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_signs_up_verifies_signs_in_and_resets_the_password_in_a_browser() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    let user = TestUser::new();

    // Signs up.
    browser.goto(&app.url("/signup")).await;
    browser.screenshots("signup").await;
    browser
        .fill("form#signup input[name=name]", &user.name)
        .await;
    browser
        .fill("form#signup input[name=username]", &user.username)
        .await;
    browser
        .fill("form#signup input[name=email]", &user.email)
        .await;
    browser
        .fill("form#signup input[name=password]", &user.password)
        .await;
    browser.submit("form#signup").await;
    assert_result_page(&browser).await;
    browser.screenshots("signup-done").await;

    // Opens the verification link from the development mailbox.
    let verify = mailed_link(&mut browser, &app, "verify-email", "dev-mailbox").await;
    browser.goto(&verify).await;
    assert_result_page(&browser).await;
    browser.screenshots("verify-email").await;
    assert!(app.sign_in(&user).await.user.email_verified);

    // Signs in.
    browser.goto(&app.url("/signin")).await;
    browser.screenshots("signin").await;
    sign_in_on_page(&browser, &app, &user.username, &user.password).await;
    browser.screenshots("signed-in").await;

    // Forgets the password (on another device: no session), asks for a reset.
    browser.forget_cookies().await;
    browser.goto(&app.url("/forgot-password")).await;
    browser.screenshots("forgot-password").await;
    browser
        .fill("form#forgot input[name=email]", &user.email)
        .await;
    browser.submit("form#forgot").await;
    assert_result_page(&browser).await;
    browser.screenshots("forgot-password-sent").await;

    // Follows the emailed link and sets a new password.
    let reset = mailed_link(&mut browser, &app, "reset-password", "dev-mailbox-reset").await;
    browser.goto(&reset).await;
    browser.wait_for("form#reset").await;
    browser.screenshots("reset-password").await;
    let new_password = "a-brand-new-passphrase-for-7-horses";
    browser
        .fill("form#reset input[name=password]", new_password)
        .await;
    browser
        .fill("form#reset input[name=password_confirm]", new_password)
        .await;
    browser.submit("form#reset").await;
    assert_result_page(&browser).await;
    browser.screenshots("reset-password-done").await;

    // The old password is refused, the new one works: through the API and on the page.
    assert_ne!(
        app.try_sign_in(&user.username, &user.password)
            .await
            .status(),
        200
    );
    app.sign_in_as(&user.username, new_password).await;
    browser.forget_cookies().await;
    sign_in_on_page(&browser, &app, &user.username, new_password).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_revokes_another_session_on_the_account_page_in_a_browser() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    // Signed in elsewhere (a phone app, say), then on the page.
    let (user, elsewhere) = app.signed_in_user().await;
    sign_in_on_page(&browser, &app, &user.username, &user.password).await;

    browser.goto(&app.url("/account")).await;
    let sessions = "section#sessions li.session";
    browser.wait_for_count(sessions, 2).await;
    assert_eq!(browser.all(&format!("{sessions}.current")).await.len(), 1);
    browser.screenshots("account").await;

    browser
        .submit(&format!("{sessions}:not(.current) form.signout"))
        .await;
    browser.goto(&app.url("/account")).await;
    browser.wait_for_count(sessions, 1).await;
    assert_eq!(browser.all(&format!("{sessions}.current")).await.len(), 1);
    browser.screenshots("account-session-revoked").await;
    app.assert_signed_out(&elsewhere.token).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_creates_a_key_sees_it_once_and_revokes_it_in_a_browser() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (user, _) = app.signed_in_user().await;
    sign_in_on_page(&browser, &app, &user.username, &user.password).await;

    browser.goto(&app.url("/account")).await;
    let keys = "section#keys li.key";
    browser.wait_for("form#create-key").await;
    browser.wait_for_count(keys, 0).await;
    browser
        .fill("form#create-key input[name=name]", "deploy script")
        .await;
    browser
        .fill("form#create-key input[name=password]", &user.password)
        .await;
    browser.submit("form#create-key").await;
    let key = browser.text("code#new-key").await.trim().to_owned();
    assert!(!key.is_empty());
    browser.screenshots("account-key-created").await;
    assert_eq!(app.profile_with_key(&key).await.status(), 200);

    // Shown once: the account page opened again lists the key, never its secret.
    browser.goto(&app.url("/account")).await;
    browser.wait_for_count(keys, 1).await;
    assert!(browser.all("code#new-key").await.is_empty());
    assert!(!browser.source().await.contains(&key));

    browser.submit(&format!("{keys} form.revoke")).await;
    browser.goto(&app.url("/account")).await;
    browser.wait_for_count(keys, 0).await;
    browser.screenshots("account-key-revoked").await;
    assert_eq!(app.profile_with_key(&key).await.status(), 401);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_deactivates_a_user_in_a_browser() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    // An administrator made with the `create-admin` command, and a user signed in by the API.
    let (admin, _) = app.signed_in_admin().await;
    let (user, session) = app.signed_in_user().await;
    sign_in_on_page(&browser, &app, &admin.username, &admin.password).await;

    browser.goto(&app.url("/admin")).await;
    let row = format!("tr.user[data-username=\"{}\"]", user.username);
    browser.wait_for(&row).await;
    browser.screenshots("admin").await;
    browser.submit(&format!("{row} form.deactivate")).await;
    browser.screenshots("admin-deactivated").await;

    // That user's session stops working, and a new sign-in is refused.
    app.assert_signed_out(&session.token).await;
    assert_ne!(
        app.try_sign_in(&user.username, &user.password)
            .await
            .status(),
        200
    );
    browser.close().await;
}
