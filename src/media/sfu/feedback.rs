//! The receivers' feedback the relay acts on, let through the interceptor chain to it.
//!
//! The `rtc` interceptors consume inbound RTCP themselves (a NACK is answered from the send
//! history, receiver reports feed the statistics), and the chain's last stage drops whatever no
//! interceptor marked for the application. A relay needs some of it: keyframe requests (PLI,
//! FIR) to pass on to the publisher, bandwidth estimates (REMB) to choose a simulcast layer,
//! and NACKs to count. This interceptor marks exactly those, and passes everything through.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;

/// Application-most: after every interceptor that reads RTCP, before the chain's end.
pub(super) const SLOT: usize = 14_000;

#[derive(Default)]
pub(super) struct FeedbackTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

/// Whether `p` is feedback the relay acts on.
fn wanted(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>()
        || any.is::<FullIntraRequest>()
        || any.is::<ReceiverEstimatedMaximumBitrate>()
        || any.is::<TransportLayerNack>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| wanted(p.as_ref()))
            && !msg.message.has(&Attribute::DeliverToApplication)
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{AttributedPacket, Registry};
    use rtc::shared::TransportContext;

    fn rtcp(p: Box<dyn rtc::rtcp::Packet>) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![p])),
        }
    }

    #[test]
    fn keyframe_requests_and_estimates_reach_the_relay_reports_do_not() -> Result<(), rtc::shared::error::Error> {
        let mut chain = Registry::new().with(SLOT.into(), FeedbackTap::default()).build();
        let pli = PictureLossIndication { sender_ssrc: 1, media_ssrc: 2 };
        chain.handle_read(rtcp(Box::new(pli)))?;
        assert!(chain.poll_read().is_some(), "a PLI reaches the relay");
        let remb = ReceiverEstimatedMaximumBitrate { sender_ssrc: 1, bitrate: 150_000.0, ssrcs: vec![2] };
        chain.handle_read(rtcp(Box::new(remb)))?;
        assert!(chain.poll_read().is_some(), "a REMB reaches the relay");
        let rr = rtc::rtcp::receiver_report::ReceiverReport { ssrc: 1, ..Default::default() };
        chain.handle_read(rtcp(Box::new(rr)))?;
        assert!(chain.poll_read().is_none(), "a receiver report stays with the interceptors");
        Ok(())
    }
}
