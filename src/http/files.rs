//! Files over HTTP: resumable uploads by the tus 1.0 protocol (`/v1/uploads`, with the
//! creation, creation-with-upload, termination, checksum and expiration extensions), a
//! one-request upload for small files, asset records, and downloads with ranges, validators
//! and signed URLs (`/v1/download/...`, for `<img src>` and other places a bearer header cannot
//! go).
//!
//! An upload's id is its asset's id: once the last byte is durable, `GET /v1/assets/{id}`
//! answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use poem::http::{HeaderValue, StatusCode};
use poem::web::Data;
use poem::{Body, Request, RequestBody, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaRequest, MetaResponse, MetaResponses, MetaSchemaRef, Registry,
};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::body::JsonBody;
use super::problem::Problem;
use super::{ApiTags, UserAuth, parse_id, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::blobs::Sha256;
use crate::domain::DomainError;
use crate::domain::assets::{self, Asset, SharedIn};
use crate::domain::paging::PageRequest;
use crate::domain::policy::Permission;
use crate::ids::{self, Id, rfc3339};
use crate::tenancy::OrgScope;
use crate::uploads::{AppendError, ChunkChecksum, OrgLimits, UploadInfo};

/// The tus protocol version spoken here.
pub const TUS_VERSION: &str = "1.0.0";
/// The tus extensions supported.
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// The checksum algorithms taken for `Upload-Checksum`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// The body type of tus appends.
const OFFSET_STREAM: &str = "application/offset+octet-stream";
/// Bytes one read of a download's file takes.
const READ_CHUNK: usize = 256 << 10;
/// A download (a file or a range) of at most this many bytes is read in one go.
const WHOLE_READ_MAX: u64 = 1 << 20;
/// Longest `Upload-Metadata` header kept, in bytes.
pub const METADATA_BYTES_MAX: usize = 4096;

crate::problems!(UploadErrors: 400, 401, 403, 404, 409, 410, 412, 413, 415, 422, 460, 507);
crate::problems!(AssetErrors: 400, 401, 403, 404, 422);
crate::problems!(AssetUploadErrors: 400, 401, 403, 409, 411, 413, 422, 507);
crate::problems!(AssetFormErrors: 400, 401, 403, 409, 411, 413, 415, 422, 507);
crate::problems!(DownloadErrors: 400, 401, 403, 404);
crate::problems!(SignedDownloadErrors: 400, 403, 404);
crate::problems!(ThumbnailErrors: 400, 401, 403, 404, 422);
crate::problems!(RoomAssetErrors: 400, 401, 403, 404, 409, 422);
crate::problems!(RoomAssetReadErrors: 401, 403, 404);

/// Adds a version of a room's named file.
#[derive(Object, Debug, serde::Deserialize)]
#[oai(rename = "NewRoomAssetVersion", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct NewRoomAssetVersion {
    /// The room's name for the file (`scene.glb`, `floor texture`): a new name starts at
    /// version 1, a known one gets its next version.
    pub name: String,
    /// A file of the caller's own (uploaded first).
    pub asset_id: String,
}

/// One version of a room's named file.
#[derive(Object, Debug)]
#[oai(rename = "RoomAssetVersion")]
pub struct RoomAssetVersionView {
    pub version: u32,
    pub asset_id: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub added_by: String,
    pub added_at: String,
    /// Where to download this version (whoever reads the room may).
    pub content_url: String,
}

/// A room's named file and its versions, oldest first (the last is the current one).
#[derive(Object, Debug)]
#[oai(rename = "RoomAsset")]
pub struct RoomAssetView {
    pub name: String,
    pub versions: Vec<RoomAssetVersionView>,
}

#[derive(Object, Debug)]
#[oai(rename = "RoomAssetList")]
pub struct RoomAssetList {
    /// By name.
    pub items: Vec<RoomAssetView>,
}

fn room_asset_view(ra: assets::RoomAsset) -> RoomAssetView {
    RoomAssetView {
        name: ra.name,
        versions: ra
            .versions
            .into_iter()
            .map(|v| RoomAssetVersionView {
                version: v.version,
                content_url: format!("/v1/assets/{}/content", v.asset),
                asset_id: v.asset.to_string(),
                content_type: v.content_type,
                size: v.size,
                sha256: v.sha256,
                added_by: v.added_by.to_string(),
                added_at: rfc3339(v.added_at_ms),
            })
            .collect(),
    }
}

#[derive(ApiResponse)]
pub enum RoomAssetAdded {
    #[oai(status = 201)]
    Created(Json<RoomAssetView>),
}

/// The box a thumbnail fits in, keeping the picture's proportions.
#[derive(poem_openapi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename = "ThumbnailSize", rename_all = "lowercase")]
pub enum ThumbnailSize {
    /// 128 pixels.
    Small,
    /// 512 pixels.
    Medium,
    /// 1024 pixels.
    Large,
}

impl From<ThumbnailSize> for crate::thumbs::Size {
    fn from(s: ThumbnailSize) -> Self {
        match s {
            ThumbnailSize::Small => Self::Small,
            ThumbnailSize::Medium => Self::Medium,
            ThumbnailSize::Large => Self::Large,
        }
    }
}

/// A stored file.
#[derive(Object, Debug)]
#[oai(rename = "Asset")]
pub struct AssetView {
    pub id: String,
    pub name: String,
    /// The media type the uploader declared (or `application/octet-stream`).
    pub content_type: String,
    pub size: u64,
    /// SHA-256 of the content, hexadecimal; the download's `ETag` is this, quoted.
    pub sha256: String,
    pub created_by: String,
    pub created_at: String,
    /// Where to download it (with the bearer token); `POST .../signed-url` makes a link
    /// that works without one.
    pub content_url: String,
}

#[derive(Object, Debug)]
#[oai(rename = "AssetPage")]
pub struct AssetPage {
    pub items: Vec<AssetView>,
    pub next_cursor: Option<String>,
}

#[derive(Object, Debug, serde::Deserialize)]
#[oai(rename = "NewSignedUrl")]
#[serde(deny_unknown_fields)]
pub struct NewSignedUrl {
    /// Seconds the link works for, at least 1; the server's `files.signed_url_ttl_s` is the
    /// default and the most given (a longer ask gets that).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

#[derive(Object, Debug)]
#[oai(rename = "SignedUrl")]
pub struct SignedUrl {
    /// A path on this server (`/v1/download/...`) that downloads the file without credentials
    /// until `expires_at`.
    pub url: String,
    pub expires_at: String,
}

fn view(a: &Asset) -> AssetView {
    AssetView {
        id: a.id.to_string(),
        name: a.name.clone(),
        content_type: a.content_type.clone(),
        size: a.size,
        sha256: a.sha256.clone(),
        created_by: a.created_by.to_string(),
        created_at: rfc3339(a.created_at_ms),
        content_url: format!("/v1/assets/{}/content", a.id),
    }
}

/// A streamed request body, read by the operation as it goes (never held whole). `TUS` bodies
/// are `application/offset+octet-stream` (required for an append, optional on creation);
/// others are the file itself, documented as `application/octet-stream` and taken of any type.
pub struct StreamBody<const TUS: bool, const REQUIRED: bool> {
    pub content_type: Option<String>,
    pub body: Option<Body>,
}

impl<const TUS: bool, const REQUIRED: bool> StreamBody<TUS, REQUIRED> {
    fn reader(&mut self) -> impl AsyncRead + Unpin + Send + 'static {
        self.body.take().unwrap_or_else(Body::empty).into_async_read()
    }
}

