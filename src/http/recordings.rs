//! `/v1/rooms/{id}/recordings`: hosts start and stop recording a room's call; its joined
//! participants list recordings and download their files (Ogg Opus per audio track, IVF per
//! video track).

use poem::Body;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::body::JsonBody;
use super::media::{require_room_role, sfu};
use super::problem::Problem;
use super::{ApiTags, UserAuth, parse_id, user_ctx};
use crate::app::App;
use crate::domain::DomainError;
use crate::domain::policy::{Permission, RoomRole};
use crate::domain::rooms::CallAction;
use crate::ids::{Id, rfc3339};
use crate::media::sfu::record::{self, RecordedFile, Recording};

crate::problems!(RecordingErrors: 400, 401, 403, 404, 409, 422, 507);
crate::problems!(RecordingReadErrors: 401, 403, 404);

/// One recorded file: a track of one participant.
#[derive(Object, Debug)]
#[oai(rename = "RecordedFile")]
pub struct FileView {
    pub name: String,
    /// `audio` (Ogg Opus) or `video` (IVF for VP8, an Annex B `.h264` stream for H.264).
    pub kind: String,
    /// The track's media type: `audio/opus`, `video/VP8` or `video/H264`.
    pub codec: String,
    pub user_id: String,
    /// The publisher's own id for the track.
    pub track: String,
    pub bytes: u64,
    pub packets: u64,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Where to download it.
    pub url: String,
}

/// A recording of a room's call.
#[derive(Object, Debug)]
#[oai(rename = "Recording")]
pub struct RecordingView {
    pub id: String,
    pub room_id: String,
    pub started_by: String,
    /// Video tracks are recorded too.
    pub video: bool,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// `recording`, `done`, or `failed` (the disk refused a write).
    pub status: String,
    /// Filled in when the recording ends.
    pub files: Vec<FileView>,
}

#[derive(Object, Debug)]
#[oai(rename = "RecordingList")]
pub struct RecordingList {
    pub items: Vec<RecordingView>,
}

#[derive(Object, Debug, serde::Deserialize)]
#[oai(rename = "NewRecording")]
#[serde(deny_unknown_fields)]
pub struct NewRecordingBody {
    /// Record video tracks too (default: audio only).
    #[serde(default)]
    #[oai(default)]
    pub video: bool,
}

#[derive(ApiResponse)]
pub enum RecordingStarted {
    #[oai(status = 201)]
    Created(Json<RecordingView>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum FileDownload {
    #[oai(status = 200)]
    Ok(Binary<Body>, #[oai(header = "Content-Disposition")] String),
}

fn file_view(rec: &Recording, f: &RecordedFile) -> FileView {
    FileView {
        name: f.name.clone(),
        kind: f.kind.clone(),
        codec: match (f.codec.is_empty(), f.kind.as_str()) {
            (false, _) => f.codec.clone(),
            (true, "audio") => "audio/opus".to_owned(),
            (true, _) => "video/VP8".to_owned(),
        },
        user_id: f.user.to_string(),
        track: f.track.clone(),
        bytes: f.bytes,
        packets: f.packets,
        started_at: rfc3339(f.started_at_ms),
        ended_at: f.ended_at_ms.map(rfc3339),
        url: format!("/v1/rooms/{}/recordings/{}/files/{}", rec.room, rec.id, f.name),
    }
}

fn view(r: &Recording) -> RecordingView {
    RecordingView {
        id: r.id.to_string(),
        room_id: r.room.to_string(),
        started_by: r.started_by.to_string(),
        video: r.video,
        started_at: rfc3339(r.started_at_ms),
        ended_at: r.ended_at_ms.map(rfc3339),
        status: r.status.clone(),
        files: r.files.iter().map(|f| file_view(r, f)).collect(),
    }
}

/// Recording `id` of `org` in `room` (404 otherwise).
async fn find(app: &App, org: Id, room: Id, id: &str) -> Result<Recording, DomainError> {
    let not_found = DomainError::NotFound { what: "recording" };
    let id = parse_id(id, "recording")?;
    let Some(root) = app.sfu.as_ref().map(|s| s.recordings_dir().to_owned()) else { return Err(not_found) };
    let found = tokio::task::spawn_blocking(move || record::load(&root, org, id)).await.ok().flatten();
    found.filter(|r| r.room == room).ok_or(not_found)
}

/// Makes each file of a finished recording one of the room's files (`recordings/{id}/{name}`),
/// owned by whoever started it, so the room's participants find and keep it with the rest. The
/// recording's own downloads stay as they are; a file the organization's limits refuse is
/// logged and left there.
async fn keep_as_room_files(app: &App, req: &poem::Request, p: &crate::auth::Principal, rec: &Recording) {
    let Some(root) = app.sfu.as_ref().map(|s| s.recordings_dir().to_owned()) else { return };
    let scope = crate::tenancy::OrgScope::member(p);
    let limits = match crate::domain::orgs::get(&app.store, scope).await {
        Ok(org) => crate::uploads::OrgLimits::of(&app.config.files, &org.settings),
        Err(e) => {
            tracing::warn!(recording = %rec.id, error = %e, "the recording's files were not kept as room files");
            return;
        }
    };
    for f in &rec.files {
        let path = Recording::dir(&root, rec.org, rec.id).join(&f.name);
        let content_type = if f.kind == "audio" { "audio/ogg" } else { "video/x-ivf" };
        let name = format!("recordings/{}/{}", rec.id, f.name);
        let ctx = user_ctx(req, p);
        let kept = async {
            let what = crate::uploads::Import { owner: rec.started_by, file: &path, name: &f.name, content_type };
            let asset = app.uploads.import(&app.store, &app.writer, ctx.clone(), what, &limits).await?;
            crate::domain::assets::add_room_version(&app.writer, ctx, rec.started_by, rec.room, name, asset.id).await
        };
        if let Err(e) = kept.await {
            tracing::warn!(recording = %rec.id, file = %f.name, error = %e, "a recorded file was not kept as a room file");
        }
    }
}

#[derive(Default)]
pub struct RecordingsApi;

#[OpenApi(tag = "ApiTags::Media")]
impl RecordingsApi {
    /// Start recording the room's call: every audio track to an Ogg Opus file and, with
    /// `video`, every video track to an IVF file, until it is stopped. Everyone in the call
    /// sees `recording` in the call state. Audited.
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(path = "/v1/rooms/:room_id/recordings", method = "post", operation_id = "startRecording")]
    async fn start(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &poem::Request,
        room_id: Path<String>,
        body: JsonBody<NewRecordingBody>,
    ) -> Result<RecordingStarted, RecordingErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Host)?;
        let sfu = sfu(&app)?;
        let video = body.0.video;
        let rec = sfu.start_recording(p.org, room, p.user, video).map_err(Problem::from)?;
        let action = CallAction::Record { recording: rec.id, started: true, video };
        if let Err(e) = crate::domain::rooms::call_action(&app.writer, user_ctx(req, &p), p.user, room, action).await {
            sfu.stop_recording(room, rec.id).await;
            return Err(e.into());
        }
        let location = format!("/v1/rooms/{room}/recordings/{}", rec.id);
        Ok(RecordingStarted::Created(Json(view(&rec)), location))
    }

