//! `App`: the running parts of one server, wired together once and shared by every handler.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::auth::KeyCache;
use crate::auth::keys::{self, KeyError, Keys};
use crate::auth::password::Hasher;
use crate::config::Config;
use crate::domain::login::SessionPolicy;
use crate::limits::Limits;
use crate::metrics::{FollowerLabels, Metrics};
use crate::store::events::EventBus;
use crate::store::followers::{self, FollowerRegistry, Retention};
use crate::store::writer::{Writer, WriterOptions};
use crate::store::{OpenReport, Store, StoreError};
use crate::vault::{Vault, VaultCell, VaultError};

/// How often retention runs.
const TRIM_INTERVAL: Duration = Duration::from_secs(60);
/// Most events one retention pass removes (then it runs again soon).
const TRIM_BATCH_MAX: usize = 10_000;

/// How long a follower may sit behind the head without advancing before it counts as stalled.
pub const FOLLOWER_STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store_writable: bool,
    pub free_disk_bytes: Option<u64>,
    pub min_free_disk_bytes: u64,
    pub stalled_followers: Vec<String>,
}

/// The server's parts, behind one pointer: every request carries the app in its data, and a
/// clone is one count rather than one per part (the parts' own counts were 4% of a cached
/// read's CPU).
#[derive(Clone)]
pub struct App(Arc<Parts>);