impl<'a, const TUS: bool, const REQUIRED: bool> ApiExtractor<'a> for StreamBody<TUS, REQUIRED> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(_registry: &mut Registry) {}

    fn request_meta() -> Option<MetaRequest> {
        let content_type = if TUS { OFFSET_STREAM } else { "application/octet-stream" };
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type,
                schema: <poem_openapi::types::Binary<Vec<u8>> as Type>::schema_ref(),
            }],
            required: REQUIRED,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(Self { content_type: request.content_type().map(str::to_owned), body: body.take().ok() })
    }
}

/// The creation body of tus (`application/offset+octet-stream`, optional).
pub type CreationBody = StreamBody<true, false>;
/// An append's body (`application/offset+octet-stream`).
pub type AppendBody = StreamBody<true, true>;
/// A one-request upload's body: the file.
pub type FileBody = StreamBody<false, false>;

/// The name of the form's schema in the API document.
const FORM_SCHEMA: &str = "AssetForm";
/// A form's text parts are at most this many bytes.
const FORM_TEXT_BYTES_MAX: u64 = 4096;

/// A one-request upload as a form (`multipart/form-data`), read part by part as it arrives:
/// the streamed body, documented as the form.
pub struct FormBody(FileBody);

/// How the form of `uploadAssetForm` is documented (the operation reads it as a stream).
#[derive(poem_openapi::Multipart, Debug)]
#[allow(dead_code)] // only its schema is used
struct AssetForm {
    /// The file's name (1–255 characters); the file part's own file name if absent, else `file`.
    name: Option<String>,
    /// Its media type, `type/subtype`; the file part's own type if absent.
    content_type: Option<String>,
    /// The file.
    file: poem_openapi::types::multipart::Upload,
}

impl FormBody {
    /// The form's parts, or 415 when the body is not a form.
    fn form(mut self) -> Result<multer::Multipart<'static>, Problem> {
        let content_type = self.0.content_type.take().unwrap_or_default();
        let boundary = match multer::parse_boundary(&content_type) {
            Ok(b) if essence(&content_type).eq_ignore_ascii_case("multipart/form-data") => b,
            _ => {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("expected multipart/form-data with a boundary, got {}", essence(&content_type)),
                ));
            }
        };
        let limits = multer::SizeLimit::new()
            .for_field("name", FORM_TEXT_BYTES_MAX)
            .for_field("content_type", FORM_TEXT_BYTES_MAX);
        let constraints = multer::Constraints::new().size_limit(limits);
        let stream = tokio_util::io::ReaderStream::new(self.0.reader());
        Ok(multer::Multipart::with_constraints(stream, boundary, constraints))
    }
}

impl<'a> ApiExtractor<'a> for FormBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    /// The form's schema is named (`AssetForm`), so a generated SDK has one type for it.
    fn register(registry: &mut Registry) {
        <AssetForm as poem_openapi::payload::Payload>::register(registry);
        registry.create_schema::<AssetForm, _>(FORM_SCHEMA.to_owned(), |_| {
            match <AssetForm as poem_openapi::payload::Payload>::schema_ref() {
                MetaSchemaRef::Inline(schema) => *schema,
                MetaSchemaRef::Reference(_) => unreachable!("a form's schema is inline"),
            }
        });
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(super::body::required_body("multipart/form-data", MetaSchemaRef::Reference(FORM_SCHEMA.to_owned())))
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        FileBody::from_request(request, body, opts).await.map(Self)
    }
}

fn tus_checked(v: Option<&str>) -> Result<(), Problem> {
    if v.map(str::trim) == Some(TUS_VERSION) {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::PRECONDITION_FAILED,
        "tus_version_unsupported",
        format!("send Tus-Resumable: {TUS_VERSION} (the version this server speaks)"),
    ))
}

/// The `Upload-Metadata` header: comma-separated `key base64value` pairs.
fn parse_metadata(raw: &str) -> Result<Vec<(String, String)>, Problem> {
    let bad = |d: &str| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_upload_metadata", format!("Upload-Metadata: {d}"))
            .with_errors(vec![Problem::field("?Upload-Metadata", "invalid_upload_metadata", d.to_owned())])
    };
    if raw.len() > METADATA_BYTES_MAX {
        return Err(bad("longer than 4096 bytes"));
    }
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !str::is_empty(p)) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("keys are ASCII without spaces or commas"));
        }
        let value = STANDARD.decode(value.trim()).map_err(|_| bad("values are base64"))?;
        let value = String::from_utf8(value).map_err(|_| bad("values are UTF-8 text"))?;
        if out.iter().any(|(k, _)| k == key) {
            return Err(bad("a key appears twice"));
        }
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn parse_checksum(v: Option<&str>) -> Result<Option<ChunkChecksum>, Problem> {
    let Some(v) = v else { return Ok(None) };
    let (alg, digest) = v.trim().split_once(' ').unwrap_or((v, ""));
    let digest = STANDARD.decode(digest.trim()).ok();
    let checksum = match (alg.to_ascii_lowercase().as_str(), digest) {
        ("sha1", Some(d)) if d.len() == 20 => ChunkChecksum::Sha1(d),
        ("sha256", Some(d)) if d.len() == 32 => ChunkChecksum::Sha256(d),
        ("sha1" | "sha256", _) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_checksum",
                "Upload-Checksum: the algorithm, a space, and the base64 digest",
            ));
        }
        _ => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "checksum_algorithm_unsupported",
                format!("Upload-Checksum: one of {CHECKSUM_ALGORITHMS}"),
            ));
        }
    };
    Ok(Some(checksum))
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// The limits the caller's organization holds uploads to.
async fn limits(app: &App, p: &Principal) -> Result<OrgLimits, Problem> {
    let org = crate::domain::orgs::get(&app.store, OrgScope::member(p)).await?;
    Ok(OrgLimits::of(&app.config.files, &org.settings))
}

/// Whether the caller may see every file of the organization (its admins).
fn manager(p: &Principal) -> bool {
    p.require(Permission::UsersManage).is_ok()
}

fn append_problem(e: AppendError) -> Problem {
    match e {
        AppendError::Domain(d) => d.into(),
        AppendError::OffsetMismatch { current } => Problem::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            format!("the upload is at offset {current}; ask with HEAD and go on from there"),
        ),
        AppendError::ChecksumMismatch => Problem::new(
            StatusCode::from_u16(460).expect("460"),
            "checksum_mismatch",
            "the bytes do not match Upload-Checksum; they were dropped, send them again",
        ),
        AppendError::TooLong { length } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload_too_long",
            format!("the upload was declared {length} bytes long; the bytes within it were kept"),
        ),
        AppendError::Superseded => Problem::new(
            StatusCode::CONFLICT,
            "upload_superseded",
            "another request for this upload took over; ask with HEAD where it is",
        ),
        AppendError::Interrupted(why) => Problem::new(
            StatusCode::BAD_REQUEST,
            "upload_interrupted",
            format!("{why}; the bytes that arrived were kept, ask with HEAD and go on"),
        ),
        AppendError::Io(e) if e.raw_os_error() == Some(28) => Problem::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "the server's disk is full; the bytes written before were kept",
        ),
        AppendError::Io(e) => {
            tracing::error!(error = %e, "writing an upload failed");
            Problem::new(StatusCode::INSUFFICIENT_STORAGE, "storage_failed", "the server could not write the bytes")
        }
    }
}

