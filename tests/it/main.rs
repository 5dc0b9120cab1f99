//! Integration tests: real servers on 127.0.0.1, real HTTP, real processes. One test binary
//! (link time matters on small machines), one module per area.

// Tests state their expectations with unwrap and may read long.
#![allow(clippy::unwrap_used, clippy::too_many_lines, clippy::many_single_char_names)]

mod apps;
mod audit;
mod backup;
mod chat;
mod config;
mod connections;
mod crash;
mod docs;
mod errors;
mod events;
mod faults;
mod files;
mod fuzz;
mod gateway;
mod identity;
mod isolation;
mod journey;
mod layers;
mod mcp;
mod mcp_server;
mod media;
mod openapi;
mod orgs;
mod output;
mod overload;
mod packaging;
mod prompts;
mod realtime;
mod roles;
mod rooms;
mod search;
mod services;
mod sso;
mod store;
mod support;
mod systemd;
mod tasks;
mod tidy;
mod tls;
mod tokens;
mod webhooks;
mod writer;
