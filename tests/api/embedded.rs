//! The zero-configuration start: the real binary in an empty folder, on SQLite.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{parse, PASSWORD};
use crate::responses::{Message, Tokens, User};
use crate::smtp_sink::free_port;

struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(dir: &Path, port: u16) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_authflow"))
            .current_dir(dir)
            .env_clear()
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if client.get(format!("{base}/health")).send().await.is_ok() {
                return Server { child, base };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("authflow did not start");
    }

    /// SIGTERM, and the process must exit 0.
    fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "authflow exited with {exit}");
    }
}

impl Drop for Server {
    /// A failed test must not leave the server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_folder_is_all_it_needs_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(dir.path(), port).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);

    let r = client
        .post(url("/api/users/create-account"))
        .json(&json!({"name": "Bare Metal", "username": "bare.metal", "email": "bare@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sign_in = || async {
        let r = client
            .post(url("/api/auth/signin"))
            .json(&json!({"username": "bare.metal", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        parse::<Tokens>(r, 200).await
    };
    let first = sign_in().await;
    let kept = sign_in().await;
    let me = client
        .get(url("/api/auth/me"))
        .bearer_auth(&first.token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let r = client
        .post(url("/api/auth/refresh"))
        .json(&json!({"refresh_token": first.refresh_token}))
        .send()
        .await
        .unwrap();
    let refreshed: Tokens = parse(r, 200).await;
    let r = client
        .post(url("/api/auth/logout"))
        .bearer_auth(&refreshed.token)
        .send()
        .await
        .unwrap();
    parse::<Message>(r, 200).await;
    server.stop();

    assert!(dir.path().join("data/authflow.db").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data/jwt_secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Same folder, new process: the account and a token issued before are still good.
    let mut server = Server::start(dir.path(), port).await;
    let url = |path: &str| format!("{}{path}", server.base);
    let me = client
        .get(url("/api/auth/me"))
        .bearer_auth(&kept.token)
        .send()
        .await
        .unwrap();
    let me: User = parse(me, 200).await;
    assert_eq!(me.username, "bare.metal");
    let logged_out = client
        .get(url("/api/auth/me"))
        .bearer_auth(&refreshed.token)
        .send()
        .await
        .unwrap();
    assert_eq!(logged_out.status(), 401);
    server.stop();
}