    /// Stop a running recording; the answer lists its files. Each file also becomes one of the
    /// room's files (`recordings/{recording id}/{file name}`), owned by whoever started it.
    ///
    /// Permission: `rooms.read`. Room role: `host`.
    #[oai(path = "/v1/rooms/:room_id/recordings/:recording_id/stop", method = "post", operation_id = "stopRecording")]
    async fn stop(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &poem::Request,
        room_id: Path<String>,
        recording_id: Path<String>,
    ) -> Result<Json<RecordingView>, RecordingErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Host)?;
        let rec = find(&app, p.org, room, &recording_id.0).await?;
        if rec.status != "recording" {
            return Ok(Json(view(&rec)));
        }
        let action = CallAction::Record { recording: rec.id, started: false, video: rec.video };
        crate::domain::rooms::call_action(&app.writer, user_ctx(req, &p), p.user, room, action).await?;
        let done = match app.sfu.as_ref() {
            Some(s) => s.stop_recording(room, rec.id).await,
            None => None,
        };
        if let Some(done) = &done {
            keep_as_room_files(&app, req, &p, done).await;
        }
        Ok(Json(view(&done.unwrap_or(rec))))
    }

    /// The room's recordings, newest first.
    ///
    /// Permission: `rooms.read`. Room role: `viewer`.
    #[oai(path = "/v1/rooms/:room_id/recordings", method = "get", operation_id = "listRecordings")]
    async fn list(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
    ) -> Result<Json<RecordingList>, RecordingReadErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Viewer)?;
        let Some(root) = app.sfu.as_ref().map(|s| s.recordings_dir().to_owned()) else {
            return Ok(Json(RecordingList { items: Vec::new() }));
        };
        let org = p.org;
        let items = tokio::task::spawn_blocking(move || record::list(&root, org, room)).await.unwrap_or_default();
        Ok(Json(RecordingList { items: items.iter().map(view).collect() }))
    }

    /// One recording.
    ///
    /// Permission: `rooms.read`. Room role: `viewer`.
    #[oai(path = "/v1/rooms/:room_id/recordings/:recording_id", method = "get", operation_id = "getRecording")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
        recording_id: Path<String>,
    ) -> Result<Json<RecordingView>, RecordingReadErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Viewer)?;
        Ok(Json(view(&find(&app, p.org, room, &recording_id.0).await?)))
    }

    /// Download one of a recording's files (Ogg Opus, IVF or H.264), as an attachment.
    ///
    /// Permission: `rooms.read`. Room role: `viewer`.
    #[oai(
        path = "/v1/rooms/:room_id/recordings/:recording_id/files/:name",
        method = "get",
        operation_id = "downloadRecordingFile"
    )]
    async fn file(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        room_id: Path<String>,
        recording_id: Path<String>,
        name: Path<String>,
    ) -> Result<FileDownload, RecordingReadErrors> {
        let p = auth.require(&app, Permission::RoomsRead).await?;
        let room = parse_id(&room_id.0, "room")?;
        require_room_role(&app, &p, room, RoomRole::Viewer)?;
        let rec = find(&app, p.org, room, &recording_id.0).await?;
        // Only names the metadata lists: nothing else in (or outside) the directory.
        let not_found = || DomainError::NotFound { what: "recording file" };
        let f = rec.files.iter().find(|f| f.name == name.0).ok_or_else(not_found)?;
        let Some(root) = app.sfu.as_ref().map(|s| s.recordings_dir().to_owned()) else {
            return Err(not_found().into());
        };
        let path = Recording::dir(&root, rec.org, rec.id).join(&f.name);
        let file = tokio::fs::File::open(&path).await.map_err(|_| not_found())?;
        let disposition = format!("attachment; filename=\"{}\"", f.name);
        Ok(FileDownload::Ok(Binary(Body::from_async_read(file)), disposition))
    }
}
