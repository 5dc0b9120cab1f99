//! Problem details (RFC 9457): every error answer, and the one table from errors to HTTP
//! status and stable `code`.
//!
//! Clients branch on `code`, never on `title` or `detail`. Each operation returns a problem type
//! made by `problems!`, which lists the statuses that operation can answer, so the OpenAPI
//! document shows every error of every operation.

use poem::http::{HeaderValue, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::Object;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;

use crate::auth::AuthError;
use crate::domain::{DomainError, FieldError};
use crate::store::StoreError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// An error answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub body: ProblemBody,
    /// Sent as `WWW-Authenticate` on 401s.
    pub www_authenticate: bool,
    /// Sent as `Retry-After` (seconds) on 429s; 503s say 1.
    pub retry_after_s: Option<u64>,
}

/// The problem+json document.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Problem")]
pub struct ProblemBody {
    /// A URI naming the kind of problem: `urn:outpost:problem:<code>`.
    #[oai(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    pub status: u16,
    /// What happened in this case.
    pub detail: String,
    /// Stable, machine-readable error code. Branch on this.
    pub code: String,
    /// Invalid inputs, each located by a JSON pointer into the body (or a parameter name).
    /// Absent when the problem is not about particular inputs.
    #[oai(default, skip_serializing_if_is_empty)]
    pub errors: Vec<FieldProblem>,
    /// On `version_conflict`: the entity's current version.
    #[oai(skip_serializing_if_is_none)]
    pub current_version: Option<u64>,
}

#[derive(Debug, Clone, Object)]
pub struct FieldProblem {
    /// JSON pointer to the invalid value in the request body (`/name`), or `?name` for a
    /// query parameter.
    pub pointer: String,
    pub code: String,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            body: ProblemBody {
                kind: format!("urn:outpost:problem:{code}"),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: detail.into(),
                code: code.to_owned(),
                errors: Vec::new(),
                current_version: None,
            },
            www_authenticate: false,
            retry_after_s: None,
        }
    }

    #[must_use]
    pub fn with_errors(mut self, errors: Vec<FieldProblem>) -> Self {
        self.body.errors = errors;
        self
    }

    pub fn field(pointer: &str, code: &str, detail: impl Into<String>) -> FieldProblem {
        FieldProblem { pointer: pointer.to_owned(), code: code.to_owned(), detail: detail.into() }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn unauthenticated(code: &str, detail: &str) -> Self {
        let mut p = Self::new(StatusCode::UNAUTHORIZED, code, detail);
        p.www_authenticate = true;
        p
    }
}

impl From<DomainError> for Problem {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::NotFound { what } => Self::not_found(what),
            DomainError::Conflict { code, detail } => Self::new(StatusCode::CONFLICT, code, detail),
            DomainError::Invalid(fields) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "some fields are invalid")
                    .with_errors(fields.into_iter().map(field_problem).collect())
            }
            DomainError::VersionConflict { current } => {
                let mut p = Self::new(
                    StatusCode::PRECONDITION_FAILED,
                    "version_conflict",
                    format!("the resource has changed; its current version is {current}"),
                );
                p.body.current_version = Some(current);
                p
            }
            DomainError::Forbidden { detail } => Self::new(StatusCode::FORBIDDEN, "forbidden", detail),
            DomainError::Unauthorized { code, detail } => Self::unauthenticated(code, &detail),
            DomainError::TooLarge { code, detail } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, detail),
            DomainError::NoRoom { code, detail } => Self::new(StatusCode::INSUFFICIENT_STORAGE, code, detail),
            DomainError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DiskFull => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the server is low on disk space and refuses writes",
            ),
            StoreError::Busy => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_busy", "the store is overloaded; retry shortly")
            }
            StoreError::Closed => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
            }
            other => {
                tracing::error!(error = %other, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    "the store failed; a change this request asked for is not acknowledged (it may or may not have been saved)",
                )
            }
        }
    }
}

impl From<crate::limits::Limited> for Problem {
    fn from(l: crate::limits::Limited) -> Self {
        let secs = l.retry_after.as_secs() + u64::from(l.retry_after.subsec_nanos() > 0);
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests ({}); retry in {secs} s", l.limiter.as_str()),
        );
        p.retry_after_s = Some(secs.max(1));
        p
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::unauthenticated("unauthenticated", "send an Authorization: Bearer header"),
            AuthError::Invalid => Self::unauthenticated("invalid_credentials", "the credentials are not valid"),
            AuthError::Revoked => Self::unauthenticated("credentials_revoked", "the credentials have been revoked"),
            AuthError::Token(t) => {
                use crate::auth::tokens::TokenError as T;
                let code = match t {
                    T::Malformed => "token_malformed",
                    T::WrongPurpose => "token_wrong_purpose",
                    T::UnknownKey => "token_unknown_key",
                    T::BadSignature => "token_invalid_signature",
                    T::Expired => "token_expired",
                    T::NotYetValid => "token_not_yet_valid",
                    T::BadClaims => "token_invalid_claims",
                    T::NoSigningKey => {
                        return Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_signing_key", t.to_string());
                    }
                };
                Self::unauthenticated(code, &t.to_string())
            }
            AuthError::KeyExpired => Self::unauthenticated("credentials_expired", &e.to_string()),
            AuthError::SessionRevoked => Self::unauthenticated("session_revoked", &e.to_string()),
            AuthError::UserInactive => Self::unauthenticated("user_inactive", &e.to_string()),
            AuthError::OrgInactive => Self::unauthenticated("org_inactive", &e.to_string()),
            AuthError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            AuthError::Store(e) => e.into(),
        }
    }
}

