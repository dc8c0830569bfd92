//! A local HTTP server standing in for ipinfo.io: counts lookups, can answer slowly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Seen {
    lookups: Mutex<Vec<(String, Option<String>)>>,
    delay_ms: AtomicU64,
}

pub struct IpinfoStandIn {
    pub url: String,
    seen: Arc<Seen>,
}

async fn lookup(
    State(seen): State<Arc<Seen>>,
    Path(ip): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    seen.lookups
        .lock()
        .unwrap()
        .push((ip.clone(), query.get("token").cloned()));
    let delay = seen.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    // 81.x.x.x is somewhere else (the new-location notices of SPEC §13); every other address
    // is where it always was.
    if ip.starts_with("81.") {
        return Json(
            json!({"ip": ip, "city": "Paris", "region": "Île-de-France", "country": "FR", "loc": "48.8534,2.3488"}),
        );
    }
    Json(
        json!({"ip": ip, "city": "Mountain View", "region": "California", "country": "US", "loc": "37.4056,-122.0775"}),
    )
}

impl IpinfoStandIn {
    pub async fn start() -> IpinfoStandIn {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/{ip}", get(lookup))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        IpinfoStandIn { url, seen }
    }

    pub fn answer_after(&self, delay: Duration) {
        self.seen
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    /// (ip, token) of every lookup so far.
    pub fn lookups(&self) -> Vec<(String, Option<String>)> {
        self.seen.lookups.lock().unwrap().clone()
    }
}