impl std::ops::Deref for App {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// What the app is made of (see `App`).
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Store,
    pub writer: Writer,
    pub bus: EventBus,
    pub metrics: Arc<Metrics>,
    pub followers: Arc<FollowerRegistry>,
    pub operator_keys: Arc<KeyCache>,
    /// The vault; swapped as a whole by a rotation.
    vault: VaultCell,
    /// The one way out (webhooks, health checks, the gateway).
    pub egress: crate::egress::Egress,
    /// Outbound webhooks: the follower that queues messages and the deliverers.
    pub webhooks: crate::webhooks::Webhooks,
    /// The service registry's health checkers.
    pub registry: crate::registry::Registry,
    /// Calls to registered services on callers' behalf.
    pub gateway: crate::gateway::Gateway,
    /// Registered services kept decoded for the gateway's calls.
    pub kept_services: crate::domain::services::Kept,
    /// OAuth connections: authorizations, token refresh, revocation.
    pub oauth: crate::oauth::OAuth,
    /// Sessions with the MCP servers organizations register.
    pub mcp: crate::mcp::Mcp,
    /// System-prompt templates composed and rendered, compositions cached.
    pub prompts: Arc<crate::prompts::Prompts>,
    pub sso: crate::sso::Sso,
    pub keys: Keys,
    pub hasher: Hasher,
    pub limits: Arc<Limits>,
    pub auth_caches: Arc<crate::auth::Caches>,
    /// The search index, once the server has opened it.
    pub search: Arc<std::sync::OnceLock<Arc<crate::search::SearchIndex>>>,
    /// The realtime hub (its dispatcher runs while the server does).
    pub hub: Arc<crate::realtime::Hub>,
    /// Loaded shared documents.
    pub docs: Arc<crate::docs::Engine>,
    /// The built-in TURN server, when configured.
    pub turn: Option<Arc<crate::media::turn::Turn>>,
    /// The media relay; `None` without `media.rtc_listen`.
    pub sfu: Option<crate::media::sfu::Sfu>,
    /// Resumable uploads in progress, and the blob store they finish into.
    pub uploads: crate::uploads::Uploads,
    /// Thumbnails of stored images.
    pub thumbs: crate::thumbs::Thumbs,
    /// The key signed download URLs are made and checked with (derived from the vault's).
    pub download_url_key: Arc<[u8; 32]>,
    /// When each API key's last use was written down, so that is done once a minute at most.
    key_uses: Arc<std::sync::Mutex<std::collections::HashMap<crate::ids::Id, std::time::Instant>>>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Turn(#[from] crate::media::turn::TurnError),
    #[error(transparent)]
    Sfu(#[from] crate::media::sfu::SfuError),
    #[error("egress: {0}")]
    Egress(String),
}

impl App {
    /// Opens the vault and the store (migrating it), starts the writer, and loads the signing
    /// keys (making the first one on a new store).
    pub async fn start(config: Config) -> Result<(Self, OpenReport), StartError> {
        let vault = Arc::new(Vault::open_or_create(&config.master_key_file())?);
        let config_limits = config.limits.clone();
        let data_dir = config.data_dir.clone();
        let cache_bytes = config.store.cache_bytes as usize;
        let (store, report) = tokio::task::spawn_blocking(move || {
            Store::open_with_cache(
                &data_dir,
                cache_bytes,
                &mut |line| tracing::info!(target: "outpost::store", "{line}"),
            )
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))??;
        let head = store.reader()?.meta_u64("gseq")?.unwrap_or(0);
        let bus = EventBus::new(config.events.bus_capacity, head);
        let metrics = Arc::new(Metrics::new());
        let hub = crate::realtime::Hub::new(metrics.clone());
        let writer = Writer::start(
            store.clone(),
            bus.clone(),
            metrics.clone(),
            WriterOptions {
                queue_len_max: config.store.queue_len_max,
                batch_len_max: config.store.batch_len_max,
                min_free_disk_bytes: config.store.min_free_disk_bytes,
                data_dir: config.data_dir.clone(),
                enqueue_timeout: Duration::from_secs(5),
            },
        )?;
        let turn = crate::media::turn::Turn::start(&config.media, vault.derive("turn")).await?.map(Arc::new);
        let sfu =
            crate::media::sfu::Sfu::start(&config.media, config.data_dir.join("recordings"), metrics.clone()).await?;
        if let Some(sfu) = &sfu {
            let hub = hub.clone();
            sfu.set_state_sink(Arc::new(move |org, room, state| hub.call_state(org, room, &state)));
        }
        let docs = crate::docs::Engine::new(store.clone(), writer.clone(), metrics.clone(), config.docs.clone());
        let blobs = crate::blobs::Blobs::open(&config.data_dir)
            .map_err(|e| StoreError::Storage(format!("blobs: {e}")))?
            .keep_in_memory(config.files.memory_cache_bytes);
        let thumbs = crate::thumbs::Thumbs::open(&config.data_dir, metrics.clone())
            .map_err(|e| StoreError::Storage(format!("thumbnails: {e}")))?;
        let uploads = crate::uploads::Uploads::open(&config.data_dir, blobs, config.files.clone(), metrics.clone())
            .map_err(|e| StoreError::Storage(format!("uploads: {e}")))?
            .with_thumbs(thumbs.clone());
        let download_url_key = Arc::new(vault.derive("download-urls"));
        let vault_cell = VaultCell::new(vault);
        let egress = crate::egress::Egress::new(&config.egress).map_err(StartError::Egress)?;
        let (webhooks, registry, gateway, oauth) =
            outbound(&config, &store, &writer, &bus, &egress, &vault_cell, &metrics);
        let mcp = crate::mcp::Mcp::new(crate::mcp::Parts {
            egress: egress.clone(),
            oauth: oauth.clone(),
            gateway: gateway.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            config: config.mcp.clone(),
        });
        let prompts = Arc::new(crate::prompts::Prompts::new(config.prompts.clone(), store.clone(), bus.clone()));
        let app = Self(Arc::new(Parts {
            mcp,
            prompts,
            uploads,
            thumbs,
            download_url_key,
            docs,
            turn,
            sfu,
            config: Arc::new(config),
            store,
            writer,
            bus,
            metrics,
            followers: Arc::default(),
            operator_keys: Arc::default(),
            vault: vault_cell,
            egress,
            webhooks,
            registry,
            kept_services: crate::domain::services::Kept::default(),
            gateway,
            sso: crate::sso::Sso::new(oauth.clone()),
            oauth,
            keys: Keys::empty(),
            hasher: Hasher::default(),
            limits: Arc::new(Limits::new(config_limits)),
            hub,
            key_uses: Arc::default(),
            auth_caches: Arc::default(),
            search: Arc::default(),
        }));
        app.load_keys().await?;
        Ok((app, report))
    }

    /// What `/health/ready` reports: the store takes writes, the disk has room, no follower
    /// is stalled.
    pub fn readiness(&self) -> Readiness {
        let writer = self.writer.state();
        let store_writable = writer.alive() && writer.last_commit_ok();
        let free = crate::store::free_disk_bytes(&self.config.data_dir);
        let floor = self.config.store.min_free_disk_bytes;
        let disk_ok = floor == 0 || free.is_some_and(|f| f >= floor);
        let stalled = self.followers.stalled(self.bus.head_gseq(), FOLLOWER_STALL);
        Readiness {
            ready: store_writable && disk_ok && stalled.is_empty(),
            store_writable,
            free_disk_bytes: free,
            min_free_disk_bytes: floor,
            stalled_followers: stalled,
        }
    }

    /// (Re)loads the signing keys, making the first one when there is none.
    pub async fn load_keys(&self) -> Result<(), KeyError> {
        let (store, vault, k) = (self.store.clone(), self.vault(), self.keys.clone());
        let reload = move || k.reload(&store, &vault);
        tokio::task::spawn_blocking(reload.clone()).await.map_err(|e| StoreError::Storage(e.to_string()))??;
        if self.keys.ring().signing.is_none() {
            keys::rotate(&self.writer, &self.vault(), "system").await?;
            tokio::task::spawn_blocking(reload).await.map_err(|e| StoreError::Storage(e.to_string()))??;
        }
        Ok(())
    }

    /// Notes that an API key was used; its last-used time is written at most once a minute.
    pub fn note_key_use(&self, org: crate::ids::Id, key: crate::ids::Id) {
        const EVERY: Duration = Duration::from_secs(60);
        let due = self.key_uses.lock().is_ok_and(|mut m| {
            if m.len() >= 10_000 {
                m.clear();
            }
            let due = m.get(&key).is_none_or(|t| t.elapsed() >= EVERY);
            if due {
                m.insert(key, std::time::Instant::now());
            }
            due
        });
        if due {
            let writer = self.writer.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::domain::api_keys::touch(&writer, org, key).await {
                    tracing::warn!(error = %e, "could not record an API key's use");
                }
            });
        }
    }