/// What a form carried: its text parts and the file, stored as an upload of `at` bytes.
struct ReadForm {
    name: Option<String>,
    content_type: Option<String>,
    part_name: Option<String>,
    part_type: Option<String>,
    info: UploadInfo,
    at: u64,
}

/// Reads a form's parts as they come, streaming the file into an upload (put in `held` as soon
/// as it exists, for the caller to drop if anything fails).
async fn read_form(
    app: &App,
    p: &Principal,
    limits: &OrgLimits,
    length: u64,
    mut form: multer::Multipart<'static>,
    held: &mut Option<UploadInfo>,
) -> Result<ReadForm, Problem> {
    let (mut name, mut content_type, mut file) = (None, None, None);
    while let Some(field) = form.next_field().await.map_err(form_problem)? {
        match field.name() {
            Some("name") if name.is_none() => name = Some(form_text(field).await?),
            Some("content_type") if content_type.is_none() => content_type = Some(form_text(field).await?),
            Some("file") if file.is_none() => {
                let part_name = field.file_name().map(str::to_owned);
                let part_type = field.content_type().map(|m| essence(m.as_ref()));
                let ty = form_type(content_type.as_deref(), part_type.as_deref())?;
                // The file's own size is not said: the request's length bounds it, and the
                // size limit holds it as it comes.
                let bound = length.min(limits.file_bytes_max);
                app.uploads.admit(&app.store, p.org, limits, bound, &ty).await?;
                let provisional = part_name.clone().unwrap_or_else(|| "file".into());
                let info = UploadInfo::new(p.org, p.user, bound, provisional, ty, String::new());
                let info = app.uploads.create(info).await?;
                *held = Some(info.clone());
                let reader = tokio_util::io::StreamReader::new(futures_util::TryStreamExt::map_err(field, |e| {
                    std::io::Error::other(e.to_string())
                }));
                let at = match app.uploads.append(&info, 0, reader, None).await {
                    Ok(at) => at,
                    Err(AppendError::TooLong { .. }) => {
                        return Err(DomainError::TooLarge {
                            code: "file_too_large",
                            detail: format!("a file may have {} bytes at most", limits.file_bytes_max),
                        }
                        .into());
                    }
                    Err(e) => return Err(one_request_problem(e)),
                };
                file = Some((part_name, part_type, info, at));
            }
            _ => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_form",
                    "a form's parts are file, name and content_type, each once",
                ));
            }
        }
    }
    let Some((part_name, part_type, info, at)) = file else {
        return Err(DomainError::invalid("/file", "missing_field", "the form has no part named file").into());
    };
    Ok(ReadForm { name, content_type, part_name, part_type, info, at })
}

impl ReadForm {
    /// The upload, ended at its bytes, named and typed by the form (the type checked again if a
    /// part after the file changed it).
    async fn settle(self, app: &App, limits: &OrgLimits) -> Result<UploadInfo, Problem> {
        let name = self.name.or(self.part_name).unwrap_or_else(|| "file".into());
        assets::check_name(&name)?;
        let ty = form_type(self.content_type.as_deref(), self.part_type.as_deref())?;
        if ty != self.info.content_type && !crate::uploads::type_allowed(&limits.allowed_types, &ty) {
            return Err(DomainError::invalid(
                "/content_type",
                "type_not_allowed",
                format!("{ty} is not one of {}", limits.allowed_types.join(", ")),
            )
            .into());
        }
        Ok(app.uploads.settle(&self.info, self.at, name, ty).await?)
    }
}

/// A form's file type: its `content_type` part as given, else the file part's own type if it
/// is a media type, else `application/octet-stream`.
fn form_type(field: Option<&str>, part: Option<&str>) -> Result<String, DomainError> {
    match (field, part.map(assets::check_type)) {
        (Some(t), _) => assets::check_type(t),
        (None, Some(Ok(t))) => Ok(t),
        _ => Ok("application/octet-stream".to_owned()),
    }
}

/// A one-request upload that failed: nothing of it is kept (there is no upload to go on with).
fn one_request_problem(e: AppendError) -> Problem {
    match e {
        AppendError::Interrupted(why) => {
            Problem::new(StatusCode::BAD_REQUEST, "upload_interrupted", format!("{why}; nothing was stored"))
        }
        other => append_problem(other),
    }
}

/// A form that cannot be read (400 `invalid_form`), or a part over its limit (413).
/// A text part of the form: UTF-8 as sent, at most `FORM_TEXT_BYTES_MAX` bytes. (multer's own
/// `text` replaces what is not UTF-8, or decodes another charset the part names, which can make
/// the text three times the bytes sent; found by fuzzing.)
pub(crate) async fn form_text(field: multer::Field<'static>) -> Result<String, Problem> {
    let name = field.name().unwrap_or_default().to_owned();
    let bytes = field.bytes().await.map_err(form_problem)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_form", format!("the part {name} is not UTF-8 text"))
    })
}

fn form_problem(e: multer::Error) -> Problem {
    match e {
        multer::Error::FieldSizeExceeded { field_name, limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the part {} is over {limit} bytes", field_name.unwrap_or_default()),
        ),
        multer::Error::UnknownField { .. } => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_form",
            "the form's parts are file, and before it name and content_type",
        ),
        other => Problem::new(StatusCode::BAD_REQUEST, "invalid_form", format!("the form cannot be read: {other}")),
    }
}

/// Finishes `info` into its asset when `offset` reached its length.
async fn finish_if_complete(
    app: &App,
    req: &Request,
    p: &Principal,
    info: &UploadInfo,
    offset: u64,
) -> Result<Option<Asset>, Problem> {
    if offset < info.length {
        return Ok(None);
    }
    let quota = limits(app, p).await?.quota;
    Ok(Some(app.uploads.finish(&app.writer, user_ctx(req, p), quota, info).await?))
}

#[derive(ApiResponse)]
pub enum UploadCreated {
    /// The upload exists; `Location` is where to send its bytes (`PATCH`), `Upload-Offset` how
    /// many arrived with this request. With every byte sent, the asset (same id) is stored.
    #[oai(status = 201)]
    Created(
        #[oai(header = "Location")] String,
        #[oai(header = "Upload-Offset")] u64,
        #[oai(header = "Upload-Expires")] String,
    ),
}

#[derive(ApiResponse)]
pub enum UploadState {
    /// Where the upload is. `Upload-Offset` equal to `Upload-Length`: it is complete.
    #[oai(status = 200)]
    Ok(
        #[oai(header = "Upload-Offset")] u64,
        #[oai(header = "Upload-Length")] u64,
        #[oai(header = "Upload-Metadata")] Option<String>,
        #[oai(header = "Upload-Expires")] Option<String>,
    ),
}

#[derive(ApiResponse)]
pub enum UploadAppended {
    /// The bytes are durable; `Upload-Offset` is the new offset.
    #[oai(status = 204)]
    NoContent(#[oai(header = "Upload-Offset")] u64, #[oai(header = "Upload-Expires")] Option<String>),
}

#[derive(ApiResponse)]
pub enum TusOptions {
    /// What this server speaks of tus.
    #[oai(status = 204)]
    NoContent(
        #[oai(header = "Tus-Version")] String,
        #[oai(header = "Tus-Extension")] String,
        #[oai(header = "Tus-Max-Size")] u64,
        #[oai(header = "Tus-Checksum-Algorithm")] String,
    ),
}

#[derive(ApiResponse)]
pub enum Deleted {
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
pub enum AssetCreated {
    #[oai(status = 201)]
    Created(Json<AssetView>, #[oai(header = "Location")] String),
}

#[derive(Default)]
pub struct FilesApi;

#[OpenApi(tag = "ApiTags::Files")]
impl FilesApi {
    /// What this server supports of the tus resumable-upload protocol (no credentials needed).
    #[oai(path = "/v1/uploads", method = "options", operation_id = "uploadOptions")]
    #[allow(clippy::unused_async)] // operations are async, even one that only answers
    async fn options(&self, app: Data<&App>) -> TusOptions {
        TusOptions::NoContent(
            TUS_VERSION.into(),
            TUS_EXTENSIONS.into(),
            app.config.files.file_bytes_max,
            CHECKSUM_ALGORITHMS.into(),
        )
    }

