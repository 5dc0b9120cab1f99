//! Outpost: a multi-tenant, real-time collaboration platform in one binary.
//!
//! `run` (in `server`) serves one data dir on one listener until `shutdown` resolves. The
//! modules form layers, and an import only ever points down them: ground (`ids`, `limits`,
//! `metrics`, `config`, `config_file`, `tenancy`, `progress`) → `store`, `blobs` → `vault` → `domain` →
//! `auth` → engines (`search`, `docs`, `realtime`, `media`, `uploads`,
//! `thumbs`) → `app` → transport (`http`, `admin`) →
//! `server` → `commands`. ARCHITECTURE.md has the table; a test holds the code to it.

pub mod admin;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod commands;
pub mod config;
pub mod config_file;
pub mod docs;
pub mod domain;
pub mod egress;
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod ids;
pub mod limits;
pub mod mcp;
pub mod media;
pub mod memcopy;
pub mod metrics;
pub mod oauth;
pub mod panics;
pub mod progress;
pub mod prompts;
pub mod realtime;
pub mod registry;
pub mod search;
pub mod server;
pub mod sso;
pub mod store;
pub mod tenancy;
pub mod thumbs;
pub mod uploads;
pub mod vault;
pub mod webhooks;

pub use app::App;
pub use config::Config;
pub use server::{RunError, run};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