    /// The vault in force.
    pub fn vault(&self) -> Arc<Vault> {
        self.vault.get()
    }

    /// Adds a new current signing key (the others retire) and loads it.
    pub async fn rotate_signing_key(&self, actor: &str) -> Result<keys::SigningKeyRecord, KeyError> {
        let record = keys::rotate(&self.writer, &self.vault(), actor).await?;
        self.load_keys().await?;
        Ok(record)
    }

    /// Replaces the vault's master key and re-seals everything under it; the new key id.
    pub async fn rotate_vault(&self, actor: &str) -> Result<String, KeyError> {
        let old = self.vault();
        let new = Arc::new(old.begin_rotation()?);
        // The new vault opens values sealed under either key, so it serves from now on.
        self.vault.set(new.clone());
        keys::reseal_all(&self.writer, new.clone(), actor).await?;
        self.webhooks
            .reseal(new.clone(), actor)
            .await
            .map_err(|e| KeyError::Damaged(format!("webhook signing secrets: {e}")))?;
        self.registry
            .reseal(new.clone(), actor)
            .await
            .map_err(|e| KeyError::Damaged(format!("service credentials: {e}")))?;
        self.oauth
            .reseal(new.clone(), actor)
            .await
            .map_err(|e| KeyError::Damaged(format!("OAuth secrets and tokens: {e}")))?;
        new.finish_rotation()?;
        Ok(new.key_id())
    }