    /// Begin a resumable upload (tus 1.0 creation; bytes may come along, creation-with-upload).
    /// `Upload-Metadata` names the file (`filename`, or `name`) and its type (`filetype`, or
    /// `type`); the length is checked against the file size limit, the organization's quota
    /// and the disk's reserve before any byte is taken.
    ///
    /// Permission: `files.write`.
    #[oai(path = "/v1/uploads", method = "post", operation_id = "createUpload")]
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        #[oai(name = "Tus-Resumable")] tus: Header<Option<String>>,
        #[oai(name = "Upload-Length")] length: Header<Option<u64>>,
        #[oai(name = "Upload-Metadata")] metadata: Header<Option<String>>,
        #[oai(name = "Upload-Checksum")] checksum: Header<Option<String>>,
        mut body: CreationBody,
    ) -> Result<UploadCreated, UploadErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        tus_checked(tus.0.as_deref())?;
        let Some(length) = length.0 else {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "upload_length_required",
                "send Upload-Length (deferred lengths are not supported)",
            )
            .into());
        };
        let raw = metadata.0.unwrap_or_default();
        let meta = parse_metadata(&raw)?;
        let get = |keys: &[&str]| meta.iter().find(|(k, _)| keys.contains(&k.as_str())).map(|(_, v)| v.clone());
        let name = get(&["filename", "name"]).unwrap_or_else(|| "upload".to_owned());
        assets::check_name(&name)?;
        let content_type = match get(&["filetype", "type", "contentType"]) {
            Some(t) if !t.is_empty() => assets::check_type(&essence(&t))?,
            _ => "application/octet-stream".to_owned(),
        };
        let checksum = parse_checksum(checksum.0.as_deref())?;
        let limits = limits(&app, &p).await?;
        app.uploads.admit(&app.store, p.org, &limits, length, &content_type).await?;
        let info = UploadInfo::new(p.org, p.user, length, name, content_type, raw);
        let info = app.uploads.create(info).await?;
        let location = format!("/v1/uploads/{}", info.id);
        let mut offset = 0;
        if body.body.is_some() && body.content_type.as_deref() == Some(OFFSET_STREAM) {
            offset = app.uploads.append(&info, 0, body.reader(), checksum).await.map_err(append_problem)?;
        }
        finish_if_complete(&app, req, &p, &info, offset).await?;
        Ok(UploadCreated::Created(location, offset, http_date(app.uploads.expires_at_ms(&info))))
    }

    /// Where an upload is (tus 1.0 `HEAD`): its offset and length. Only its uploader sees it;
    /// a finished upload answers with its whole length.
    ///
    /// Permission: `files.write`.
    #[oai(path = "/v1/uploads/:upload_id", method = "head", operation_id = "getUploadOffset")]
    async fn head(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        upload_id: Path<String>,
        #[oai(name = "Tus-Resumable")] tus: Header<Option<String>>,
    ) -> Result<UploadState, UploadErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        tus_checked(tus.0.as_deref())?;
        let id = parse_id(&upload_id.0, "upload")?;
        if let Some((info, offset)) = app.uploads.find(p.org, p.user, id).await {
            let meta = (!info.metadata.is_empty()).then(|| info.metadata.clone());
            let expires = http_date(app.uploads.expires_at_ms(&info));
            return Ok(UploadState::Ok(offset, info.length, meta, Some(expires)));
        }
        let (scope, user) = (OrgScope::member(&p), p.user);
        let done = app.store.read(move |r| assets::find(r, scope, id)).await?;
        match done.filter(|a| a.created_by == user && a.deleted_at_ms.is_none()) {
            Some(a) => Ok(UploadState::Ok(a.size, a.size, None, None)),
            None => Err(DomainError::NotFound { what: "upload" }.into()),
        }
    }

    /// Send an upload's next bytes (tus 1.0 `PATCH`), from `Upload-Offset`, which must be
    /// where it is (409 otherwise). With `Upload-Checksum: sha256 <base64>` (or sha1) bytes that do not
    /// match are dropped (460). What arrived is durable before the answer; a request cut off
    /// keeps what it delivered. The last byte stores the asset (same id as the upload).
    ///
    /// Permission: `files.write`.
    #[oai(path = "/v1/uploads/:upload_id", method = "patch", operation_id = "appendUpload")]
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        upload_id: Path<String>,
        #[oai(name = "Tus-Resumable")] tus: Header<Option<String>>,
        #[oai(name = "Upload-Offset")] offset: Header<u64>,
        #[oai(name = "Upload-Checksum")] checksum: Header<Option<String>>,
        mut body: AppendBody,
    ) -> Result<UploadAppended, UploadErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        tus_checked(tus.0.as_deref())?;
        let id = parse_id(&upload_id.0, "upload")?;
        let Some((info, _)) = app.uploads.find(p.org, p.user, id).await else {
            return Err(DomainError::NotFound { what: "upload" }.into());
        };
        if body.content_type.as_deref() != Some(OFFSET_STREAM) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("an upload's bytes come as {OFFSET_STREAM}"),
            )
            .into());
        }
        let checksum = parse_checksum(checksum.0.as_deref())?;
        let at = app.uploads.append(&info, offset.0, body.reader(), checksum).await.map_err(append_problem)?;
        finish_if_complete(&app, req, &p, &info, at).await?;
        let touched = if at > offset.0 { ids::now_ms() } else { info.touched_at_ms };
        let expires = (at < info.length).then(|| http_date(app.uploads.expiry_from(touched)));
        Ok(UploadAppended::NoContent(at, expires))
    }

    /// End an upload in progress and drop its bytes (tus 1.0 termination).
    ///
    /// Permission: `files.write`.
    #[oai(path = "/v1/uploads/:upload_id", method = "delete", operation_id = "terminateUpload")]
    async fn terminate(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        upload_id: Path<String>,
        #[oai(name = "Tus-Resumable")] tus: Header<Option<String>>,
    ) -> Result<Deleted, UploadErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        tus_checked(tus.0.as_deref())?;
        let id = parse_id(&upload_id.0, "upload")?;
        let Some((info, _)) = app.uploads.find(p.org, p.user, id).await else {
            return Err(DomainError::NotFound { what: "upload" }.into());
        };
        app.uploads.terminate(&info).await?;
        Ok(Deleted::NoContent)
    }

    /// Upload a file in one request: the body is the file (up to the file size limit, with a
    /// `Content-Length`); `name` names it, `content_type` (else the request's `Content-Type`
    /// unless it is `application/octet-stream`) types it.
    ///
    /// Permission: `files.write`.
    #[oai(path = "/v1/assets", method = "post", operation_id = "uploadAsset")]
    async fn upload(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        name: Query<String>,
        content_type: Query<Option<String>>,
        mut body: FileBody,
    ) -> Result<AssetCreated, AssetUploadErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        let name = name.0;
        assets::check_name(&name).map_err(|e| at_query(e, "?name"))?;
        // The query's type is checked as given; the request's own Content-Type only for its
        // media type (parameters such as a charset dropped).
        let content_type = match (content_type.0, body.content_type.as_deref().map(essence)) {
            (Some(t), _) => assets::check_type(&t).map_err(|e| at_query(e, "?content_type"))?,
            (None, Some(t)) if assets::check_type(&t).is_ok() => assets::check_type(&t)?,
            _ => "application/octet-stream".to_owned(),
        };
        let Some(length) = req.header("content-length").and_then(|v| v.parse::<u64>().ok()) else {
            return Err(Problem::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "send Content-Length (or upload with tus, at /v1/uploads)",
            )
            .into());
        };
        let limits = limits(&app, &p).await?;
        app.uploads.admit(&app.store, p.org, &limits, length, &content_type).await?;
        let info = UploadInfo::new(p.org, p.user, length, name, content_type, String::new());
        let info = app.uploads.create(info).await?;
        let at = match app.uploads.append(&info, 0, body.reader(), None).await {
            Ok(at) => at,
            Err(e) => {
                let _ = app.uploads.terminate(&info).await;
                return Err(one_request_problem(e).into());
            }
        };
        if at < length {
            let _ = app.uploads.terminate(&info).await;
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "body_shorter_than_declared",
                format!("Content-Length said {length} bytes and {at} arrived"),
            )
            .into());
        }
        let asset = app.uploads.finish(&app.writer, user_ctx(req, &p), limits.quota, &info).await?;
        let location = format!("/v1/assets/{}", asset.id);
        Ok(AssetCreated::Created(Json(view(&asset)), location))
    }

    /// Upload a file in one request as a form (`multipart/form-data`, what a browser's
    /// `FormData` sends): the part `file` is the file; the optional parts `name` and
    /// `content_type`, before or after it, name and type it, else the file part's own file
    /// name and type do. The request needs a `Content-Length`; the file is held to the size
    /// limit and the quota as it arrives, and nothing is kept of a form that fails.
    ///
    /// Permission: `files.write`.
    #[oai(path = "/v1/assets/form", method = "post", operation_id = "uploadAssetForm")]
    async fn upload_form(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: FormBody,
    ) -> Result<AssetCreated, AssetFormErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        let Some(length) = req.header("content-length").and_then(|v| v.parse::<u64>().ok()) else {
            return Err(Problem::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "send Content-Length (or upload with tus, at /v1/uploads)",
            )
            .into());
        };
        let form = body.form()?;
        let limits = limits(&app, &p).await?;
        let mut held = None;
        let settled = match read_form(&app, &p, &limits, length, form, &mut held).await {
            Ok(f) => f.settle(&app, &limits).await,
            Err(e) => Err(e),
        };
        let info = match settled {
            Ok(info) => info,
            Err(problem) => {
                if let Some(info) = held {
                    let _ = app.uploads.terminate(&info).await;
                }
                return Err(problem.into());
            }
        };
        let asset = app.uploads.finish(&app.writer, user_ctx(req, &p), limits.quota, &info).await?;
        let location = format!("/v1/assets/{}", asset.id);
        Ok(AssetCreated::Created(Json(view(&asset)), location))
    }

    /// The caller's files, newest first.
    ///
    /// Permission: `files.read`.
    #[oai(path = "/v1/assets", method = "get", operation_id = "listAssets")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        limit: Query<Option<u32>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<AssetPage>, AssetErrors> {
        let p = auth.require(&app, Permission::FilesRead).await?;
        let page = PageRequest::parse(limit.0, cursor.0.as_deref())?;
        let page = assets::list(&app.store, OrgScope::member(&p), p.user, page).await?;
        Ok(Json(AssetPage { items: page.items.iter().map(view).collect(), next_cursor: page.next_cursor }))
    }

    /// One file's record: the caller's own, any for the organization's admins, or one attached
    /// to a message or comment the caller may read.
    ///
    /// Permission: `files.read`.
    #[oai(path = "/v1/assets/:asset_id", method = "get", operation_id = "getAsset")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        asset_id: Path<String>,
    ) -> Result<Json<AssetView>, AssetErrors> {
        let p = auth.require(&app, Permission::FilesRead).await?;
        Ok(Json(view(&visible(&app, &p, &asset_id.0).await?)))
    }

    /// Delete a file (the uploader's own, or any for admins). Its bytes leave the
    /// organization's usage once no other file has the same content.
    ///
    /// Permission: `files.write`.
    #[oai(path = "/v1/assets/:asset_id", method = "delete", operation_id = "deleteAsset")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        asset_id: Path<String>,
    ) -> Result<Deleted, AssetErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        let id = parse_id(&asset_id.0, "asset")?;
        assets::delete(&app.writer, user_ctx(req, &p), p.user, manager(&p), id).await?;
        Ok(Deleted::NoContent)
    }

    /// A link that downloads the file without credentials until it expires (for `<img src>`,
    /// `<video src>` and the like). It names this file of this organization only.
    ///
    /// Permission: `files.read`.
    #[oai(path = "/v1/assets/:asset_id/signed-url", method = "post", operation_id = "signAssetUrl")]
    async fn sign(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        asset_id: Path<String>,
        body: JsonBody<NewSignedUrl>,
    ) -> Result<Json<SignedUrl>, AssetErrors> {
        let p = auth.require(&app, Permission::FilesRead).await?;
        let a = visible(&app, &p, &asset_id.0).await?;
        let max = app.config.files.signed_url_ttl_s;
        let ttl = body.0.ttl_s.unwrap_or(max).min(max);
        if ttl == 0 {
            return Err(DomainError::invalid("/ttl_s", "out_of_range", "at least 1 second").into());
        }
        let expires = unix_now() + ttl;
        let sig = signature(&app.download_url_key, p.org, a.id, expires);
        Ok(Json(SignedUrl {
            url: format!("/v1/download/{}/{}?expires={expires}&signature={sig}", p.org, a.id),
            expires_at: rfc3339((expires * 1000) as i64),
        }))
    }

    /// Download a file: `Range` (one range; 206, or 416 past the end), `If-None-Match` (304),
    /// `If-Range`; `ETag` is the content's SHA-256. Types that a browser would run (HTML, SVG,
    /// scripts) and images whose bytes are not what they claim come as attachments.
    ///
    /// Permission: `files.read`.
    #[oai(path = "/v1/assets/:asset_id/content", method = "get", operation_id = "downloadAsset")]
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        asset_id: Path<String>,
        #[oai(name = "Range")] _range: Header<Option<String>>,
        #[oai(name = "If-None-Match")] _inm: Header<Option<String>>,
        #[oai(name = "If-Range")] _if_range: Header<Option<String>>,
    ) -> Result<Download, DownloadErrors> {
        let p = auth.require(&app, Permission::FilesRead).await?;
        let a = visible(&app, &p, &asset_id.0).await?;
        Ok(serve(&app, req, p.org, &a, "private, no-cache".into()).await?)
    }

    /// A thumbnail of an image (PNG, JPEG, GIF, WebP): `small` (128 px), `medium` (512) or
    /// `large` (1024, the default) on its longer side, upright (EXIF orientation applied),
    /// without the original's metadata; JPEG, or PNG where the picture has transparency. Made
    /// on first request and kept. An image too large to decode within the server's bounds, or
    /// not an image, is 422.
    ///
    /// Permission: `files.read`.
    #[oai(path = "/v1/assets/:asset_id/thumbnail", method = "get", operation_id = "getAssetThumbnail")]
    async fn thumbnail(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        asset_id: Path<String>,
        size: Query<Option<ThumbnailSize>>,
    ) -> Result<Thumbnail, ThumbnailErrors> {
        let p = auth.require(&app, Permission::FilesRead).await?;
        let a = visible(&app, &p, &asset_id.0).await?;
        let size = crate::thumbs::Size::from(size.0.unwrap_or(ThumbnailSize::Large));
        let sha = Sha256::parse_hex(&a.sha256).ok_or(DomainError::NotFound { what: "asset" })?;
        let etag = format!("\"{}-{}\"", a.sha256, size.as_str());
        if req.header("if-none-match").is_some_and(|v| etag_listed(v, &etag)) {
            return Ok(Thumbnail(Response::builder().status(StatusCode::NOT_MODIFIED).header("etag", etag).finish()));
        }
        let blob = app.uploads.blobs().path(p.org, &sha);
        let thumb = app.thumbs.get(p.org, &sha, &a.content_type, blob, size).await.map_err(|e| match e {
            crate::thumbs::ThumbError::NotAnImage => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "not_an_image", e.to_string())
            }
            crate::thumbs::ThumbError::TooLarge(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "image_too_large", e.to_string())
            }
            crate::thumbs::ThumbError::Undecodable(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image", e.to_string())
            }
            crate::thumbs::ThumbError::Io(e) => Problem::from(crate::store::StoreError::from(e)),
        })?;
        let bytes = tokio::fs::read(&thumb.path).await.map_err(|e| Problem::from(crate::store::StoreError::from(e)))?;
        app.metrics.file_bytes_out.inc_by(bytes.len() as u64);
        Ok(Thumbnail(
            Response::builder()
                .content_type(thumb.content_type)
                .header("etag", etag)
                .header("cache-control", "private, no-cache")
                .header("content-disposition", disposition("inline", &format!("thumbnail-{}", a.name)))
                .body(bytes),
        ))
    }

    /// Add a version of one of the room's named files (a scene's model, a texture): a file of
    /// the caller's own becomes the newest version of `name`; earlier versions stay. Everyone
    /// who reads the room reads every version. Audited; `room_asset.added` on the room's topic.
    ///
    /// Permission: `files.write`. Room role: `member`.
    #[oai(path = "/v1/rooms/:room_id/assets", method = "post", operation_id = "addRoomAssetVersion")]
    async fn add_room_version(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        room_id: Path<String>,
        body: JsonBody<NewRoomAssetVersion>,
    ) -> Result<RoomAssetAdded, RoomAssetErrors> {
        let p = auth.require(&app, Permission::FilesWrite).await?;
        let room = parse_id(&room_id.0, "room")?;
        super::media::require_room_role(&app, &p, room, crate::domain::policy::RoomRole::Member)?;
        let b = body.0;
        let asset = b
            .asset_id
            .parse()
            .map_err(|_| DomainError::invalid("/asset_id", "unknown_asset", "no file of yours has this id"))?;
        let ra = assets::add_room_version(&app.writer, user_ctx(req, &p), p.user, room, b.name, asset).await?;
        Ok(RoomAssetAdded::Created(Json(room_asset_view(ra))))
    }

    /// The room's named files, each with all its versions.
    ///
    /// Permission: `files.read`. Room role: `viewer`.
    #[oai(path = "/v1/rooms/:room_id/assets", method = "get", operation_id = "listRoomAssets")]
    async fn list_room_assets(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
    ) -> Result<Json<RoomAssetList>, RoomAssetReadErrors> {
        let p = auth.require(&app, Permission::FilesRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        super::media::require_room_role(&app, &p, room, crate::domain::policy::RoomRole::Viewer)?;
        let items = assets::room_assets(&app.store, OrgScope::member(&p), room).await?;
        Ok(Json(RoomAssetList { items: items.into_iter().map(room_asset_view).collect() }))
    }

    /// Download a file by a signed link (from `signAssetUrl`), without credentials; as
    /// `downloadAsset` otherwise.
    #[oai(path = "/v1/download/:org_id/:asset_id", method = "get", operation_id = "downloadSignedAsset")]
    #[allow(clippy::too_many_arguments)]
    async fn download_signed(
        &self,
        app: Data<&App>,
        req: &Request,
        org_id: Path<String>,
        asset_id: Path<String>,
        expires: Query<u64>,
        signature: Query<String>,
        #[oai(name = "Range")] _range: Header<Option<String>>,
        #[oai(name = "If-None-Match")] _inm: Header<Option<String>>,
        #[oai(name = "If-Range")] _if_range: Header<Option<String>>,
    ) -> Result<Download, SignedDownloadErrors> {
        let not_found = || DomainError::NotFound { what: "asset" };
        let org = parse_id(&org_id.0, "asset")?;
        let id = parse_id(&asset_id.0, "asset")?;
        let now = unix_now();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, app.download_url_key.as_ref());
        let sig = URL_SAFE_NO_PAD.decode(signature.0.as_bytes()).map_err(|_| forbidden_link())?;
        ring::hmac::verify(&key, signed_text(org, id, expires.0).as_bytes(), &sig).map_err(|_| forbidden_link())?;
        if expires.0 <= now {
            return Err(Problem::new(StatusCode::FORBIDDEN, "link_expired", "this download link has expired").into());
        }
        // The organization comes from a link this server signed after checking the caller.
        let scope = OrgScope::from_credential(org);
        let a = app
            .store
            .peek(|r| assets::find(r, scope, id))?
            .filter(|a| a.deleted_at_ms.is_none())
            .ok_or_else(not_found)?;
        let left = expires.0.saturating_sub(now);
        Ok(serve(&app, req, org, &a, format!("private, max-age={left}")).await?)
    }
}

