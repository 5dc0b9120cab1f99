//! Track routing inside a call: a published track's outlets (the connections it is forwarded
//! to), WHEP slots bound to the newest track of their kind and moved on when it ends, call
//! connections adding and removing tracks, connections ending, audio levels choosing the active
//! speaker, and the snapshot of the call's media state handed to the state sink.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::peer::{Outlet, Outlets, PeerMsg, Source};
use super::{
    Call, CallState, Kind, ParticipantState, Player, Published, Receiving, SessionInfo, Shared, TrackState, lock, write,
};
use crate::ids::Id;

pub(super) fn bind_slot(player: &mut Player, slot: usize, t: &Published) {
    let Receiving::Slots(slots) = &mut player.receiving else { return };
    slots[slot].1 = Some(t.source.id);
    add_outlet(player, t);
    let _ = player.tx.try_send(PeerMsg::Attach { slot, source: Some(t.source.clone()) });
}

pub(super) fn add_outlet(player: &Player, t: &Published) {
    if t.session == player.session {
        return;
    }
    write(&t.outlets).push(Outlet { session: player.session, tx: player.tx.clone() });
    if matches!(player.receiving, Receiving::All) {
        let _ = player.tx.try_send(PeerMsg::AddSource(t.source.clone()));
    }
}

impl Shared {
    /// A new track from `session` in `room`: WHEP slots of its kind that are free bind to it,
    /// call connections add it.
    pub(crate) fn publish(
        &self,
        room: Id,
        session: Id,
        kind: Kind,
        client_track: &str,
        make: impl FnOnce(u64) -> Source,
    ) -> (Arc<Source>, Outlets) {
        let source = Arc::new(make(self.next_source.fetch_add(1, Ordering::Relaxed)));
        let outlets: Outlets = Arc::default();
        // Sessions before calls, the order `open` takes them in.
        let user = lock(&self.sessions).get(&session).map(|e| e.info.user).unwrap_or_default();
        {
            let mut calls = lock(&self.calls);
            let call = calls.entry(room).or_default();
            let (label, muted) =
                call.labels.get(&(session, client_track.to_owned())).cloned().unwrap_or(("unknown".into(), false));
            let moderated = call.moderator_muted.contains_key(&(session, client_track.to_owned()));
            source.set_suspended(moderated);
            let t = Published {
                source: source.clone(),
                session,
                user,
                outlets: outlets.clone(),
                state: TrackState {
                    id: source.id,
                    kind,
                    codec: source.mime.clone(),
                    client_track: client_track.to_owned(),
                    source: label,
                    muted,
                    muted_by_moderator: moderated,
                },
            };
            for p in &mut call.players {
                match &p.receiving {
                    Receiving::Slots(slots) => {
                        if p.session == session {
                            continue;
                        }
                        // The newest track of a kind plays: a bound slot moves over too.
                        if let Some(slot) = slots.iter().position(|s| s.0 == kind) {
                            if let Some(old) = slots[slot].1
                                && let Some(o) = call.tracks.iter().find(|x| x.source.id == old)
                            {
                                write(&o.outlets).retain(|x| x.session != p.session);
                            }
                            bind_slot(p, slot, &t);
                        }
                    }
                    Receiving::All => add_outlet(p, &t),
                }
            }
            call.tracks.push(t);
        }
        self.metrics.media_tracks.inc();
        self.state_changed(room);
        (source, outlets)
    }

