//! Recording a room's call: every audio track to its own Ogg Opus file and, when asked, every
//! video track to a file of its own (VP8 in IVF, H.264 as an Annex B byte stream), in
//! `<data dir>/recordings/<org>/<recording>/`.
//!
//! A recorder receives a call's tracks the way a call connection does (as an outlet of each,
//! told of tracks that come and go), and writes on a thread of its own so the disk never
//! holds up forwarding. Its metadata is a `recording.json` beside the files, replaced
//! atomically (write, fsync, rename) when the recording starts and when it ends: the media
//! files are files anyway, and the listing reads them with their metadata.
//!
//! Packets are written in order: one older than the last written (a late or repeated one)
//! is dropped, as an Ogg page or an IVF frame cannot be put back in place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtc::media::io::Writer;
use rtc::media::io::h26x_writer::H26xWriter;
use rtc::media::io::ivf_reader::IVFFileHeader;
use rtc::media::io::ivf_writer::IVFWriter;
use rtc::media::io::ogg_writer::OggWriter;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Kind;
use super::peer::{PeerMsg, Source};
use crate::ids::Id;

/// One recorded file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedFile {
    /// The file's name in the recording's directory.
    pub name: String,
    /// `audio` (Ogg Opus) or `video` (IVF for VP8, an Annex B `.h264` stream for H.264).
    pub kind: String,
    /// The track's media type (`audio/opus`, `video/VP8`, `video/H264`); metadata written
    /// before this was kept has none, and was Opus or VP8.
    #[serde(default)]
    pub codec: String,
    /// The user whose track it is.
    pub user: Id,
    /// The publisher's own id for the track.
    pub track: String,
    pub bytes: u64,
    pub packets: u64,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
}

/// A recording's metadata (`recording.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub id: Id,
    pub org: Id,
    pub room: Id,
    pub started_by: Id,
    pub video: bool,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// `recording`, `done`, or `failed` (the disk refused a write).
    pub status: String,
    pub files: Vec<RecordedFile>,
}

impl Recording {
    pub fn dir(root: &Path, org: Id, id: Id) -> PathBuf {
        root.join(org.to_string()).join(id.to_string())
    }
}