fn field_problem(f: FieldError) -> FieldProblem {
    FieldProblem { pointer: f.pointer, code: f.code.to_owned(), detail: f.detail }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&poem_openapi::types::ToJSON::to_json(&self.body)).unwrap_or_default();
        let mut resp = Response::builder().status(self.status).content_type(CONTENT_TYPE).body(body);
        if self.www_authenticate {
            resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        } else if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.body.code, self.body.detail)
    }
}

impl std::error::Error for Problem {}

impl poem::error::ResponseError for Problem {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn as_response(&self) -> Response {
        self.clone().into_response()
    }
}

/// The documented meaning of each status an operation may answer with a problem.
pub fn describe(status: u16) -> &'static str {
    match status {
        400 => "Malformed request: invalid JSON, unknown field, wrong type, bad parameter",
        401 => "Missing, invalid or revoked credentials",
        403 => "Not allowed",
        404 => "No such resource (or not visible to the caller)",
        409 => "Conflicts with the current state (e.g. `slug_taken`)",
        412 => "`If-Match` or `version` does not match (`version_conflict`)",
        413 => "Request body over the limit",
        415 => "Body is not JSON",
        422 => "Fields fail validation (`validation_failed`, with pointers)",
        429 => "Rate limited; see `Retry-After`",
        500 => "Internal error",
        502 => {
            "The service behind the gateway could not be reached or answered wrongly \
                (`upstream_unreachable`, `upstream_refused`, `upstream_too_large`)"
        }
        503 => "Overloaded, timed out or shutting down; see `Retry-After`",
        504 => "The service behind the gateway did not answer in time (`upstream_timeout`)",
        507 => "The server is low on disk space and refuses writes",
        _ => "Error",
    }
}

/// The responses entry of a problem type answering `statuses`.
pub fn meta(statuses: &[u16]) -> MetaResponses {
    MetaResponses {
        responses: statuses
            .iter()
            .map(|s| MetaResponse {
                description: describe(*s),
                status: Some(*s),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: CONTENT_TYPE,
                    schema: MetaSchemaRef::Reference(<ProblemBody as Type>::name().into_owned()),
                }],
                headers: vec![],
            })
            .collect(),
    }
}

pub fn register(registry: &mut Registry) {
    <ProblemBody as Type>::register(registry);
}

/// What an OAuth or single sign-on failure means to a caller.
impl From<crate::oauth::OAuthError> for Problem {
    fn from(e: crate::oauth::OAuthError) -> Self {
        use crate::oauth::OAuthError as E;
        let detail = e.to_string();
        match e {
            E::Refused { .. } => Problem::new(StatusCode::BAD_GATEWAY, "provider_refused", detail),
            E::Unreachable(_) => Problem::new(StatusCode::BAD_GATEWAY, "provider_unreachable", detail),
            E::InvalidState => Problem::new(StatusCode::BAD_REQUEST, "invalid_state", detail),
            E::IssuerMismatch(_) => Problem::new(StatusCode::BAD_REQUEST, "issuer_mismatch", detail),
            E::InvalidIdToken(_) => Problem::new(StatusCode::UNAUTHORIZED, "invalid_id_token", detail),
            E::InvalidLogoutToken(_) => Problem::new(StatusCode::BAD_REQUEST, "invalid_logout_token", detail),
            E::NeedsReauth(_) => Problem::new(StatusCode::CONFLICT, "connection_needs_reauth", detail),
            E::Unsupported(_) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unsupported_by_provider", detail),
            E::Domain(d) => d.into(),
        }
    }
}

/// Declares a problem type that documents the listed statuses, plus 500 and 503, which every
/// operation can answer. Operations of a kind share a type; `http::document` then adds what
/// holds for each operation (413 everywhere, 429 where a user's budget is spent) and drops what
/// an operation cannot answer by what it takes (415 without a body, 412 without If-Match or a
/// version, 400 and 422 without inputs).
#[macro_export]
macro_rules! problems {
    ($name:ident: $($status:literal),+) => {
        #[derive(Debug)]
        pub struct $name(pub $crate::http::problem::Problem);

        impl poem_openapi::ApiResponse for $name {
            fn meta() -> poem_openapi::registry::MetaResponses {
                $crate::http::problem::meta(&[$($status),+, 500, 503])
            }
            fn register(registry: &mut poem_openapi::registry::Registry) {
                $crate::http::problem::register(registry);
            }
        }

        impl poem::IntoResponse for $name {
            fn into_response(self) -> poem::Response {
                poem::IntoResponse::into_response(self.0)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::error::Error for $name {}

        impl poem::error::ResponseError for $name {
            fn status(&self) -> poem::http::StatusCode {
                self.0.status
            }
            fn as_response(&self) -> poem::Response {
                poem::IntoResponse::into_response(self.0.clone())
            }
        }

        $crate::problems!(@from $name: $crate::http::problem::Problem, $crate::domain::DomainError,
            $crate::store::StoreError, $crate::auth::AuthError, $crate::oauth::OAuthError);
    };
    (@from $name:ident: $($t:ty),+) => {
        $(impl From<$t> for $name {
            fn from(e: $t) -> Self {
                Self(e.into())
            }
        })+
    };
}
