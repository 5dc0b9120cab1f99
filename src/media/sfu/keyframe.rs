//! Keyframes: finding where one starts in a packet (VP8 payload descriptor and frame header,
//! H.264 NAL units alone, aggregated or fragmented), so a switch of layer or source waits for
//! one, and pacing the requests for them: at most one per simulcast layer of a track every
//! `KEYFRAME_GAP`, however many receivers ask.

use std::time::{Duration, Instant};

use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;

/// At most one keyframe request per layer of a published track in this time.
pub const KEYFRAME_GAP: Duration = Duration::from_millis(500);

/// Whether a VP8 RTP payload starts a keyframe (RFC 7741: the payload descriptor, then the
/// frame header's inverse key-frame bit, on the first packet of partition 0).
pub fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else { return false };
    let (start, partition) = (b0 & 0x10 != 0, b0 & 0x07);
    if !start || partition != 0 {
        return false;
    }
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = payload.get(at) else { return false };
        at += 1;
        if x & 0x80 != 0 {
            // Picture id: 7 or 15 bits.
            let Some(&p) = payload.get(at) else { return false };
            at += if p & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    payload.get(at).is_some_and(|h| h & 0x01 == 0)
}

/// Whether a video RTP payload starts a keyframe, for the codecs we carry.
pub fn keyframe_start(mime: &str, payload: &[u8]) -> bool {
    if mime.eq_ignore_ascii_case(MIME_TYPE_H264) { h264_keyframe_start(payload) } else { vp8_keyframe_start(payload) }
}

/// Whether an H.264 RTP payload (RFC 6184) starts an IDR picture: an IDR or SPS unit, alone,
/// in a STAP-A, or starting an FU-A.
pub fn h264_keyframe_start(payload: &[u8]) -> bool {
    let key = |nal: u8| matches!(nal & 0x1f, 5 | 7);
    match payload.first().map(|b| b & 0x1f) {
        Some(24) => {
            let mut at = 1;
            while at + 2 < payload.len() {
                let n = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
                if payload.get(at + 2).is_some_and(|h| key(*h)) {
                    return true;
                }
                at += 2 + n;
            }
            false
        }
        Some(28) => payload.get(1).is_some_and(|fu| fu & 0x80 != 0 && key(*fu)),
        Some(_) => key(payload[0]),
        None => false,
    }
}

/// When a keyframe was last asked for, per simulcast layer of one published track.
#[derive(Debug, Default)]
pub(super) struct KeyframeRequests {
    last: Vec<Option<Instant>>,
}

impl KeyframeRequests {
    pub(super) fn new(layers: usize) -> Self {
        Self { last: vec![None; layers] }
    }

    /// A layer more (simulcast layers arrive one by one).
    pub(super) fn add_layer(&mut self) {
        self.last.push(None);
    }

    /// Which of `wanted` to ask for at `now`: those not asked for within `KEYFRAME_GAP`,
    /// marked as asked.
    pub(super) fn due(&mut self, wanted: impl IntoIterator<Item = usize>, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        for l in wanted {
            let Some(last) = self.last.get_mut(l) else { continue };
            if last.is_some_and(|t| now.duration_since(t) < KEYFRAME_GAP) {
                continue;
            }
            *last = Some(now);
            out.push(l);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vp8_keyframes_behind_the_payload_descriptor() {
        // S=1, partition 0, no extensions; frame header with the inverse key bit 0: a keyframe.
        assert!(vp8_keyframe_start(&[0x10, 0x50, 0x01, 0x00]));
        // The same with the key bit set: an interframe.
        assert!(!vp8_keyframe_start(&[0x10, 0x51, 0x01, 0x00]));
        // Not the start of a frame.
        assert!(!vp8_keyframe_start(&[0x00, 0x50]));
        // X, I (15-bit picture id), L, T: four descriptor bytes before the header.
        assert!(vp8_keyframe_start(&[0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x50]));
        assert!(!vp8_keyframe_start(&[0x90, 0xE0, 0x81]));
        assert!(!vp8_keyframe_start(&[]));
    }

    #[test]
    fn finds_h264_keyframes_alone_aggregated_and_fragmented() {
        assert!(h264_keyframe_start(&[0x65, 0x88])); // IDR
        assert!(h264_keyframe_start(&[0x67, 0x42])); // SPS
        assert!(!h264_keyframe_start(&[0x41, 0x9a])); // a non-IDR slice
        // STAP-A holding an SPS.
        assert!(h264_keyframe_start(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]));
        // FU-A: the start of an IDR, and a middle part of one.
        assert!(h264_keyframe_start(&[0x7c, 0x85, 0x88]));
        assert!(!h264_keyframe_start(&[0x7c, 0x05, 0x88]));
        assert!(!h264_keyframe_start(&[]));
        assert!(keyframe_start("video/H264", &[0x65]));
        assert!(keyframe_start("video/VP8", &[0x10, 0x50]));
    }

    #[test]
    fn keyframe_requests_are_paced_per_layer() {
        let mut k = KeyframeRequests::new(2);
        let t0 = Instant::now();
        assert_eq!(k.due([0, 1], t0), vec![0, 1]);
        // Asked again at once, and just before the gap ends: nothing goes out.
        assert_eq!(k.due([0, 1], t0 + Duration::from_millis(10)), Vec::<usize>::new());
        assert_eq!(k.due([0], t0 + KEYFRAME_GAP.saturating_sub(Duration::from_millis(1))), Vec::<usize>::new());
        // Once the gap is over the layer may be asked for again; the other keeps its own time.
        k.add_layer();
        assert_eq!(k.due([0, 2], t0 + KEYFRAME_GAP), vec![0, 2]);
        assert_eq!(k.due([1, 2], t0 + KEYFRAME_GAP + Duration::from_millis(1)), vec![1]);
        // A layer the track does not have is never asked for.
        assert_eq!(k.due([7], t0 + KEYFRAME_GAP * 3), Vec::<usize>::new());
    }
}
