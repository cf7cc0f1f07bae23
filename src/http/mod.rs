//! The daemon's HTTP API: health, status, Prometheus metrics, the live stream, the dashboard
//! and the bot-control endpoints of seed 001 under `/api/bot/`.
//!
//! [`HttpApi::builder`] takes a running [`Fleet`] and reads everything from it on request:
//! [`Fleet::health`] (storage counters and the supervision tree's board), the lock manager's
//! and the presence actor's figures, recent storage events. Nothing is cached: every answer is
//! a fresh [`StatusSnapshot`]. Two seams decide what the bot endpoints and the snapshot's
//! sections serve:
//!
//! - [`BotApi`]: the task, session and bot-control endpoints. The default ([`FleetBot`]) serves
//!   them from the fleet's scheduler; the request is authenticated and validated (400 naming
//!   the field) first. [`Unavailable`] answers 501 to all of them.
//! - [`StatusSection`]: a named section of the status snapshot, with its own health verdict and
//!   Prometheus samples. The built-in ones ([`QueueSection`], [`BotsSection`],
//!   [`SnapshotSection`], [`HazardsSection`], [`EventsSection`]) fill the dashboard's places;
//!   a host adds its own, or replaces one by registering a section of the same name.
//!
//! The server (actix-web) runs on a thread of its own, under its own actix system, with
//! `api.workers` worker threads; [`HttpApi::stop`] stops it gracefully and ends the live
//! streams. Handlers only talk to the fleet through cloneable handles (storage, actor
//! addresses), which work from any thread.

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
mod fleet_bot;
mod metrics;
mod routes;
mod sections;
mod snapshot;
mod sse;

pub use bot::{
    AddTaskRequest, AdminSendRequest, ApiError, ArchiveQuery, BotApi, StartRequest, TaskListQuery,
    Unavailable, PRIORITY_MAX, PRIORITY_MIN, TASK_STATUSES, TASK_TYPES,
};
pub use fleet_bot::FleetBot;
pub use sections::{BotsSection, EventsSection, HazardsSection, QueueSection, SnapshotSection};
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
}

/// Builds an [`HttpApi`]: the fleet, and optionally other settings and the seams.
pub struct HttpApiBuilder {
    fleet: Fleet,
    settings: ApiSettings,
    bot: Arc<dyn BotApi>,
    sections: Vec<Arc<dyn StatusSection>>,
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

    /// Binds `api.bind` and starts the server on a thread of its own. Returns once it listens.
    pub fn start(self) -> Result<HttpApi, HttpError> {
        let bind = self.settings.bind.clone();
        let listener = TcpListener::bind(&bind).map_err(|source| HttpError::Bind {
            bind: bind.clone(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| HttpError::Bind {
            bind: bind.clone(),
            source,
        })?;
        let (stop_tx, shutdown) = watch::channel(false);
        let workers = self.settings.workers;
        let limit = self.settings.body_limit_bytes;
        let state = web::Data::new(AppState {
            fleet: self.fleet,
            settings: self.settings,
            bot: self.bot,
            sections: self.sections,
            shutdown,
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("botfleet-http".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(state.clone())
                            .app_data(web::PayloadConfig::new(limit))
                            .wrap(actix_web::middleware::from_fn(auth::require_token))
                            .configure(routes::configure)
                    })
                    .workers(workers)
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
        }
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
