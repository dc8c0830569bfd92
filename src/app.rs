//! `App::build(config)` binds the listener and wires the service; `run_until_stopped` serves it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::password::Passwords;
use crate::auth::tokens::{signing_secret, Jwt};
use crate::auth::Auth;
use crate::config::Config;
use crate::geo::ipinfo::GeoLocator;
use crate::http::cors::OriginPolicy;
use crate::http::CsrfKey;
use crate::http::{router, AppState};
use crate::mail::outbox::Outbox;
use crate::mail::transport::Transport;
use crate::server::PlainTcp;
use crate::store;
use crate::tasks::Background;
use crate::telemetry::MetricsServer;
use crate::time::Clock;
use crate::tls::ServerTls;

/// How long in-flight requests may run on after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct App {
    listener: TcpListener,
    router: axum::Router,
    port: u16,
    /// HTTPS on the listener, when `TLS_CERT_PATH` and `TLS_KEY_PATH` are set.
    tls: Option<Arc<ServerTls>>,
    /// `HTTP_REDIRECT_PORT`: the plain listener answering 308 to `APP_URL`, and its router.
    redirect: Option<(TcpListener, axum::Router)>,
    max_connections: u32,
    outbox: Outbox,
    auth: Arc<Auth>,
    clock: Clock,
    background: Background,
    metrics: Option<MetricsServer>,
}

/// The service's parts, wired together: what the server and the command line share.
pub struct Services {
    pub config: Arc<Config>,
    pub auth: Arc<Auth>,
    pub outbox: Outbox,
    /// What the use-cases read the time from; tests move it.
    pub clock: Clock,
    /// Work started off the request path; shutdown drains it, tests wait for it.
    pub background: Background,
}

impl Services {
    /// Connects and migrates the database, loads keys, sets up mail and geolocation.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let clock = Clock::system();
        let background = Background::new();
        let store = store::connect(&config)
            .await
            .context("opening the database")?;
        let secret = signing_secret(&config)?;
        let jwt = Jwt::new(&secret, &config.app_url);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let passwords = Passwords::new(cores, config.hash_queue_max_wait)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let transport = Transport::from_settings(&config.mail, config.is_production())
            .context("setting up email delivery")?;
        let outbox = Outbox::new(
            Arc::clone(&store),
            transport,
            config.mail.from.clone(),
            config.mail.first_retry,
            Arc::clone(&wake),
            clock.clone(),
        );
        let geo = Arc::new(GeoLocator::new(
            &config.ipinfo_url,
            config.ipinfo_token.clone(),
        )?);
        let auth = Arc::new(Auth {
            store,
            passwords,
            jwt,
            config: Arc::clone(&config),
            mail_wake: wake,
            geo,
            clock: clock.clone(),
            background: background.clone(),
            sso_http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(crate::auth::sso::PROVIDER_TIMEOUT)
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .context("building the identity providers' HTTP client")?,
            sealing: crate::auth::mfa::SealingKey::derive(
                config
                    .mfa_encryption_key
                    .as_ref()
                    .unwrap_or(&secret)
                    .expose(),
            ),
            lookups: crate::auth::SessionLookups::default(),
            known_sign_ins: crate::auth::KnownSignIns::default(),
        });
        Ok(Self {
            config,
            auth,
            outbox,
            clock,
            background,
        })
    }
}