    /// Track `source` is gone: its WHEP slots move to the newest remaining track of its kind,
    /// call connections drop it.
    pub(crate) fn unpublish(&self, room: Id, source: u64) {
        {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&room) else { return };
            let Some(at) = call.tracks.iter().position(|t| t.source.id == source) else { return };
            let gone = call.tracks.remove(at);
            self.metrics.media_tracks.dec();
            let Call { tracks, players, .. } = call;
            for p in players.iter_mut() {
                let bound: Vec<usize> = match &mut p.receiving {
                    Receiving::Slots(slots) => slots
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, s)| s.1 == Some(source))
                        .map(|(i, s)| {
                            s.1 = None;
                            i
                        })
                        .collect(),
                    Receiving::All => {
                        if p.session != gone.session {
                            let _ = p.tx.try_send(PeerMsg::RemoveSource(source));
                        }
                        Vec::new()
                    }
                };
                for slot in bound {
                    match tracks.iter().rev().find(|t| t.state.kind == gone.state.kind && t.session != p.session) {
                        Some(t) => bind_slot(p, slot, t),
                        None => {
                            let _ = p.tx.try_send(PeerMsg::Attach { slot, source: None });
                        }
                    }
                }
            }
        }
        self.state_changed(room);
    }

    /// Connection `id` has ended: forget it everywhere.
    pub(crate) fn ended(&self, id: Id) {
        let Some(entry) = lock(&self.sessions).remove(&id) else { return };
        self.metrics.media_sessions.dec();
        write(&self.routes).remove(&entry.ufrag, id);
        let room = entry.info.room;
        let sources: Vec<u64> = {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&room) else { return };
            call.sessions.retain(|s| *s != id);
            call.players.retain(|p| p.session != id);
            call.levels.remove(&id);
            call.spatial.remove(&id);
            call.labels.retain(|(s, _), _| *s != id);
            call.moderator_muted.retain(|(s, _), _| *s != id);
            for t in &call.tracks {
                write(&t.outlets).retain(|o| o.session != id);
            }
            call.tracks.iter().filter(|t| t.session == id).map(|t| t.source.id).collect()
        };
        for s in sources {
            self.unpublish(room, s);
        }
        {
            let mut calls = lock(&self.calls);
            if calls.get(&room).is_some_and(|c| c.sessions.is_empty() && !c.locked && c.recorder.is_none()) {
                calls.remove(&room);
            }
        }
        self.state_changed(room);
    }

    /// A publisher's loudest recent audio level (0–127); the state goes out when the active
    /// speaker changes.
    pub(crate) fn audio_level(&self, room: Id, session: Id, level: u8) {
        let changed = {
            let mut calls = lock(&self.calls);
            let Some(call) = calls.get_mut(&room) else { return };
            let before = speaker(&call.levels);
            call.levels.insert(session, level);
            speaker(&call.levels) != before
        };
        if changed {
            self.state_changed(room);
        }
    }

    pub(super) fn snapshot(&self, room: Id) -> CallState {
        let sessions: Vec<SessionInfo> = {
            let s = lock(&self.sessions);
            s.values().filter(|e| e.info.room == room).map(|e| e.info.clone()).collect()
        };
        let calls = lock(&self.calls);
        let Some(call) = calls.get(&room) else {
            return CallState { participants: Vec::new(), active_speaker: None, locked: false, recording: None };
        };
        let mut by_id: BTreeMap<Id, ParticipantState> = BTreeMap::new();
        for s in sessions {
            by_id.insert(
                s.id,
                ParticipantState {
                    connection: s.id,
                    user: s.user,
                    direction: s.direction,
                    tracks: Vec::new(),
                    speaking: call.levels.get(&s.id).is_some_and(|l| *l >= SPEAKING),
                    spatial: call.spatial.get(&s.id).cloned().unwrap_or(serde_json::Value::Null),
                },
            );
        }
        for t in &call.tracks {
            if let Some(p) = by_id.get_mut(&t.session) {
                p.tracks.push(t.state.clone());
            }
        }
        CallState {
            participants: by_id.into_values().collect(),
            active_speaker: speaker(&call.levels),
            locked: call.locked,
            recording: call.recorder.as_ref().map(|r| r.id),
        }
    }

    /// Hands the call's state to the sink if it changed.
    pub(crate) fn state_changed(&self, room: Id) {
        let state = self.snapshot(room);
        let org = {
            let mut calls = lock(&self.calls);
            let org = calls.get(&room).and_then(|c| c.org);
            if let Some(c) = calls.get_mut(&room) {
                if c.last_state.as_ref() == Some(&state) {
                    return;
                }
                c.last_state = Some(state.clone());
            }
            org
        };
        let sink = self.state_sink.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let (Some(sink), Some(org)) = (sink, org) {
            sink(org, room, state);
        }
    }
}

/// The audio level (0–127, louder higher; 127 minus the -dBov of RFC 6464) that counts as
/// speaking: about -40 dBov, above room noise and below a voice.
const SPEAKING: u8 = 87;

/// The connection speaking: the loudest at or above `SPEAKING`.
fn speaker(levels: &HashMap<Id, u8>) -> Option<Id> {
    levels
        .iter()
        .filter(|(_, l)| **l >= SPEAKING)
        .max_by_key(|(id, l)| (**l, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loudest_connection_at_speaking_level_speaks() {
        let (a, b, c) = (Id::new(), Id::new(), Id::new());
        assert_eq!(speaker(&HashMap::new()), None);
        assert_eq!(speaker(&HashMap::from([(a, SPEAKING - 1)])), None, "room noise is nobody speaking");
        assert_eq!(speaker(&HashMap::from([(a, SPEAKING), (b, 100), (c, 90)])), Some(b));
        // A tie goes to the same connection every time (the lower id).
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        assert_eq!(speaker(&HashMap::from([(lo, 100), (hi, 100)])), Some(lo));
    }
}
