//! The daemon's HTTP API: health, status, Prometheus metrics, the live stream, the dashboard,
//! the bot-control endpoints of seed 001 under `/api/bot/`, and the fleet's locks for holders
//! outside the process under `/api/locks/`.
//!
//! [`HttpApi::builder`] takes a running [`Fleet`] and reads everything from it on request:
//! [`Fleet::health`] (storage counters and the supervision tree's board, no message sent),
//! [`Fleet::lock_stats`], [`Fleet::presence`] and [`Fleet::storage_events`] (messages to the
//! actors through their handles, each bounded by 500 ms; a missing answer is `null`),
//! [`Storage::events`](crate::storage::Storage::events) for the live stream, and the handles of
//! the scheduler, peers, shared data and hazards for the sections. Nothing is cached: every
//! answer is a fresh [`StatusSnapshot`]. A section reads counters in memory and a bounded
//! number of keys (the first ten tasks of a set, never a whole queue), so a snapshot costs the
//! same at any queue depth. The API writes only through the scheduler and admin handles, in the
//! seeds' layout.
//!
//! Two seams decide what the bot endpoints and the snapshot's sections serve:
//!
//! - [`BotApi`]: one method per `/api/bot/` endpoint, each answering 501 unless implemented.
//!   The default ([`FleetBot`]) serves them from the fleet's scheduler, adding a page of the
//!   history archive to the session, task and event listings; a host passes its own with
//!   [`HttpApiBuilder::bot_api`], or [`Unavailable`] to serve no bot control. The request is
//!   authenticated and validated (400 naming the field) before it reaches the seam.
//! - [`StatusSection`]: a named section of the status snapshot, with an optional health reason
//!   (which turns `/health` to 503) and its own Prometheus samples. The built-in ones
//!   ([`QueueSection`], [`BotsSection`], [`SnapshotSection`], [`HazardsSection`],
//!   [`CacheSection`], [`EventsSection`]) fill the dashboard's places
//!   ([`PLACEHOLDER_SECTIONS`]); other names are shown as JSON. [`HttpApiBuilder::section`] adds one, or replaces the section of the same
//!   name.
//!
//! The server (actix-web) runs on a thread of its own (`botfleet-http`), under its own actix
//! system, with `api.workers` worker threads, so it depends neither on the caller's runtime
//! nor on the fleet's actor-system thread. The daemon starts it after `Fleet::start` and stops
//! it before `Fleet::shutdown`; [`HttpApi::stop`] ends the live streams and gives requests in
//! flight two seconds. A bind failure is [`HttpError::Bind`]; the daemon binds with
//! [`HttpApi::bind`] before it starts the fleet and exits 2 naming `api.bind`. Handlers talk to
//! the fleet only through cloneable handles, which work from any thread.
//!
//! Every phase of a request is bounded (`limits.rs`): the first request's headers
//! (`api.header_timeout_ms`), the whole body (`api.body_timeout_ms`), the idle time between two
//! requests (`api.keep_alive_ms`); a request refused before its body is read is answered with
//! `Connection: close` and its body is never read; past `api.max_connections` open connections
//! only `GET`/`HEAD /health` is served.
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | [`HttpApi`], [`HttpApiBuilder`], the state the handlers share (fleet, `[api]` settings, seams, shutdown signal) |
//! | `routes.rs` | the routes: `/health` (GET and HEAD), `/status`, `/metrics`, `/openapi.json`, `/api/bot/...`, `/api/admin/send`, each service area's, a JSON 404 |
//! | `openapi.rs`, `openapi/` | the OpenAPI document, in parts (`base.json` and one per service area), merged and served at `/openapi.json` |
//! | `locks.rs` | `/api/locks/acquire`, `/extend`, `/release`: leases of the fleet's locks, by token, no watchdog |
//! | `limits.rs` | the bounds of each request's phases, `Connection: close` on refusals, the connection cap with its reserve for `/health` |
//! | `snapshot.rs` | [`StatusSnapshot`], the health verdict, the [`StatusSection`] seam |
//! | `sections.rs` | the built-in sections and their Prometheus samples |
//! | `bot.rs` | seed 001's request types and their validation, [`ApiError`] (JSON `{"error","field"}`), the [`BotApi`] seam |
//! | `fleet_bot.rs` | [`FleetBot`]: [`BotApi`] over the fleet's scheduler |
//! | `tasks.rs` | `/api/tasks`: add and read tasks, the worker protocol (claim with a long poll, extend, complete, fail under a lease), dead letters and delayed tasks |
//! | `games.rs` | `/api/game-sessions/...` and `/api/fairness/...`: seed 002's game sessions and fairness records over the fleet's handles, their bodies checked (400 naming the field) |
//! | `auth.rs` | the bearer token on mutating methods, its header parsed strictly, compared in constant time |
//! | `metrics.rs` | Prometheus text from a snapshot, through a registry built per request |
//! | `data.rs`, `data/` | the sidecar's data services: shared data and its stream, admin inboxes with acknowledgement, identities, heartbeats, peers and their stream |
//! | `sse.rs` | `/api/events/stream` (snapshots on a timer, storage events at once) and `/api/bot/event-stream` (the scheduler's events) |
//! | `dashboard.rs`, `dashboard.html` | the page, embedded with `include_str!`, inline CSS and JavaScript |
//! | `history.rs` | the dashboard's recent past: a ring of samples taken every second (`/api/dashboard/history`), the rates in `/metrics` |
//!
//! The command line's side (`botfleet status`, `task`, `admin`, `events`) is the binary's
//! `client.rs`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use tokio::sync::watch;