/// A media type without its parameters (`text/plain; charset=utf-8` → `text/plain`).
fn essence(t: &str) -> String {
    t.split(';').next().unwrap_or_default().trim().to_owned()
}

fn forbidden_link() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "invalid_signature", "this download link is not one this server made")
}

/// A field error reported at a query parameter instead of a body field.
fn at_query(e: DomainError, pointer: &str) -> DomainError {
    match e {
        DomainError::Invalid(mut fields) => {
            for f in &mut fields {
                pointer.clone_into(&mut f.pointer);
            }
            DomainError::Invalid(fields)
        }
        other => other,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn signed_text(org: Id, asset: Id, expires: u64) -> String {
    format!("outpost-download\n{org}\n{asset}\n{expires}")
}

fn signature(key: &[u8; 32], org: Id, asset: Id, expires: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed_text(org, asset, expires).as_bytes()).as_ref())
}

/// The asset `id` as the caller may see it: their own, any for the organization's admins, or
/// one shared in a place they read (a channel they may see, the organization's tasks, a room
/// they take part in, anyone's avatar).
async fn visible(app: &App, p: &Principal, id: &str) -> Result<Asset, DomainError> {
    let not_found = || DomainError::NotFound { what: "asset" };
    let id = parse_id(id, "asset")?;
    let scope = OrgScope::member(p);
    // One point read, like the credential's: no hop to the blocking pool.
    let a =
        app.store.peek(|r| assets::find(r, scope, id))?.filter(|a| a.deleted_at_ms.is_none()).ok_or_else(not_found)?;
    if a.created_by == p.user || manager(p) {
        return Ok(a);
    }
    for place in &a.shared_in {
        let reads = match *place {
            SharedIn::Channel(c) => {
                p.require(Permission::ChatUse).is_ok() && crate::domain::chat::get(&app.store, p.org, p.user, c).is_ok()
            }
            SharedIn::Task(t) => {
                p.require(Permission::TasksRead).is_ok()
                    && crate::domain::tasks::get(&app.store, scope, t, false).await.is_ok()
            }
            SharedIn::Room(r) => {
                p.require(Permission::RoomsRead).is_ok()
                    && super::media::require_room_role(app, p, r, crate::domain::policy::RoomRole::Viewer).is_ok()
            }
            SharedIn::Avatar => true,
        };
        if reads {
            return Ok(a);
        }
    }
    Err(not_found())
}

