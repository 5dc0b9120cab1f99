//! `/v1/media/*`: what clients need to reach media, today TURN credentials for the built-in
//! TURN server.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{ApiTags, UserAuth};
use crate::app::App;
use crate::auth::policy::Permission;
use crate::domain::DomainError;
use crate::ids::rfc3339;

crate::problems!(MediaErrors: 401, 403, 409);

/// Time-limited TURN credentials: give them to `RTCPeerConnection` as an ICE server.
#[derive(Object, Debug)]
#[oai(rename = "TurnCredentials")]
pub struct TurnCredentialsView {
    /// e.g. `turn:203.0.113.10:3478?transport=udp`.
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
    /// Seconds they stay valid.
    pub ttl_s: u64,
    pub expires_at: String,
}

pub struct MediaApi;

#[OpenApi(tag = "ApiTags::Media")]
impl MediaApi {
    /// Fresh credentials for the built-in TURN server (409 `turn_disabled` when the server runs
    /// without one).
    ///
    /// Permission: `rooms.read`.
    #[oai(path = "/v1/media/turn-credentials", method = "post", operation_id = "createTurnCredentials")]
    async fn turn_credentials(
        &self,
        app: Data<&App>,
        auth: UserAuth,
    ) -> Result<Json<TurnCredentialsView>, MediaErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let turn = app.turn.as_ref().ok_or_else(|| DomainError::Conflict {
            code: "turn_disabled",
            detail: "this server runs no TURN server (media.turn_listen is not set)".into(),
        })?;
        let c = turn.credentials(p.user);
        Ok(Json(TurnCredentialsView {
            urls: c.urls,
            username: c.username,
            credential: c.password,
            ttl_s: app.config.media.turn_credential_ttl_s,
            expires_at: rfc3339(c.expires_at_s as i64 * 1000),
        }))
    }
}