use crate::fleet::Fleet;
use crate::settings::ApiSettings;

mod auth;
mod bot;
mod dashboard;
mod data;
mod fleet_bot;
mod games;
mod history;
mod limits;
mod locks;
mod metrics;
mod openapi;
mod routes;
mod sections;
mod snapshot;
mod sse;
mod tasks;

pub use bot::{
    AddTaskRequest, AdminSendRequest, ApiError, ArchiveQuery, BotApi, StartRequest, TaskListQuery,
    Unavailable, PRIORITY_MAX, PRIORITY_MIN, TASK_STATUSES, TASK_TYPES,
};
pub use fleet_bot::FleetBot;
pub use sections::{
    BotsSection, CacheSection, EventsSection, HazardsSection, QueueSection, SnapshotSection,
};
pub use snapshot::{HealthVerdict, StatusSection, StatusSnapshot, PLACEHOLDER_SECTIONS};

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// `api.bind` could not be bound (address in use, not local...).
    #[error("api.bind: cannot listen on {bind}: {source}")]
    Bind {
        /// The address.
        bind: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server thread could not start.
    #[error("cannot start the HTTP server: {0}")]
    Start(String),
}

/// What the handlers share: the fleet, the options and the seams.
pub(crate) struct AppState {
    pub(crate) fleet: Fleet,
    pub(crate) settings: ApiSettings,
    pub(crate) bot: Arc<dyn BotApi>,
    pub(crate) sections: Vec<Arc<dyn StatusSection>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Open connections, for `api.max_connections`.
    pub(crate) connections: limits::ConnectionCount,
    /// The dashboard's recent past, sampled every second.
    pub(crate) history: Arc<history::History>,
}

/// Builds an [`HttpApi`]: the fleet, and optionally other settings and the seams.
pub struct HttpApiBuilder {
    fleet: Fleet,
    settings: ApiSettings,
    bot: Arc<dyn BotApi>,
    sections: Vec<Arc<dyn StatusSection>>,
    listener: Option<TcpListener>,
}

impl std::fmt::Debug for HttpApiBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApiBuilder")
            .field("fleet", &self.fleet)
            .field("bind", &self.settings.bind)
            .field("sections", &self.sections.len())
            .finish()
    }
}