    pub fn access_ttl(&self) -> Duration {
        Duration::from_secs(self.config.auth.access_ttl_s)
    }

    pub fn session_policy(&self) -> SessionPolicy {
        SessionPolicy {
            refresh_ttl_ms: self.config.auth.refresh_ttl_s as i64 * 1000,
            sessions_per_user_max: self.config.auth.sessions_per_user_max,
        }
    }

    pub fn retention(&self) -> Retention {
        Retention {
            age: Duration::from_secs(self.config.events.retention_age_s),
            count_max: self.config.events.retention_count_max,
            batch_max: TRIM_BATCH_MAX,
        }
    }

    /// Trims the log past retention, forever; a full pass runs again at once.
    pub async fn retention_loop(self) {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        loop {
            tick.tick().await;
            loop {
                match followers::trim(&self.writer, self.retention()).await {
                    Ok(n) => {
                        self.metrics.events_trimmed.inc_by(n);
                        if (n as usize) < TRIM_BATCH_MAX {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event log retention failed");
                        break;
                    }
                }
            }
        }
    }

    /// Brings state gauges up to date before a scrape.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.catch_up();
        m.writer_queue_len.set(self.writer.queue_len() as i64);
        #[allow(clippy::cast_possible_truncation)] // 0 to 1000
        m.runtime_workers_busy_permille.set((self.hub.busy.get() * 1000.0).round() as i64);
        let head = self.bus.head_gseq();
        m.event_log_head_gseq.set(head as i64);
        for (name, pos, _) in self.followers.snapshot() {
            m.follower_lag.get_or_create(&FollowerLabels { follower: name }).set(head.saturating_sub(pos) as i64);
        }
        self.webhooks.refresh_gauges();
    }
}

/// The URL browsers reach the server at: `oauth.public_url`, else the listen address (a
/// wildcard one named as loopback).
pub fn public_url(config: &Config) -> String {
    if let Some(u) = &config.oauth.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let scheme = if config.tls.cert_file.is_some() { "https" } else { "http" };
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("{scheme}://{addr}")
}

/// The parts that call out through `egress`: webhook deliveries, health checks, the gateway,
/// OAuth connections.
#[allow(clippy::type_complexity)] // the four engines, built together
fn outbound(
    config: &Config,
    store: &Store,
    writer: &Writer,
    bus: &EventBus,
    egress: &crate::egress::Egress,
    vault: &VaultCell,
    metrics: &Arc<Metrics>,
) -> (crate::webhooks::Webhooks, crate::registry::Registry, crate::gateway::Gateway, crate::oauth::OAuth) {
    let oauth = crate::oauth::OAuth::new(crate::oauth::Parts {
        store: store.clone(),
        writer: writer.clone(),
        egress: egress.clone(),
        vault: vault.clone(),
        metrics: metrics.clone(),
        config: config.oauth.clone(),
        public_url: public_url(config),
    });
    let webhooks = crate::webhooks::Webhooks::new(crate::webhooks::Parts {
        store: store.clone(),
        writer: writer.clone(),
        bus: bus.clone(),
        egress: egress.clone(),
        vault: vault.clone(),
        metrics: metrics.clone(),
        config: config.webhooks.clone(),
    });
    let registry = crate::registry::Registry::new(crate::registry::Parts {
        store: store.clone(),
        writer: writer.clone(),
        egress: egress.clone(),
        vault: vault.clone(),
        metrics: metrics.clone(),
        oauth: oauth.clone(),
    });
    let gateway = crate::gateway::Gateway::new(crate::gateway::Parts {
        egress: egress.clone(),
        oauth: oauth.clone(),
        vault: vault.clone(),
        writer: writer.clone(),
        metrics: metrics.clone(),
        audit_backlog_max: config.services.gateway_audit_backlog_max,
        buffer_bytes_max: config.services.gateway_buffer_bytes_max,
    });
    (webhooks, registry, gateway, oauth)
}
