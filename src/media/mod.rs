//! Media networking for calls in rooms. Today: the built-in TURN server (`turn`), so clients
//! whose networks block direct media can relay through this box.

pub mod turn;