/// A download's answer: 200, 206, 304 or 416, with the file streamed from disk in bounded
/// chunks.
pub struct Download(Response);

impl poem::IntoResponse for Download {
    fn into_response(self) -> Response {
        self.0
    }
}

impl ApiResponse for Download {
    fn meta() -> MetaResponses {
        let header = |name: &str, description: &str| MetaHeader {
            name: name.to_owned(),
            description: Some(description.to_owned()),
            required: true,
            deprecated: false,
            schema: <String as Type>::schema_ref(),
        };
        // The file's own type, whatever it is.
        let binary = || {
            vec![MetaMediaType {
                content_type: "*/*",
                schema: <poem_openapi::types::Binary<Vec<u8>> as Type>::schema_ref(),
            }]
        };
        let with_body = |status: u16, description: &'static str, extra: Option<MetaHeader>| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content: binary(),
            headers: [
                header("ETag", "The content's SHA-256, quoted"),
                header("Content-Disposition", "inline or attachment, with the file's name"),
                header("Accept-Ranges", "bytes"),
            ]
            .into_iter()
            .chain(extra)
            .collect(),
        };
        MetaResponses {
            responses: vec![
                with_body(200, "The file (its declared type as Content-Type)", None),
                with_body(206, "The range asked for", Some(header("Content-Range", "bytes first-last/size"))),
                MetaResponse {
                    description: "Not modified: the `If-None-Match` ETag is current",
                    status: Some(304),
                    status_range: None,
                    content: vec![],
                    headers: vec![header("ETag", "The content's SHA-256, quoted")],
                },
                MetaResponse {
                    description: "The range starts past the end of the file",
                    status: Some(416),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: super::problem::CONTENT_TYPE,
                        schema: MetaSchemaRef::Reference("Problem".into()),
                    }],
                    headers: vec![header("Content-Range", "bytes */size")],
                },
            ],
        }
    }

    fn register(registry: &mut Registry) {
        super::problem::register(registry);
    }
}

