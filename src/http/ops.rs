//! Health endpoints (in the API document) and the Prometheus scrape endpoint (outside it).

use poem::http::StatusCode;
use poem::{IntoResponse, Response, handler, web::Data};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::app::App;

/// Liveness: the process answers.
#[derive(Object, Debug)]
#[oai(rename = "Liveness")]
pub struct LiveView {
    pub status: String,
    pub version: String,
}

/// Readiness: whether this instance should receive traffic, and why not.
#[derive(Object, Debug)]
#[oai(rename = "Readiness")]
pub struct ReadyView {
    pub ready: bool,
    /// The store writer runs and its last commit succeeded.
    pub store_writable: bool,
    /// Free bytes on the data dir's disk.
    pub free_disk_bytes: Option<u64>,
    pub min_free_disk_bytes: u64,
    /// Durable followers that are behind and not advancing.
    pub stalled_followers: Vec<String>,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Ready.
    #[oai(status = 200)]
    Ready(Json<ReadyView>),
    /// Not ready; the body says why.
    #[oai(status = 503)]
    NotReady(Json<ReadyView>),
}

#[derive(Default)]
pub struct OpsApi;

#[OpenApi(tag = "ApiTags::Operations")]
#[allow(clippy::unused_async)] // operations are async by the framework's contract
impl OpsApi {
    /// Liveness probe
    #[oai(path = "/health/live", method = "get", operation_id = "getLiveness")]
    async fn live(&self) -> Json<LiveView> {
        Json(LiveView { status: "ok".into(), version: crate::VERSION.into() })
    }

    /// Readiness probe
    #[oai(path = "/health/ready", method = "get", operation_id = "getReadiness")]
    async fn ready(&self, app: Data<&App>) -> ReadyResponse {
        let r = app.readiness();
        let view = ReadyView {
            ready: r.ready,
            store_writable: r.store_writable,
            free_disk_bytes: r.free_disk_bytes,
            min_free_disk_bytes: r.min_free_disk_bytes,
            stalled_followers: r.stalled_followers,
        };
        if r.ready { ReadyResponse::Ready(Json(view)) } else { ReadyResponse::NotReady(Json(view)) }
    }
}

/// `GET /metrics`: Prometheus/OpenMetrics text.
#[handler]
#[allow(clippy::needless_pass_by_value)] // the extractor is taken by value by design
pub fn metrics(app: Data<&App>) -> Response {
    app.refresh_gauges();
    app.metrics
        .render()
        .with_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .with_status(StatusCode::OK)
        .into_response()
}