impl HttpApiBuilder {
    /// Uses these `[api]` settings instead of the fleet's (tests bind `127.0.0.1:0`).
    pub fn settings(mut self, settings: ApiSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Serves on `listener` (from [`HttpApi::bind`]) instead of binding `api.bind` in
    /// [`HttpApiBuilder::start`]: the daemon binds before it starts its fleet, so that a bad
    /// address fails at once.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Serves the `/api/bot/` task, session and control endpoints with `bot`.
    pub fn bot_api(mut self, bot: impl BotApi) -> Self {
        self.bot = Arc::new(bot);
        self
    }

    /// Adds a section to the status snapshot (and to `/health` and `/metrics`); a section of
    /// the same name as one already there (a built-in one) replaces it.
    pub fn section(mut self, section: impl StatusSection) -> Self {
        let section: Arc<dyn StatusSection> = Arc::new(section);
        match self
            .sections
            .iter_mut()
            .find(|s| s.name() == section.name())
        {
            Some(slot) => *slot = section,
            None => self.sections.push(section),
        }
        self
    }

    /// Binds `api.bind` (unless given a listener) and starts the server on a thread of its
    /// own. Returns once it listens.
    pub fn start(self) -> Result<HttpApi, HttpError> {
        let bind = self.settings.bind.clone();
        let listener = match self.listener {
            Some(listener) => listener,
            None => HttpApi::bind(&bind)?,
        };
        let addr = listener.local_addr().map_err(|source| HttpError::Bind {
            bind: bind.clone(),
            source,
        })?;
        let (stop_tx, shutdown) = watch::channel(false);
        let workers = self.settings.workers;
        let limit = self.settings.body_limit_bytes;
        let header_timeout = Duration::from_millis(self.settings.header_timeout_ms);
        let keep_alive = match self.settings.keep_alive_ms {
            0 => actix_web::http::KeepAlive::Disabled,
            ms => actix_web::http::KeepAlive::Timeout(Duration::from_millis(ms)),
        };
        let per_worker = limits::ConnectionCount::per_worker_limit(&self.settings);
        let connections = limits::ConnectionCount::new(self.settings.max_connections);
        let counter = connections.clone();
        let counter_view = connections.clone();
        let history = Arc::new(history::History::default());
        let sampler = (self.fleet.clone(), history.clone(), shutdown.clone());
        let state = web::Data::new(AppState {
            fleet: self.fleet,
            settings: self.settings,
            bot: self.bot,
            sections: self.sections,
            shutdown,
            connections,
            history,
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("botfleet-http".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let (fleet, history, stop) = sampler;
                    actix_rt::spawn(history::supervise_sampler(fleet, history, stop));
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(state.clone())
                            .app_data(web::PayloadConfig::new(limit))
                            .wrap(actix_web::middleware::from_fn(auth::require_token))
                            // Outermost (the last wrapped): bounds the body and closes
                            // refused connections whatever the inner layers answer.
                            .wrap(actix_web::middleware::from_fn(limits::limit))
                            .configure(routes::configure)
                    })
                    .workers(workers)
                    .client_request_timeout(header_timeout)
                    .keep_alive(keep_alive)
                    .client_disconnect_timeout(limits::LINGER)
                    .max_connections(per_worker)
                    .on_connect(move |io, extensions| {
                        counter.on_connect(extensions);
                        limits::PeerSocket::record(io, extensions);
                    })
                    .disable_signals()
                    .shutdown_timeout(2)
                    .listen(listener);
                    let server = match server {
                        Ok(server) => server.run(),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(server.handle()));
                    if let Err(e) = server.await {
                        tracing::error!(error = %e, "HTTP server failed");
                    }
                })
            })
            .map_err(|e| HttpError::Start(e.to_string()))?;
        let handle = match ready_rx.recv() {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => return Err(HttpError::Start(e)),
            Err(_) => return Err(HttpError::Start("the server thread exited".into())),
        };
        tracing::info!(%addr, "HTTP API listening");
        Ok(HttpApi {
            addr,
            connections: counter_view,
            handle,
            stop_tx,
            thread: Some(thread),
        })
    }
}

/// The running HTTP server. Stop it with [`HttpApi::stop`]; dropping it stops it too, without
/// waiting.
pub struct HttpApi {
    addr: SocketAddr,
    connections: limits::ConnectionCount,
    handle: ServerHandle,
    stop_tx: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi").field("addr", &self.addr).finish()
    }
}

impl HttpApi {
    /// A builder serving `fleet`, with the fleet's `[api]` settings, [`FleetBot`] for the bot
    /// endpoints and the built-in sections.
    pub fn builder(fleet: Fleet) -> HttpApiBuilder {
        let settings = fleet.settings().api.clone();
        HttpApiBuilder {
            bot: Arc::new(FleetBot::new(fleet.clone())),
            fleet,
            settings,
            sections: sections::built_in(),
            listener: None,
        }
    }

    /// Binds `bind` (`api.bind`) for [`HttpApiBuilder::listener`]; an address in use or not
    /// local is [`HttpError::Bind`], which names `api.bind`.
    pub fn bind(bind: &str) -> Result<TcpListener, HttpError> {
        TcpListener::bind(bind).map_err(|source| HttpError::Bind {
            bind: bind.to_owned(),
            source,
        })
    }

    /// Starts a server for `fleet` with the fleet's settings, [`FleetBot`] and the built-in
    /// sections.
    pub fn start(fleet: Fleet) -> Result<HttpApi, HttpError> {
        Self::builder(fleet).start()
    }

    /// The address it listens on (the real port when `api.bind` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now (admitted or not: see `api.max_connections`).
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// Ends the live streams, stops accepting, lets requests in flight finish (up to two
    /// seconds) and joins the server thread.
    pub async fn stop(mut self) {
        let _ = self.stop_tx.send(true);
        self.handle.stop(true).await;
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            let _ = tokio::time::timeout(Duration::from_secs(5), joined).await;
        }
        tracing::info!(addr = %self.addr, "HTTP API stopped");
    }
}

impl Drop for HttpApi {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_tx.send(true);
            // The stop command is sent at once; the returned future only awaits completion.
            drop(self.handle.stop(false));
        }
    }
}