/// Writes `rec`'s metadata atomically.
pub fn save(root: &Path, rec: &Recording) -> std::io::Result<()> {
    let dir = Recording::dir(root, rec.org, rec.id);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("recording.json.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("recording.json"))?;
    File::open(&dir)?.sync_all()
}

/// Reads the metadata of recording `id` of `org`.
pub fn load(root: &Path, org: Id, id: Id) -> Option<Recording> {
    let text = std::fs::read(Recording::dir(root, org, id).join("recording.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Every recording of `org` in `room`, newest first.
pub fn list(root: &Path, org: Id, room: Id) -> Vec<Recording> {
    let Ok(entries) = std::fs::read_dir(root.join(org.to_string())) else { return Vec::new() };
    let mut v: Vec<Recording> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<Id>().ok()))
        .filter_map(|id| load(root, org, id))
        .filter(|r| r.room == room)
        .collect();
    v.sort_by_key(|r| std::cmp::Reverse(r.id));
    v
}

/// One open file and where its writing stands.
struct Track {
    file: usize,
    writer: Box<dyn Writer + Send>,
    last_seq: Option<u16>,
    /// The one simulcast layer written (the best when the first keyframe came).
    layer: Option<u8>,
    source: Arc<Source>,
}

/// The recorder's thread: takes the call's packets until told to stop (the channel closes or
/// `Close` comes), then closes its files and writes the final metadata.
pub(super) fn run(root: &Path, mut rec: Recording, mut rx: mpsc::Receiver<PeerMsg>) -> Recording {
    let dir = Recording::dir(root, rec.org, rec.id);
    let mut tracks: HashMap<u64, Track> = HashMap::new();
    let mut failed = false;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            PeerMsg::AddSource(source) => {
                if source.kind == Kind::Video && !rec.video {
                    continue;
                }
                match open(&dir, &source, rec.files.len()) {
                    Ok((name, writer)) => {
                        if source.kind == Kind::Video {
                            let layer = Some(source.pick_layer(super::simulcast::Quality::High, None));
                            let _ = source.publisher.try_send(PeerMsg::Keyframe { track: source.track.clone(), layer });
                        }
                        tracks.insert(
                            source.id,
                            Track {
                                file: rec.files.len(),
                                writer,
                                last_seq: None,
                                layer: None,
                                source: source.clone(),
                            },
                        );
                        rec.files.push(RecordedFile {
                            name,
                            kind: source.kind.as_str().to_owned(),
                            codec: source.mime.clone(),
                            user: source.user,
                            track: source.track.to_string(),
                            bytes: 0,
                            packets: 0,
                            started_at_ms: crate::ids::now_ms(),
                            ended_at_ms: None,
                        });
                    }
                    Err(e) => {
                        tracing::error!(recording = %rec.id, error = %e, "a recording file could not be created");
                        failed = true;
                        break;
                    }
                }
            }
            PeerMsg::RemoveSource(id) => {
                if let Some(mut t) = tracks.remove(&id) {
                    let _ = t.writer.close();
                    rec.files[t.file].ended_at_ms = Some(crate::ids::now_ms());
                }
            }
            PeerMsg::Rtp { source, layer, packet } => {
                let Some(t) = tracks.get_mut(&source) else { continue };
                if t.layer.is_none() {
                    let best = t.source.pick_layer(super::simulcast::Quality::High, None);
                    let video = t.source.kind == Kind::Video;
                    if layer != best || (video && !super::keyframe::keyframe_start(&t.source.mime, &packet.payload)) {
                        continue;
                    }
                    t.layer = Some(layer);
                }
                if t.layer != Some(layer) {
                    continue;
                }
                let seq = packet.header.sequence_number;
                if t.last_seq.is_some_and(|last| seq.wrapping_sub(last) == 0 || seq.wrapping_sub(last) >= 0x8000) {
                    continue;
                }
                t.last_seq = Some(seq);
                if let Err(e) = t.writer.write_rtp(&packet) {
                    if matches!(e, rtc::shared::error::Error::Io(_)) {
                        tracing::error!(recording = %rec.id, error = %e, "recording write failed; stopping");
                        failed = true;
                        break;
                    }
                    continue;
                }
                rec.files[t.file].packets += 1;
            }
            PeerMsg::Close(_) => break,
            _ => {}
        }
    }
    let now = crate::ids::now_ms();
    for (_, mut t) in tracks.drain() {
        let _ = t.writer.close();
        rec.files[t.file].ended_at_ms.get_or_insert(now);
    }
    // On disk before the metadata says so.
    for f in &mut rec.files {
        let path = dir.join(&f.name);
        if File::open(&path).and_then(|file| file.sync_all()).is_err() {
            failed = true;
        }
        f.bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    }
    rec.ended_at_ms = Some(now);
    if failed { "failed" } else { "done" }.clone_into(&mut rec.status);
    if let Err(e) = save(root, &rec) {
        tracing::error!(recording = %rec.id, error = %e, "the recording's metadata could not be written");
    }
    rec
}

type Opened = (String, Box<dyn Writer + Send>);

fn open(dir: &Path, source: &Source, n: usize) -> std::io::Result<Opened> {
    std::fs::create_dir_all(dir)?;
    let to_io = |e: rtc::shared::error::Error| std::io::Error::other(e.to_string());
    match source.kind {
        Kind::Audio => {
            let name = format!("{n:02}-audio-{}.ogg", source.id);
            let w = OggWriter::new(BufWriter::new(File::create(dir.join(&name))?), 48_000, 2).map_err(to_io)?;
            Ok((name, Box::new(w)))
        }
        Kind::Video if source.mime.eq_ignore_ascii_case(MIME_TYPE_H264) => {
            let name = format!("{n:02}-video-{}.h264", source.id);
            let w = H26xWriter::new(BufWriter::new(File::create(dir.join(&name))?), false);
            Ok((name, Box::new(w)))
        }
        Kind::Video => {
            let name = format!("{n:02}-video-{}.ivf", source.id);
            let file = BufWriter::new(File::create(dir.join(&name))?);
            let header = IVFFileHeader {
                signature: *b"DKIF",
                version: 0,
                header_size: 32,
                four_cc: *b"VP80",
                width: 640,
                height: 480,
                timebase_denominator: 30,
                timebase_numerator: 1,
                num_frames: 0,
                unused: 0,
            };
            let w = IVFWriter::new(file, &header).map_err(to_io)?;
            Ok((name, Box::new(w)))
        }
    }
}
