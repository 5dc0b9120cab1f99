//! What a slot writes into the packets it forwards so that its receiver sees one continuous
//! stream whatever it is bound to: the payload type and header extension ids negotiated with
//! the receiver, our SSRC and MID, and sequence numbers and timestamps that carry on from the
//! last packet written across a switch of source or layer.

use rtc::rtp::header::Header;

/// What a slot writes into the packets it forwards, as negotiated with its receiver.
pub(super) struct Rewrite {
    pub payload_type: u8,
    /// (publisher's extension id, ours).
    pub extensions: Vec<(u8, u8)>,
    /// Our MID header extension (id, value): receivers route bundled packets by it.
    pub mid: Option<(u8, bytes::Bytes)>,
}

/// The offsets (sequence, timestamp) that make a new source's first packet (`seq`, `ts`)
/// follow the last one written (`last`: its sequence number and timestamp), one frame step
/// (`ts_step`) later. With nothing written yet the numbering is the source's own.
pub(super) fn offsets(last: Option<(u16, u32)>, seq: u16, ts: u32, ts_step: u32) -> (u16, u32) {
    match last {
        Some((last_seq, last_ts)) => {
            (last_seq.wrapping_add(1).wrapping_sub(seq), last_ts.wrapping_add(ts_step).wrapping_sub(ts))
        }
        None => (0, 0),
    }
}

/// Whether `seq` is not behind `last` (sequence numbers wrap: the half ahead counts as after),
/// so the position written moves only forward.
pub(super) fn is_newer(seq: u16, last: Option<u16>) -> bool {
    last.is_none_or(|last| seq.wrapping_sub(last) < 0x8000)
}

/// Writes the slot's identity into a forwarded packet's header: its SSRC, the payload type
/// and extension ids the receiver negotiated (extensions it did not are dropped), our MID.
pub(super) fn apply(h: &mut Header, rw: &Rewrite, ssrc: u32) {
    h.ssrc = ssrc;
    h.payload_type = rw.payload_type;
    h.extensions.retain_mut(|e| match rw.extensions.iter().find(|(from, _)| *from == e.id) {
        Some((_, to)) => {
            e.id = *to;
            true
        }
        None => false,
    });
    if let Some((id, mid)) = &rw.mid {
        let _ = h.set_extension(*id, mid.clone());
    }
    // The publisher's padding was for its own extensions; the writer pads ours to a word.
    h.extensions_padding = 0;
    if h.extensions.is_empty() {
        h.extension = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_source_carries_on_the_numbering_across_a_switch() {
        // Nothing written yet: the first source keeps its own numbers.
        assert_eq!(offsets(None, 1234, 90_000, 3000), (0, 0));
        // The last packet written was 500 at 40_000; the new source starts at 7 and 1_000_000.
        let (seq_off, ts_off) = offsets(Some((500, 40_000)), 7, 1_000_000, 3000);
        assert_eq!(7u16.wrapping_add(seq_off), 501);
        assert_eq!(1_000_000u32.wrapping_add(ts_off), 43_000);
        // Its next packets keep their spacing.
        assert_eq!(8u16.wrapping_add(seq_off), 502);
        assert_eq!(1_003_000u32.wrapping_add(ts_off), 46_000);
        // Across the wrap of both counters.
        let (seq_off, ts_off) = offsets(Some((u16::MAX, u32::MAX - 100)), 10, 5, 960);
        assert_eq!(10u16.wrapping_add(seq_off), 0);
        assert_eq!(5u32.wrapping_add(ts_off), 859);
    }

    #[test]
    fn newer_means_ahead_within_half_the_range() {
        assert!(is_newer(1, None));
        assert!(is_newer(11, Some(10)));
        assert!(is_newer(10, Some(10)), "the same number again moves nothing back");
        assert!(!is_newer(9, Some(10)));
        assert!(is_newer(2, Some(u16::MAX - 2)), "after the wrap");
        assert!(!is_newer(u16::MAX - 2, Some(2)), "before the wrap");
    }

    #[test]
    fn the_header_takes_the_receivers_numbers_and_drops_the_rest() {
        let rw = Rewrite { payload_type: 100, extensions: vec![(1, 4), (3, 5)], mid: Some((9, "0".into())) };
        let mut h = Header { ssrc: 1, payload_type: 96, ..Header::default() };
        let _ = h.set_extension(1, bytes::Bytes::from_static(b"a"));
        let _ = h.set_extension(2, bytes::Bytes::from_static(b"b"));
        apply(&mut h, &rw, 77);
        assert_eq!((h.ssrc, h.payload_type), (77, 100));
        let ids: Vec<u8> = h.extensions.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![4, 9], "1 became 4, 2 was dropped, our MID was added");
        assert_eq!(h.get_extension(9), Some(bytes::Bytes::from_static(b"0")));
    }
}
