//! Thumbnails of images (PNG, JPEG, GIF's first frame, WebP), made when first asked for with
//! a pure-Rust decoder and kept under `data_dir/thumbs/<org>/<digest>-<size>.<ext>`.
//!
//! Decoding is bounded before any pixel is allocated (the largest side, the memory one decode
//! may take), so a small file that declares a huge picture is refused, not decoded. EXIF
//! orientation is applied; the thumbnail is encoded anew, so no metadata of the original
//! (location, camera) goes with it. Opaque pictures become JPEG, ones with transparency PNG.
//! At most two are made at once, on the blocking pool.

use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::blobs::{self, Sha256};
use crate::ids::Id;

/// The widest or tallest picture decoded at all.
pub const SIDE_MAX: u32 = 16_384;
/// The most memory one decode may take.
pub const DECODE_BYTES_MAX: u64 = 256 << 20;
/// The largest file a thumbnail is made of.
pub const FILE_BYTES_MAX: u64 = 128 << 20;
/// Thumbnails made at the same time at most.
const AT_ONCE: usize = 2;

/// The sizes offered: the box the thumbnail fits in, keeping the picture's proportions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    pub fn pixels(self) -> u32 {
        match self {
            Size::Small => 128,
            Size::Medium => 512,
            Size::Large => 1024,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThumbError {
    #[error("thumbnails are made of PNG, JPEG, GIF and WebP images")]
    NotAnImage,
    #[error("the image is over the limits a thumbnail is made within: {0}")]
    TooLarge(String),
    #[error("the image cannot be decoded: {0}")]
    Undecodable(String),
    #[error("disk: {0}")]
    Io(#[from] std::io::Error),
}

/// A thumbnail on disk and its media type.
#[derive(Clone, Debug)]
pub struct Thumb {
    pub path: PathBuf,
    pub content_type: &'static str,
}

#[derive(Clone)]
pub struct Thumbs {
    root: PathBuf,
    permits: Arc<tokio::sync::Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The decoder for a declared media type (only the kinds thumbnails are made of).
fn format_of(content_type: &str) -> Option<ImageFormat> {
    match content_type {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

impl Thumbs {
    pub fn open(data_dir: &Path, metrics: Arc<crate::metrics::Metrics>) -> std::io::Result<Self> {
        let root = data_dir.join("thumbs");
        std::fs::create_dir_all(&root)?;
        Ok(Self { root, permits: Arc::new(tokio::sync::Semaphore::new(AT_ONCE)), metrics })
    }

    fn cached(&self, org: Id, sha: &Sha256, size: Size) -> [PathBuf; 2] {
        let dir = self.root.join(org.to_string());
        let stem = format!("{}-{}", sha.hex(), size.pixels());
        [dir.join(format!("{stem}.jpg")), dir.join(format!("{stem}.png"))]
    }

    /// The thumbnail of `size` of the image `blob` (of `org`, digest `sha`, declared as
    /// `content_type`), made now if it was not yet.
    pub async fn get(
        &self,
        org: Id,
        sha: &Sha256,
        content_type: &str,
        blob: PathBuf,
        size: Size,
    ) -> Result<Thumb, ThumbError> {
        let format = format_of(content_type).ok_or(ThumbError::NotAnImage)?;
        let [jpg, png] = self.cached(org, sha, size);
        for (path, content_type) in [(&jpg, "image/jpeg"), (&png, "image/png")] {
            if path.is_file() {
                self.metrics.thumbnails_served_cached.inc();
                return Ok(Thumb { path: path.clone(), content_type });
            }
        }
        let _permit = self.permits.acquire().await.map_err(|e| ThumbError::Io(std::io::Error::other(e)))?;
        let made = tokio::task::spawn_blocking(move || -> Result<Thumb, ThumbError> {
            let (bytes, alpha) = render(&blob, format, size.pixels())?;
            let (path, content_type) = if alpha { (png, "image/png") } else { (jpg, "image/jpeg") };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            blobs::write_atomic(&path, &bytes)?;
            Ok(Thumb { path, content_type })
        })
        .await
        .map_err(|e| ThumbError::Io(std::io::Error::other(e)))??;
        self.metrics.thumbnails_made.inc();
        Ok(made)
    }

    /// Removes every thumbnail of blob `sha` (its bytes are gone).
    pub fn forget(&self, org: Id, sha: &Sha256) {
        for size in [Size::Small, Size::Medium, Size::Large] {
            for path in self.cached(org, sha, size) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Decodes the image at `path` within the limits and encodes its thumbnail fitting `px`:
/// (bytes, whether it kept transparency, so is PNG).
fn render(path: &Path, format: ImageFormat, px: u32) -> Result<(Vec<u8>, bool), ThumbError> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > FILE_BYTES_MAX {
        return Err(ThumbError::TooLarge(format!("the file is over {FILE_BYTES_MAX} bytes")));
    }
    let mut reader = ImageReader::with_format(BufReader::new(file), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(SIDE_MAX);
    limits.max_image_height = Some(SIDE_MAX);
    limits.max_alloc = Some(DECODE_BYTES_MAX);
    reader.limits(limits);
    let classify = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => ThumbError::TooLarge(l.to_string()),
        image::ImageError::IoError(e) => ThumbError::Io(e),
        other => ThumbError::Undecodable(other.to_string()),
    };
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) * 4 > DECODE_BYTES_MAX {
        return Err(ThumbError::TooLarge(format!("{w}x{h} pixels")));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    img.apply_orientation(orientation);
    let thumb = img.thumbnail(px, px);
    let alpha = thumb.color().has_alpha();
    let mut out = Cursor::new(Vec::new());
    if alpha {
        thumb.to_rgba8().write_to(&mut out, ImageFormat::Png).map_err(classify)?;
    } else {
        let rgb = thumb.to_rgb8();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82).encode_image(&rgb).map_err(classify)?;
    }
    Ok((out.into_inner(), alpha))
}
