//! `JsonBody<T>`: the request body extractor every operation uses.
//!
//! Its schema comes from `T`'s OpenAPI type, but it parses with serde through
//! `serde_path_to_error`, so a wrong type or unknown field is answered with a JSON pointer to
//! the offending value. It reads at most the configured body limit (413 past it), whether or
//! not the client sent a `Content-Length`.

use poem::http::StatusCode;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;

use super::problem::Problem;

/// The body limit in force, put into request data by the edge middleware.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub u64);

pub struct JsonBody<T>(pub T);

impl<'a, T: Type + DeserializeOwned + Send> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(required_body("application/json", T::schema_ref()))
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        if let Some(ct) = request.content_type() {
            let json = ct.parse::<mime::Mime>().is_ok_and(|m| {
                m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
            if !json {
                return Err(wrong_type("application/json", ct).into());
            }
        }
        let bytes = read_limited(request, body).await?;
        // Every body this API takes is an object; serde would also read a struct from an array
        // of its fields in order (`[]` as a struct whose fields are all absent).
        if bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b != b'{') {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_json", "the body must be a JSON object").into());
        }
        parse(&bytes).map(JsonBody).map_err(Into::into)
    }
}

/// A binary body (`application/octet-stream`, e.g. a Yjs update), read up to the body limit.
pub struct BinaryBody(pub Vec<u8>);

impl<'a> ApiExtractor<'a> for BinaryBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(_registry: &mut Registry) {}

    fn request_meta() -> Option<MetaRequest> {
        Some(required_body("application/octet-stream", <poem_openapi::types::Binary<Vec<u8>> as Type>::schema_ref()))
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        if let Some(ct) = request.content_type() {
            if !ct.starts_with("application/octet-stream") {
                return Err(wrong_type("application/octet-stream", ct).into());
            }
        }
        Ok(BinaryBody(read_limited(request, body).await?))
    }
}

/// An SDP body (`application/sdp`, WHIP and WHEP offers), read up to the body limit. The
/// content type and text are checked by `sdp()`, which the operation calls after it has
/// checked the caller, so that a refusal says 401, 403 or 404 before anything about the body.
pub struct SdpBody {
    content_type: Option<String>,
    bytes: Vec<u8>,
}

impl SdpBody {
    pub fn sdp(&self) -> Result<&str, Problem> {
        let ct = self.content_type.as_deref().unwrap_or_default();
        if !ct.trim_start().to_ascii_lowercase().starts_with("application/sdp") {
            return Err(wrong_type("application/sdp", if ct.is_empty() { "no content type" } else { ct }));
        }
        let text = std::str::from_utf8(&self.bytes)
            .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "invalid_sdp", "the offer is not UTF-8 text"))?;
        if !text.trim_start().starts_with("v=0") {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_sdp",
                "the offer is not SDP (it must start with v=0)",
            ));
        }
        Ok(text)
    }
}

impl<'a> ApiExtractor<'a> for SdpBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(_registry: &mut Registry) {}

    fn request_meta() -> Option<MetaRequest> {
        Some(required_body("application/sdp", <String as Type>::schema_ref()))
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let content_type = request.content_type().map(str::to_owned);
        Ok(SdpBody { content_type, bytes: read_limited(request, body).await? })
    }
}

/// The whole body, up to the limit in force (413 past it).
async fn read_limited(request: &Request, body: &mut RequestBody) -> Result<Vec<u8>, Problem> {
    let limit = request.data::<BodyLimit>().map_or(1 << 20, |l| l.0);
    let reader =
        body.take().map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "invalid_body", "the body was already read"))?;
    read_up_to(reader, limit).await
}

/// All of `body`, unless it is over `limit` bytes (413).
pub async fn read_up_to(body: poem::Body, limit: u64) -> Result<Vec<u8>, Problem> {
    let mut bytes = Vec::new();
    body.into_async_read()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_body", format!("reading the body failed: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

/// A required request body of `content_type` with `schema`, as the API document shows it.
pub(super) fn required_body(content_type: &'static str, schema: poem_openapi::registry::MetaSchemaRef) -> MetaRequest {
    MetaRequest { description: None, content: vec![MetaMediaType { content_type, schema }], required: true }
}

/// 415 for a body that is not of the `expected` content type.
fn wrong_type(expected: &str, got: &str) -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("expected {expected}, got {got}"),
    )
}

pub fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is over the limit of {limit} bytes"),
    )
}

/// Parses a JSON body into `T`, locating the first problem with a JSON pointer.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body is empty; send a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    let err = match result {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let inner = err.inner();
    if matches!(inner.classify(), serde_json::error::Category::Syntax | serde_json::error::Category::Eof) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {inner}"),
        ));
    }
    let mut pointer = pointer_of(err.path());
    let message = inner.to_string();
    // The path already ends at an unknown field; a missing one has no segment of its own.
    let code = if message.starts_with("unknown field") {
        "unknown_field"
    } else if message.starts_with("missing field") {
        if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
            pointer.push('/');
            pointer.push_str(&escape(field));
        }
        "missing_field"
    } else {
        "invalid_type"
    };
    let detail = strip_position(&message);
    Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_body", format!("{pointer}: {detail}"))
        .with_errors(vec![Problem::field(&pointer, code, detail)]))
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut p = String::new();
    for seg in path {
        p.push('/');
        match seg {
            Segment::Seq { index } => p.push_str(&index.to_string()),
            Segment::Map { key } => p.push_str(&escape(key)),
            Segment::Enum { variant } => p.push_str(&escape(variant)),
            Segment::Unknown => p.push('?'),
        }
    }
    p
}

/// JSON pointer escaping (RFC 6901).
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// serde_json appends " at line 1 column 20"; the pointer says where, better.
fn strip_position(m: &str) -> String {
    m.rsplit_once(" at line ").map_or(m, |(head, _)| head).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        items: Vec<Inner>,
    }

    fn pointer(body: &str) -> (String, String) {
        let p = parse::<Outer>(body.as_bytes()).err().map(|p| p.body).expect("an error");
        (p.code, p.errors.first().map(|e| e.pointer.clone()).unwrap_or_default())
    }

    #[test]
    fn errors_point_at_the_value() {
        assert_eq!(
            pointer(r#"{"name":"a","items":[{"n":1},{"n":"x"}]}"#),
            ("invalid_body".into(), "/items/1/n".into())
        );
        assert_eq!(pointer(r#"{"name":"a","items":[],"extra":1}"#), ("invalid_body".into(), "/extra".into()));
        assert_eq!(pointer(r#"{"items":[]}"#), ("invalid_body".into(), "/name".into()));
        assert_eq!(pointer(r#"{"name":"#).0, "invalid_json");
        assert_eq!(pointer("").0, "invalid_json");
    }
}
