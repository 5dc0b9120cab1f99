//! Media for calls in rooms: the media relay (`sfu`), which forwards voice, video and screen
//! tracks between connections on one UDP port, and the built-in TURN server (`turn`), so
//! clients whose networks block direct media can relay through this box.

pub mod sfu;
pub mod turn;
