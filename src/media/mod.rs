//! Media for calls in rooms: the media relay (`sfu`), which forwards voice, video and screen
//! tracks between connections on one UDP port, and the built-in TURN server (`turn`), so
//! clients whose networks block direct media can relay through this box.

pub mod sfu;
pub mod turn;

use std::net::SocketAddr;

/// Tries at binding port 0 again when TCP cannot have the number UDP was given.
const PORT_PICKS: u32 = 8;

/// Binds UDP on `addr` and, with `tcp`, TCP on the same port number (media over TCP and TURN
/// over TCP share the UDP port). With port 0 the system picks the UDP port, and that number may
/// already be taken for TCP by any outgoing connection: then another is picked, a few times.
/// The TCP listener's outcome is the caller's to judge: `None` when not asked for.
pub(crate) async fn bind_udp_and_tcp(
    addr: SocketAddr,
    tcp: bool,
) -> std::io::Result<(tokio::net::UdpSocket, Option<std::io::Result<tokio::net::TcpListener>>)> {
    let picks = if tcp && addr.port() == 0 { PORT_PICKS } else { 1 };
    let mut pick = 0;
    loop {
        pick += 1;
        let udp = tokio::net::UdpSocket::bind(addr).await?;
        if !tcp {
            return Ok((udp, None));
        }
        match tokio::net::TcpListener::bind(udp.local_addr()?).await {
            Err(_) if pick < picks => {}
            listener => return Ok((udp, Some(listener))),
        }
    }
}