/// A thumbnail's answer: 200 (JPEG or PNG) or 304.
pub struct Thumbnail(Response);

impl poem::IntoResponse for Thumbnail {
    fn into_response(self) -> Response {
        self.0
    }
}

impl ApiResponse for Thumbnail {
    fn meta() -> MetaResponses {
        let etag = || MetaHeader {
            name: "ETag".to_owned(),
            description: Some("The image's SHA-256 and the size, quoted".to_owned()),
            required: true,
            deprecated: false,
            schema: <String as Type>::schema_ref(),
        };
        let image = |content_type| MetaMediaType {
            content_type,
            schema: <poem_openapi::types::Binary<Vec<u8>> as Type>::schema_ref(),
        };
        MetaResponses {
            responses: vec![
                MetaResponse {
                    description: "The thumbnail",
                    status: Some(200),
                    status_range: None,
                    content: vec![image("image/jpeg"), image("image/png")],
                    headers: vec![etag()],
                },
                MetaResponse {
                    description: "Not modified: the `If-None-Match` ETag is current",
                    status: Some(304),
                    status_range: None,
                    content: vec![],
                    headers: vec![etag()],
                },
            ],
        }
    }

    fn register(_registry: &mut Registry) {}
}

/// The byte range a `Range` header asks of a file of `size` bytes: `None` to send it whole,
/// `Some(Err(()))` when unsatisfiable.
fn range_of(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        // Several ranges: the whole file is a valid answer (RFC 9110 §14.2).
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let n: u64 = last.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        return Some(Ok((size.saturating_sub(n), size - 1)));
    }
    let first: u64 = first.parse().ok()?;
    let last = if last.is_empty() { u64::MAX } else { last.parse::<u64>().ok()? };
    if last < first {
        return None;
    }
    if first >= size {
        return Some(Err(()));
    }
    Some(Ok((first, last.min(size - 1))))
}

/// The parsers of uploads' and downloads' headers, for the fuzz target `file_headers`: each
/// line of `text` is tried as `Upload-Metadata`, `Upload-Checksum`, `Range` (against a few
/// sizes), an `If-None-Match` list, a media type and a file name, and what must hold of each
/// answer is asserted.
pub fn fuzz_headers(text: &str) {
    for line in text.lines() {
        if let Ok(pairs) = parse_metadata(line) {
            assert!(pairs.iter().all(|(k, _)| !k.is_empty()));
        }
        let _ = parse_checksum(Some(line));
        for size in [0, 1, 100, u64::MAX] {
            if let Some(Ok((first, last))) = range_of(line, size) {
                assert!(first <= last && last < size, "{line:?} of {size} bytes gave {first}-{last}");
            }
        }
        let _ = etag_listed(line, "\"0a\"");
        if let Ok(t) = form_type(Some(line), None) {
            assert!(t.len() <= assets::TYPE_CHARS_MAX && t.contains('/'));
        }
        if assets::check_name(line).is_ok() {
            // A stored name always makes a header a response can carry.
            assert!(HeaderValue::from_str(&disposition("attachment", line)).is_ok(), "{line:?}");
        }
    }
}

/// A form upload's body (`multipart/form-data; boundary=B`), for the fuzz target
/// `upload_form`: read part by part as `uploadAssetForm` reads it, within its limits.
pub fn fuzz_form(body: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    }
    let form = FormBody(StreamBody {
        content_type: Some("multipart/form-data; boundary=B".into()),
        body: Some(Body::from_vec(body.to_vec())),
    });
    let Ok(mut form) = form.form() else { return };
    RUNTIME.with(|rt| {
        rt.block_on(async move {
            while let Ok(Some(field)) = form.next_field().await {
                let part_type = field.content_type().map(|m| essence(m.as_ref()));
                let _ = form_type(None, part_type.as_deref());
                let _ = field.file_name().map(assets::check_name);
                match field.name() {
                    Some("name" | "content_type") => {
                        if let Ok(text) = form_text(field).await {
                            assert!(text.len() as u64 <= FORM_TEXT_BYTES_MAX);
                        }
                    }
                    _ => {
                        let _ = field.bytes().await;
                    }
                }
            }
        });
    });
}

/// Whether an `If-None-Match` or `If-Range` list names `etag` (or `*`).
fn etag_listed(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Media types a browser shows without running anything; the rest come as attachments.
fn inline_safe(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "application/pdf"
            | "text/plain"
            | "audio/mpeg"
            | "audio/ogg"
            | "audio/wav"
            | "audio/webm"
            | "video/mp4"
            | "video/webm"
            | "video/ogg"
    )
}

/// Whether the first bytes of a file are what an image type claims.
fn image_bytes_match(content_type: &str, head: &[u8]) -> bool {
    match content_type {
        "image/png" => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => head.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a"),
        "image/webp" => head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP",
        "image/avif" => head.len() >= 12 && &head[4..8] == b"ftyp",
        _ => true,
    }
}