impl App {
    /// Wires the services and binds `APP_HOST:APP_PORT` (port 0 picks a free one).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // The files first: a bad certificate refuses the start before anything else is done.
        let tls = config
            .tls
            .as_ref()
            .map(ServerTls::load)
            .transpose()?
            .map(Arc::new);
        let Services {
            config,
            auth,
            outbox,
            clock,
            background,
        } = Services::connect(config).await?;
        if !config.app_url.starts_with("https://") {
            tracing::warn!(
                app_url = %config.app_url,
                "APP_URL is not https://: fine for development, refused in production"
            );
        }
        if !config.limits.enabled {
            tracing::warn!("RATE_LIMITS=off: every rate limit is disabled");
        }
        let state = AppState {
            auth: Arc::clone(&auth),
            origins: Arc::new(OriginPolicy::new(&config)),
            csrf: Arc::new(CsrfKey::derive(signing_secret(&config)?.expose())),
            config: Arc::clone(&config),
        };
        let listener = TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.host, config.port))?;
        let port = listener.local_addr()?.port();
        let redirect = match config.http_redirect_port {
            Some(redirect_port) => Some((
                TcpListener::bind((config.host, redirect_port))
                    .await
                    .with_context(|| format!("binding {}:{redirect_port}", config.host))?,
                crate::http::redirect::router(&config.app_url),
            )),
            None => None,
        };
        let metrics = match config.metrics_addr {
            Some(addr) => {
                Some(MetricsServer::bind(addr, Arc::clone(&auth.store), clock.clone()).await?)
            }
            None => None,
        };
        Ok(Self {
            listener,
            router: router(state),
            port,
            tls,
            redirect,
            max_connections: config.max_connections,
            outbox,
            auth,
            clock,
            background,
            metrics,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the `HTTP_REDIRECT_PORT` listener (0 there picks a free one).
    pub fn redirect_port(&self) -> Option<u16> {
        self.redirect
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
            .map(|addr| addr.port())
    }

    /// Whether the listener speaks HTTPS.
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The port of `GET /metrics`, when `METRICS_ADDR` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(MetricsServer::port)
    }

    /// The clock the service reads: tests move it forward instead of sleeping.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// The service's background work: tests wait for it to settle instead of sleeping.
    pub fn background(&self) -> Background {
        self.background.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
    /// finish for at most 30 s.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_worker, worker_stopped) = tokio::sync::watch::channel(false);
        let background = self.background;
        background.spawn_service(maintain(Arc::clone(&self.auth), worker_stopped.clone()));
        if let Some(tls) = &self.tls {
            background.spawn_service(Arc::clone(tls).watch(worker_stopped.clone()));
        }
        let redirect_stop = {
            let mut stopped = worker_stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        background.spawn_service(tend_hashing(
            self.auth.passwords.clone(),
            worker_stopped.clone(),
        ));
        background.spawn_service(self.outbox.run(worker_stopped.clone()));
        if let Some(metrics) = self.metrics {
            let mut stop = worker_stopped;
            background.spawn_service(metrics.serve(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            }));
        }
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_signal = async move {
            shutdown.await;
            tracing::info!("stopping: no new connections, finishing requests and emails in flight");
            // The outbox drains what is due while requests finish: one 30 s budget for both.
            let _ = stop_worker.send(true);
            let _ = stopping_tx.send(());
        };
        let main: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match &self.tls {
            Some(tls) => Box::pin(crate::server::serve(
                self.listener,
                tls.handshake(),
                self.router,
                self.max_connections,
                stop_signal,
            )),
            None => Box::pin(crate::server::serve(
                self.listener,
                PlainTcp,
                self.router,
                self.max_connections,
                stop_signal,
            )),
        };
        let max_connections = self.max_connections;
        let redirect = async move {
            match self.redirect {
                Some((listener, router)) => {
                    crate::server::serve(
                        listener,
                        PlainTcp,
                        router,
                        max_connections,
                        redirect_stop,
                    )
                    .await;
                }
                None => redirect_stop.await,
            }
        };
        let server = async move {
            tokio::join!(main, redirect);
        };
        let deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(deadline);
        tokio::select! {
            () = server => {}
            () = &mut deadline => {
                tracing::warn!("requests still in flight after 30 s; stopping anyway");
            }
        }
        // The outbox, housekeeping and whatever requests left running (rehashes, location
        // lookups) finish within the same budget.
        tokio::select! {
            _ = background.drain(DRAIN_TIMEOUT) => {}
            () = &mut deadline => tracing::warn!("background work still running after 30 s; queued emails are sent after restart"),
        }
        Ok(())
    }
}

/// Housekeeping off the request path: every hour (and once at start), drop rate-limit
/// records no window needs and whatever has outlived its retention (SPEC §9).
async fn maintain(auth: Arc<Auth>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every_hour = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = every_hour.tick() => {
                match auth.prune_rate_limits().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "pruned rate-limit records"),
                    Err(e) => tracing::warn!(error = %e, "could not prune rate-limit records"),
                }
                match auth.prune_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "pruned expired history, sessions and emails"),
                    Err(e) => tracing::warn!(error = %e, "could not prune expired rows"),
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Every 10 s: argon2 memory kept from a burst of sign-ins is freed once hashing is idle, and
/// the requests the full hashing queue refused meanwhile are logged as one warning (and
/// those since the last one when the service stops).
async fn tend_hashing(passwords: Passwords, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    let mut last_seen = 0;
    loop {
        tokio::select! {
            _ = every.tick() => {
                last_seen = passwords.release_idle(last_seen);
                passwords.report_refusals();
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    // The last refusals are not left unsaid.
                    passwords.report_refusals();
                    return;
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
