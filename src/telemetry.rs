//! `GET /metrics` (SPEC §14): Prometheus text from the `metrics` facade, served on its own
//! listener (`METRICS_ADDR`) so that it is never public by accident. Counters and histograms
//! are recorded where things happen; gauges that describe the database (outbox backlog,
//! pool) are read when Prometheus scrapes.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::store::Store;
use crate::time::Clock;

/// Latency buckets in seconds: sub-millisecond reads up to a queued sign-in.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's one recorder, installed by the first service that serves metrics. Without
/// it the `metrics` macros record nothing and cost next to nothing.
fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
        .context("metrics buckets")?
        .build_recorder();
    let handle = recorder.handle();
    // Only the first installation wins; a second service in the same process (tests) shares it.
    if metrics::set_global_recorder(recorder).is_ok() {
        describe();
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Help lines for every metric (the README lists them too).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "authflow_http_requests_total",
        "HTTP requests answered, by method, route and status."
    );
    describe_histogram!(
        "authflow_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method, route and status."
    );
    describe_counter!(
        "authflow_sign_ins_total",
        "Sign-in attempts by outcome: success, failure, locked, mfa."
    );
    describe_counter!(
        "authflow_rate_limited_total",
        "Requests refused by a rate limit, by limit."
    );
    describe_gauge!(
        "authflow_hash_queue_depth",
        "Requests holding or waiting for a password-hashing slot."
    );
    describe_histogram!(
        "authflow_hash_queue_wait_seconds",
        Unit::Seconds,
        "Time spent waiting for a password-hashing slot."
    );
    describe_counter!(
        "authflow_hash_overloaded_total",
        "Requests refused with 503 overloaded: the hashing wait would have exceeded HASH_QUEUE_MAX_WAIT_MS."
    );
    describe_gauge!("authflow_outbox_pending", "Emails queued and not yet sent.");
    describe_gauge!("authflow_outbox_failed", "Emails given up after retries.");
    describe_gauge!(
        "authflow_outbox_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the oldest email not yet sent (0 when none waits)."
    );
    describe_gauge!(
        "authflow_db_pool_connections",
        "Database connections of the pool, by state: in_use, idle."
    );
    describe_counter!(
        "authflow_geo_lookups_total",
        "IP geolocation lookups sent to ipinfo, by result: ok, error."
    );
    describe_counter!(
        "authflow_geo_cache_hits_total",
        "Sign-in locations answered from the geolocation cache."
    );
}

/// The metrics listener, bound at start so that a taken address fails start-up.
pub struct MetricsServer {
    listener: TcpListener,
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
    clock: Clock,
}

#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
    clock: Clock,
}

impl MetricsServer {
    pub async fn bind(
        addr: std::net::SocketAddr,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let handle = recorder()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("METRICS_ADDR: binding {addr}"))?;
        Ok(Self {
            listener,
            handle,
            store,
            clock,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// Serves `GET /metrics` until `stop` resolves.
    pub async fn serve(self, stop: impl Future<Output = ()> + Send + 'static) {
        let app = Router::new()
            .route("/metrics", get(scrape))
            .with_state(Scrape {
                handle: self.handle,
                store: self.store,
                clock: self.clock,
            });
        if let Err(e) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    }
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    let pool = scrape.store.pool_stats();
    metrics::gauge!("authflow_db_pool_connections", "state" => "in_use").set(pool.in_use);
    metrics::gauge!("authflow_db_pool_connections", "state" => "idle").set(pool.idle);
    match scrape.store.outbox_stats().await {
        Ok(outbox) => {
            metrics::gauge!("authflow_outbox_pending").set(outbox.pending as f64);
            metrics::gauge!("authflow_outbox_failed").set(outbox.failed as f64);
            let age = outbox.oldest_pending.map_or(0.0, |oldest| {
                (scrape.clock.now() - oldest).num_milliseconds().max(0) as f64 / 1000.0
            });
            metrics::gauge!("authflow_outbox_oldest_pending_age_seconds").set(age);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: could not read the outbox backlog"),
    }
    scrape.handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        scrape.handle.render(),
    )
        .into_response()
}

/// The route a request matched, passed from inside the router to [`record_requests`].
#[derive(Clone)]
struct RouteLabel(String);

/// Inside the router (a route layer): notes the matched route on the response.
pub async fn label_route(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteLabel(route));
    }
    response
}

/// Outermost: counts and times every answer, by method, route (or `unmatched`) and status.
pub async fn record_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or_else(|| "unmatched".to_owned(), |r| r.0.clone());
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("authflow_http_requests_total", &labels).increment(1);
    metrics::histogram!("authflow_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