/// `Content-Disposition` for `name` (RFC 6266 with an RFC 8187 UTF-8 form).
fn disposition(kind: &str, name: &str) -> String {
    use std::fmt::Write;
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Where a download's bytes come from: all of them at hand (a small file, from memory or one
/// read), a range read in one go, or a file streamed from disk.
enum Source {
    Whole(Bytes),
    Part { head: Vec<u8>, bytes: Bytes },
    File(tokio::fs::File),
}

/// A blob that cannot be read: missing (404, logged, it should not be) or unreadable.
fn unreadable(a: &Asset, e: &std::io::Error) -> Problem {
    tracing::error!(asset = %a.id, error = %e, "a stored file's bytes cannot be read");
    if e.kind() == std::io::ErrorKind::NotFound {
        Problem::from(DomainError::NotFound { what: "asset" })
    } else {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_failed", "the file's bytes cannot be read")
    }
}

/// Opens a download's bytes: a small file whole (from memory, or read in one trip to the
/// blocking pool and kept in memory for the next download), a small range of a large file in
/// one positioned read, or a large file to stream.
async fn source(
    app: &App,
    org: Id,
    a: &Asset,
    sha: Sha256,
    first: u64,
    len: u64,
    image: bool,
) -> Result<Source, Problem> {
    let size = a.size;
    let blobs = app.uploads.blobs().clone();
    let source = if size <= WHOLE_READ_MAX.max(blobs.memory_file_max()) {
        match blobs.in_memory(org, &sha) {
            Some(bytes) => {
                app.metrics.file_reads_from_memory.inc();
                Source::Whole(bytes)
            }
            None => Source::Whole(
                tokio::task::spawn_blocking(move || blobs.read_whole(org, &sha, size))
                    .await
                    .map_err(|e| Problem::from(crate::store::StoreError::from(std::io::Error::other(e))))?
                    .map_err(|e| unreadable(a, &e))?,
            ),
        }
    } else if len <= WHOLE_READ_MAX {
        // A small range of a large file: one trip, one positioned read.
        let path = blobs.path(org, &sha);
        let read = move || -> std::io::Result<(Vec<u8>, Bytes)> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&path)?;
            let mut head = vec![0u8; if image { 16 } else { 0 }];
            f.read_exact_at(&mut head, 0)?;
            let mut bytes = vec![0u8; len as usize];
            f.read_exact_at(&mut bytes, first)?;
            Ok((head, Bytes::from(bytes)))
        };
        let (head, bytes) = tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| Problem::from(crate::store::StoreError::from(std::io::Error::other(e))))?
            .map_err(|e| unreadable(a, &e))?;
        Source::Part { head, bytes }
    } else {
        let path = blobs.path(org, &sha);
        Source::File(tokio::fs::File::open(&path).await.map_err(|e| unreadable(a, &e))?)
    };
    Ok(source)
}

async fn serve(app: &App, req: &Request, org: Id, a: &Asset, cache: String) -> Result<Download, Problem> {
    let etag = format!("\"{}\"", a.sha256);
    let sha = Sha256::parse_hex(&a.sha256).ok_or_else(|| Problem::from(DomainError::NotFound { what: "asset" }))?;
    let mut builder = Response::builder()
        .header("etag", etag.as_str())
        .header("cache-control", cache.as_str())
        .header("accept-ranges", "bytes");
    if let Some(inm) = req.header("if-none-match") {
        if etag_listed(inm, &etag) {
            return Ok(Download(builder.status(StatusCode::NOT_MODIFIED).finish()));
        }
    }
    let size = a.size;
    let if_range_ok = req.header("if-range").is_none_or(|v| etag_listed(v, &etag) && !v.trim().starts_with("W/"));
    let range = req.header("range").filter(|_| if_range_ok).and_then(|h| range_of(h, size));
    let (status, first, len) = match range {
        None => (StatusCode::OK, 0, size),
        Some(Ok((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Some(Err(())) => {
            let mut resp = poem::IntoResponse::into_response(Problem::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            ));
            let h = resp.headers_mut();
            h.insert("content-range", HeaderValue::from_str(&format!("bytes */{size}")).expect("digits"));
            h.insert("etag", HeaderValue::from_str(&etag).expect("hex etag"));
            return Ok(Download(resp));
        }
    };
    // Only an image's first bytes are checked against its type: other downloads read nothing
    // more than what they send.
    let image = a.content_type.starts_with("image/");
    let mut source = source(app, org, a, sha, first, len, image).await?;
    let honest = match &mut source {
        _ if !image => true,
        Source::Whole(b) => image_bytes_match(&a.content_type, &b[..b.len().min(16)]),
        Source::Part { head, .. } => image_bytes_match(&a.content_type, head),
        Source::File(file) => {
            let mut head = [0u8; 16];
            let n = file.read(&mut head).await.unwrap_or(0);
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| Problem::from(crate::store::StoreError::from(e)))?;
            image_bytes_match(&a.content_type, &head[..n])
        }
    };
    let (content_type, kind) = if inline_safe(&a.content_type) && honest {
        (a.content_type.as_str(), "inline")
    } else if honest {
        (a.content_type.as_str(), "attachment")
    } else {
        ("application/octet-stream", "attachment")
    };
    builder = builder.content_type(content_type).header("content-disposition", disposition(kind, &a.name));
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header("content-range", format!("bytes {first}-{}/{size}", first + len - 1));
    }
    // The length is said outright: a HEAD answer (this one, its body dropped) still carries it.
    builder = builder.status(status).header("content-length", len.to_string());
    let out = app.metrics.file_bytes_out.clone();
    let body = match source {
        Source::Whole(bytes) => {
            out.inc_by(len);
            Body::from_bytes(bytes.slice(first as usize..(first + len) as usize))
        }
        Source::Part { bytes, .. } => {
            out.inc_by(len);
            Body::from_bytes(bytes)
        }
        Source::File(mut file) => {
            if first > 0 {
                file.seek(std::io::SeekFrom::Start(first))
                    .await
                    .map_err(|e| Problem::from(crate::store::StoreError::from(e)))?;
            }
            let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_CHUNK);
            Body::from_bytes_stream(futures_util::StreamExt::inspect(stream, move |chunk| {
                if let Ok(c) = chunk {
                    out.inc_by(c.len() as u64);
                }
            }))
        }
    };
    Ok(Download(builder.body(body)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range_of("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(range_of("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(range_of("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(range_of("bytes=-1000", 100), Some(Ok((0, 99))));
        assert_eq!(range_of("bytes=50-1000", 100), Some(Ok((50, 99))));
        assert_eq!(range_of("bytes=100-", 100), Some(Err(())));
        assert_eq!(range_of("bytes=-0", 100), Some(Err(())));
        assert_eq!(range_of("bytes=0-1,5-6", 100), None);
        assert_eq!(range_of("items=0-1", 100), None);
        assert_eq!(range_of("bytes=9-1", 100), None);
    }

    #[test]
    fn metadata_is_pairs_of_key_and_base64() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential").unwrap();
        assert_eq!(
            m,
            [("filename".into(), "world_domination_plan.pdf".into()), ("is_confidential".into(), String::new())]
        );
        assert_eq!(parse_metadata("").unwrap(), []);
        assert!(parse_metadata("a !!!").is_err());
        assert!(parse_metadata("a YQ==,a YQ==").is_err());
    }

    #[test]
    fn names_are_quoted_safely() {
        assert_eq!(disposition("inline", "a b.png"), "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png");
        assert_eq!(
            disposition("attachment", "é\".txt"),
            "attachment; filename=\"__.txt\"; filename*=UTF-8''%C3%A9%22.txt"
        );
    }
}
