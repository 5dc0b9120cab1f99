//! `/v1/realtime`: the WebSocket upgrade. The protocol lives in `crate::realtime`; it is
//! documented in `openapi/realtime.md`, not in the OpenAPI document (which cannot describe a
//! socket's frames).

pub mod calls;
pub mod conn;

use poem::web::Data;
use poem::{IntoResponse, Request, handler};
use poem_openapi::Object;

use crate::app::App;
use crate::http::ws::Upgrade;
use crate::realtime::protocol::{FRAME_BYTES_MAX, SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX};

/// Upgrades to a realtime socket. Browsers cannot set headers on a WebSocket, so the access
/// token comes as a second subprotocol (`access_token.<token>`) or in the first frame.
#[handler]
#[allow(clippy::needless_pass_by_value)] // extractors are taken by value
pub fn realtime(req: &Request, ws: Upgrade, app: Data<&App>) -> impl IntoResponse {
    let offered = req
        .headers()
        .get_all(poem::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
        .map(str::to_owned);
    let bearer = super::bearer_header(req);
    let app = app.0.clone();
    let hub = app.hub.clone();
    // A message over the protocol's bound closes the socket (1009) before any of it is
    // buffered. `serve` ends once the socket is open (the loop has a task of its own), and the
    // upgrade's task with it.
    ws.accept(&[SUBPROTOCOL], FRAME_BYTES_MAX, move |socket| conn::serve(app, hub, socket, offered.or(bearer)))
}

/// Someone here on a room or channel (a socket with presence set).
#[derive(Object, Debug)]
#[oai(rename = "Presence")]
pub struct PresenceView {
    pub user_id: String,
    pub device: String,
    /// `online`, `away` or `busy`.
    pub status: String,
    /// The app's state for them (at most 2 KiB), e.g. a position in a 3D space.
    pub state: serde_json::Value,
    pub since: String,
}

#[derive(Object, Debug)]
#[oai(rename = "PresenceList")]
pub struct PresenceList {
    pub items: Vec<PresenceView>,
}

/// Who is on `topic` of `org` now.
pub fn presence_list(app: &App, org: crate::ids::Id, topic: &str) -> PresenceList {
    PresenceList {
        items: app
            .hub
            .presence(org, topic)
            .into_iter()
            .map(|p| PresenceView {
                user_id: p.user,
                device: p.device,
                status: p.status,
                state: p.state,
                since: p.since,
            })
            .collect(),
    }
}
