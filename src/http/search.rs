//! `/v1/search`: one search box over messages, tasks, rooms and users.

use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::problem::Problem;
use super::{ApiTags, UserAuth};
use crate::app::App;
use crate::domain::DomainError;
use crate::domain::policy::Permission;
use crate::search;

crate::problems!(SearchErrors: 400, 401, 403, 422);

/// Most hits one page holds.
pub const LIMIT_MAX: u32 = 50;
/// Deepest page start: ranking reads `offset + limit` hits, so deep pages are refused.
pub const OFFSET_MAX: u32 = 1_000;
/// Longest query, in characters.
pub const Q_CHARS_MAX: usize = 500;

/// One hit.
#[derive(Object, Debug)]
#[oai(rename = "SearchHit")]
pub struct HitView {
    /// `message`, `task`, `room` or `user`.
    #[oai(rename = "type")]
    pub kind: String,
    pub id: String,
    /// For a message: `channel:<id>`; for a private room: `room:<id>`; else `org`.
    pub scope: String,
    pub title: String,
    /// Text around the match, matched words in `<b>` (HTML-escaped otherwise).
    pub snippet: String,
    pub score: f32,
}

#[derive(Object, Debug)]
#[oai(rename = "SearchPage")]
pub struct SearchPage {
    pub items: Vec<HitView>,
    /// Pass as `offset` for more; absent when there are none.
    pub next_offset: Option<u32>,
}

#[derive(Default)]
pub struct SearchApi;

#[OpenApi(tag = "ApiTags::Search")]
impl SearchApi {
    /// Search
    ///
    /// Words match with one typo forgiven; `"quoted words"` match as a phrase. Only what the
    /// caller may see is returned.
    ///
    /// Permission: `search.use`.
    #[oai(path = "/v1/search", method = "get", operation_id = "search")]
    async fn search(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        q: Query<String>,
        /// Comma-separated: `message,task,room,user,file` (default all).
        #[oai(name = "type")]
        kinds: Query<Option<String>>,
        /// 1–50 (default 20).
        limit: Query<Option<u32>>,
        offset: Query<Option<u32>>,
    ) -> Result<Json<SearchPage>, SearchErrors> {
        let p = auth.require(&app, Permission::SearchUse).await?;
        let q = q.0;
        if q.trim().is_empty() || q.chars().count() > Q_CHARS_MAX {
            return Err(DomainError::invalid("?q", "invalid_length", format!("1–{Q_CHARS_MAX} characters")).into());
        }
        let limit = crate::domain::paging::limit(limit.0, 20, LIMIT_MAX)? as usize;
        let offset = offset.0.unwrap_or(0);
        if offset > OFFSET_MAX {
            let detail = format!("offset must be at most {OFFSET_MAX}; narrow the query instead");
            return Err(DomainError::invalid("?offset", "out_of_range", detail).into());
        }
        let offset = offset as usize;
        let kinds: Vec<String> =
            kinds.0.map(|k| k.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default();
        if let Some(bad) = kinds.iter().find(|k| !["message", "task", "room", "user", "file"].contains(&k.as_str())) {
            return Err(DomainError::invalid("?type", "invalid_value", format!("unknown type '{bad}'")).into());
        }
        let Some(index) = app.search.get().cloned() else {
            return Err(Problem::new(
                poem::http::StatusCode::SERVICE_UNAVAILABLE,
                "search_unavailable",
                "search is starting",
            )
            .into());
        };
        let (org, user) = (p.org, p.user);
        let store = app.store.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<(Vec<search::Hit>, bool), search::SearchError> {
            let r = store.reader()?;
            index.search(org, &q, &kinds, offset, limit, &mut |scope| search::may_see(&r, org, user, scope))
        })
        .await
        .map_err(|e| Problem::new(poem::http::StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()))?
        .map_err(|e| Problem::new(poem::http::StatusCode::INTERNAL_SERVER_ERROR, "search_error", e.to_string()))?;
        let (hits, more) = found;
        let items = hits
            .into_iter()
            .map(|h| HitView {
                kind: h.kind,
                id: h.id,
                scope: h.scope,
                title: h.title,
                snippet: h.snippet,
                score: h.score,
            })
            .collect();
        Ok(Json(SearchPage { items, next_offset: more.then_some((offset + limit) as u32) }))
    }
}
