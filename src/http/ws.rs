//! The WebSocket protocol (RFC 6455), server side: the opening handshake's answer and the framing
//! over the upgraded connection.
//!
//! Written for sockets that mostly idle. Nothing is buffered between frames: bytes are read onto
//! the stack and only a frame still arriving is kept on the heap; written frames are held only
//! until they are flushed; one value owns both directions, so there is no lock between a reading
//! and a writing half. A general-purpose library keeps its read and write buffers and the shared
//! halves for a socket's whole life, about 1.9 KB an idle socket here.
//!
//! No extension is offered (so every reserved bit is refused), client frames must be masked,
//! and a message is bounded before any of it is buffered.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Body, FromRequest, IntoResponse, Request, RequestBody, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::problem::Problem;

/// Close codes (RFC 6455 §7.4.1) this module closes with on its own.
pub mod code {
    /// The client broke the framing.
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8, or a close reason that is not.
    pub const INVALID_DATA: u16 = 1007;
    /// A message larger than the socket takes.
    pub const TOO_BIG: u16 = 1009;
}

/// A whole message from the client, or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    /// Answered with a pong already (it goes out with the next write, or as soon as it can).
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The client's close frame, with its code and reason if it gave one. Our answer is queued
    /// like a pong's; nothing more is read after it.
    Close(Option<(u16, String)>),
}

/// Why reading from a socket failed.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The client broke the protocol: close with this code and reason, and read no more.
    Protocol(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The 7-bit lengths that say a 16-bit or a 64-bit length follows.
const LEN_16: u8 = 0x7E;
const LEN_64: u8 = 0x7F;

/// Bytes read at a time onto the stack when no frame is in flight.
const READ_CHUNK: usize = 2048;
/// Queued frames past this many bytes are written out before more are queued.
const WRITE_CHUNK: usize = 64 * 1024;
/// Close reasons are at most 123 bytes (a control frame's 125 less the code).
const REASON_MAX: usize = 123;

/// A frame's header: what it is and how long it runs.
#[derive(Debug)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// The header's own bytes.
    size: usize,
    /// The payload's bytes.
    len: usize,
}

fn broke(reason: &'static str) -> ReadError {
    ReadError::Protocol(code::PROTOCOL, reason)
}

/// The header at the start of `buf`, or `None` until enough of it is there. A payload longer
/// than `max` is refused here, before any of it is buffered.
fn header(buf: &[u8], max: usize) -> Result<Option<Header>, ReadError> {
    let [b0, b1, rest @ ..] = buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(broke("reserved bits set: no extension was agreed"));
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(broke("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(broke("client frames must be masked"));
    }
    let (len, rest, size) = match b1 & 0x7F {
        LEN_16 => {
            let [a, b, rest @ ..] = rest else { return Ok(None) };
            (u64::from(u16::from_be_bytes([*a, *b])), rest, 4)
        }
        LEN_64 => {
            let Some((len, rest)) = rest.split_first_chunk::<8>() else { return Ok(None) };
            (u64::from_be_bytes(*len), rest, 10)
        }
        n => (u64::from(n), rest, 2),
    };
    if opcode >= CLOSE && (!fin || len > 125) {
        return Err(broke("a control frame must be whole and at most 125 bytes"));
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(ReadError::Protocol(code::TOO_BIG, "message too large"));
    }
    let Some((mask, _)) = rest.split_first_chunk::<4>() else { return Ok(None) };
    Ok(Some(Header { fin, opcode, mask: *mask, size: size + 4, len }))
}

/// Unmasks (or masks) `payload` with `mask`, four bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// A close frame's payload: nothing, or a code the client may send and a UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<Option<(u16, String)>, ReadError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() { Ok(None) } else { Err(broke("a close frame's code is two bytes")) };
    };
    let code = u16::from_be_bytes(*code);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(broke("a close code a client may not send"));
    }
    let reason =
        std::str::from_utf8(reason).map_err(|_| ReadError::Protocol(code::INVALID_DATA, "close reason not UTF-8"))?;
    Ok(Some((code, reason.to_owned())))
}

/// One WebSocket, both directions.
pub struct WebSocket<S = poem::Upgraded> {
    io: S,
    /// The bytes of frames received and not yet taken, from the first byte of a frame;
    /// unallocated between frames.
    input: Vec<u8>,
    /// A fragmented message so far: whether it is text, and its bytes.
    message: Option<(bool, Vec<u8>)>,
    /// Frames queued and not yet written; unallocated once they are.
    out: Vec<u8>,
    /// How much of `out` is written.
    written: usize,
    /// The largest message taken, whole or in fragments.
    max: usize,
    /// The client's close frame came: nothing more is read.
    closed_in: bool,
    /// Our close frame is queued: nothing more is written.
    closed_out: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// A socket over `io`, taking messages of at most `max` bytes.
    pub fn new(io: S, max: usize) -> Self {
        Self {
            io,
            input: Vec::new(),
            message: None,
            out: Vec::new(),
            written: 0,
            max,
            closed_in: false,
            closed_out: false,
        }
    }

    /// The next message; `None` once the client closed or is gone. Cancel-safe: nothing read is
    /// lost when the future is dropped.
    pub fn recv(&mut self) -> impl Future<Output = Option<Result<Message, ReadError>>> + '_ {
        poll_fn(|cx| self.poll_next(cx))
    }

    /// Polls for the next message.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, ReadError>>> {
        if self.closed_in {
            return Poll::Ready(None);
        }
        loop {
            match self.take_message() {
                Ok(Some(m)) => {
                    // A pong or the close answer it queued goes out now if the socket takes it.
                    if !self.out.is_empty() {
                        let _ = self.poll_write_out(cx);
                    }
                    return Poll::Ready(Some(Ok(m)));
                }
                Ok(None) => {}
                Err(e) => {
                    self.closed_in = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let read = match ready!(self.poll_read(cx)) {
                Ok(n) => n,
                Err(e) => {
                    self.closed_in = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            if read == 0 {
                // Gone without a closing handshake (mid-frame or not): nothing more to read.
                self.closed_in = true;
                return Poll::Ready(None);
            }
        }
    }

    /// Reads what the socket has: onto the stack when no frame is in flight (so an idle socket
    /// holds no buffer), else on to the frame, reserving what it still lacks.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.input.is_empty() {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            self.input.extend_from_slice(buf.filled());
            return Poll::Ready(Ok(buf.filled().len()));
        }
        // A header that is all there says how much more the frame needs; `take_message` has
        // refused a frame over the bound already.
        let lacking = match header(&self.input, self.max) {
            Ok(Some(h)) => (h.size + h.len).saturating_sub(self.input.len()),
            _ => 0,
        };
        self.input.reserve(lacking.max(READ_CHUNK));
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.input)
    }

    /// Takes the frames at the start of `input` while they are whole, until one completes a
    /// message.
    fn take_message(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            let Some(h) = header(&self.input, self.max)? else { return Ok(None) };
            let end = h.size + h.len;
            if self.input.len() < end {
                return Ok(None);
            }
            let mut payload = if self.input.len() == end {
                // The usual case: the frame is all that was read; its bytes become the payload.
                let mut p = std::mem::take(&mut self.input);
                p.drain(..h.size);
                p
            } else {
                let p = self.input[h.size..end].to_vec();
                self.input.drain(..end);
                p
            };
            unmask(&mut payload, h.mask);
            if let Some(m) = self.on_frame(h.fin, h.opcode, payload)? {
                if self.input.is_empty() {
                    self.input = Vec::new();
                }
                return Ok(Some(m));
            }
        }
    }

    /// What a whole frame adds: a message, or a fragment of one.
    fn on_frame(&mut self, fin: bool, opcode: u8, payload: Vec<u8>) -> Result<Option<Message>, ReadError> {
        match opcode {
            TEXT | BINARY => {
                if self.message.is_some() {
                    return Err(broke("a new message began before the last one ended"));
                }
                if fin {
                    return whole(opcode == TEXT, payload).map(Some);
                }
                self.message = Some((opcode == TEXT, payload));
                Ok(None)
            }
            CONTINUATION => {
                let Some((text, mut so_far)) = self.message.take() else {
                    return Err(broke("a continuation frame with no message to continue"));
                };
                if so_far.len() + payload.len() > self.max {
                    return Err(ReadError::Protocol(code::TOO_BIG, "message too large"));
                }
                so_far.extend_from_slice(&payload);
                if fin {
                    return whole(text, so_far).map(Some);
                }
                self.message = Some((text, so_far));
                Ok(None)
            }
            PING => {
                if !self.closed_out {
                    self.put_frame(PONG, &payload);
                }
                Ok(Some(Message::Ping(payload)))
            }
            PONG => Ok(Some(Message::Pong(payload))),
            _ => {
                let close = close_payload(&payload)?;
                self.closed_in = true;
                if !self.closed_out {
                    // The answer echoes the client's code (RFC 6455 §5.5.1).
                    let answer = close.as_ref().map(|(code, _)| code.to_be_bytes());
                    self.put_frame(CLOSE, answer.as_ref().map_or(&[][..], |c| &c[..]));
                    self.closed_out = true;
                }
                Ok(Some(Message::Close(close)))
            }
        }
    }

    /// Queues a text message; what is queued is written out first once it passes 64 KiB.
    pub async fn feed_text(&mut self, text: &str) -> io::Result<()> {
        self.feed(TEXT, text.as_bytes()).await
    }

    /// Queues a binary message, like [`Self::feed_text`].
    pub async fn feed_binary(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.feed(BINARY, bytes).await
    }

    /// Sends a text message and flushes.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.feed_text(text).await?;
        self.flush().await
    }

    /// Sends a ping and flushes.
    pub async fn ping(&mut self) -> io::Result<()> {
        self.feed(PING, &[]).await?;
        self.flush().await
    }

    /// Sends our close frame (the reason cut to 123 bytes) and flushes; nothing more is written
    /// after it. Does nothing if it was sent already (or answered the client's).
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        if self.closed_out {
            return self.flush().await;
        }
        let mut cut = reason.len().min(REASON_MAX);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = Vec::with_capacity(2 + cut);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        self.feed(CLOSE, &payload).await?;
        self.closed_out = true;
        self.flush().await
    }

    /// Writes what is queued and flushes the connection. Cancel-safe: a flush that is dropped
    /// and called again goes on from where it was.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| {
            ready!(self.poll_write_out(cx))?;
            Pin::new(&mut self.io).poll_flush(cx)
        })
        .await
    }

    /// Flushes and shuts the connection's write side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await
    }

    async fn feed(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        if self.closed_out {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the socket is closing"));
        }
        if self.out.len() + payload.len() > WRITE_CHUNK {
            poll_fn(|cx| self.poll_write_out(cx)).await?;
        }
        self.put_frame(opcode, payload);
        Ok(())
    }

    /// Appends a whole, unmasked frame to `out`.
    fn put_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.out.reserve(10 + payload.len());
        put_header(&mut self.out, 0x80 | opcode, 0, payload.len());
        self.out.extend_from_slice(payload);
    }

    /// Writes `out` until it is all written, then lets its memory go.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// Appends a frame's first byte `b0`, then its payload length `len` in the shortest form with
/// the mask bit `mask` (0x80 or 0) set on it.
fn put_header(out: &mut Vec<u8>, b0: u8, mask: u8, len: usize) {
    out.push(b0);
    match len {
        n if n < 126 => out.push(mask | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask | LEN_16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask | LEN_64);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// Reads `bytes` as a client's frames arriving all at once, taking messages of at most `max`
/// bytes, to the end or to the first refusal: how many messages it took, and whether it was
/// refused. What the `websocket_frames` fuzz target drives.
pub fn read_received(bytes: &[u8], max: usize) -> (usize, bool) {
    let mut ws = WebSocket::new(tokio::io::empty(), max);
    ws.input = bytes.to_vec();
    let mut taken = 0;
    loop {
        match ws.take_message() {
            Ok(Some(Message::Close(_))) => return (taken + 1, false),
            Ok(Some(_)) => taken += 1,
            Ok(None) => return (taken, false),
            Err(_) => return (taken, true),
        }
    }
}

/// A whole message's bytes as what it is.
fn whole(text: bool, bytes: Vec<u8>) -> Result<Message, ReadError> {
    if !text {
        return Ok(Message::Binary(bytes));
    }
    String::from_utf8(bytes).map(Message::Text).map_err(|_| ReadError::Protocol(code::INVALID_DATA, "text not UTF-8"))
}

/// The `Sec-WebSocket-Accept` answer to a client's key (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn lists(value: Option<&HeaderValue>, token: &str) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A request to open a WebSocket, checked (RFC 6455 §4.2.1): a GET asking to upgrade to
/// `websocket`, version 13, with a key.
pub struct Upgrade {
    key: HeaderValue,
    offered: Option<String>,
    handover: poem::OnUpgrade,
}

impl<'a> FromRequest<'a> for Upgrade {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        let h = req.headers();
        let asks = req.method() == Method::GET
            && lists(h.get(header::UPGRADE), "websocket")
            && lists(h.get(header::CONNECTION), "upgrade");
        if !asks {
            let p = Problem::new(
                StatusCode::BAD_REQUEST,
                "not_a_websocket",
                "this is a WebSocket: GET with Upgrade: websocket",
            );
            return Err(poem::Error::from_response(p.into_response()));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
            let p = Problem::new(StatusCode::UPGRADE_REQUIRED, "websocket_version", "WebSocket version 13 only");
            let mut resp = p.into_response();
            resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return Err(poem::Error::from_response(resp));
        }
        let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).filter(|k| k.len() == 24).cloned() else {
            let p =
                Problem::new(StatusCode::BAD_REQUEST, "websocket_key", "Sec-WebSocket-Key must be 16 bytes in base64");
            return Err(poem::Error::from_response(p.into_response()));
        };
        let offered = h
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let handover = req.take_upgrade().map_err(|_| {
            let p = Problem::new(StatusCode::BAD_REQUEST, "not_a_websocket", "this connection cannot be upgraded");
            poem::Error::from_response(p.into_response())
        })?;
        Ok(Self { key, offered: (!offered.is_empty()).then_some(offered), handover })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` answer, choosing the first of the client's subprotocols
    /// that is in `protocols`; `session` runs on the socket, in a task of its own, once the
    /// connection is handed over. Messages over `max` bytes close the socket (1009).
    pub fn accept<F, Fut>(self, protocols: &[&str], max: usize, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let chosen = self
            .offered
            .as_deref()
            .and_then(|o| o.split(',').map(str::trim).find(|p| protocols.contains(p)))
            .and_then(|p| HeaderValue::from_str(p).ok());
        let mut resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept_key(self.key.as_bytes()));
        if let Some(p) = chosen {
            resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        let handover = self.handover;
        tokio::spawn(async move {
            if let Ok(io) = handover.await {
                session(WebSocket::new(io, max)).await;
            }
        });
        resp.body(Body::empty())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A frame as a client sends it (masked).
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        put_header(&mut f, if fin { 0x80 } else { 0 } | opcode, 0x80, payload.len());
        f.extend_from_slice(&MASK);
        let mut p = payload.to_vec();
        unmask(&mut p, MASK);
        f.extend_from_slice(&p);
        f
    }

    fn pair(max: usize) -> (WebSocket<DuplexStream>, DuplexStream) {
        let (a, b) = duplex(1 << 20);
        (WebSocket::new(a, max), b)
    }

    async fn next(ws: &mut WebSocket<DuplexStream>) -> Message {
        match ws.recv().await {
            Some(Ok(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn refusal(ws: &mut WebSocket<DuplexStream>) -> (u16, &'static str) {
        match ws.recv().await {
            Some(Err(ReadError::Protocol(code, why))) => (code, why),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_accept_key_is_the_rfcs_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn masking_twice_gives_the_bytes_back_at_every_length() {
        for n in 0..20 {
            let bytes: Vec<u8> = (0..n).map(|i| i as u8 * 7).collect();
            let mut b = bytes.clone();
            unmask(&mut b, MASK);
            if n > 0 {
                assert_ne!(b, bytes);
            }
            unmask(&mut b, MASK);
            assert_eq!(b, bytes);
        }
    }

    #[tokio::test]
    async fn messages_of_every_length_class_arrive_whole_and_idle_holds_no_buffer() {
        let (mut ws, mut client) = pair(1 << 20);
        let long = "x".repeat(70_000);
        for text in ["", "hello", &"y".repeat(300), &long] {
            client.write_all(&client_frame(true, TEXT, text.as_bytes())).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::Text(text.to_owned()));
            assert_eq!(ws.input.capacity(), 0, "nothing held between frames");
        }
        client.write_all(&client_frame(true, BINARY, &[0, 1, 2])).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::Binary(vec![0, 1, 2]));
    }

    #[tokio::test]
    async fn frames_split_anywhere_or_run_together_read_the_same() {
        let (mut ws, mut client) = pair(1 << 20);
        let mut bytes = Vec::new();
        for i in 0..5 {
            bytes.extend(client_frame(true, TEXT, format!("message {i} {}", "z".repeat(i * 60)).as_bytes()));
        }
        // One byte at a time.
        let writer = {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                for b in bytes {
                    client.write_all(&[b]).await.unwrap();
                    client.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
                client
            })
        };
        for i in 0..5 {
            assert_eq!(next(&mut ws).await, Message::Text(format!("message {i} {}", "z".repeat(i * 60))));
        }
        let mut client = writer.await.unwrap();
        // All at once.
        client.write_all(&bytes).await.unwrap();
        for i in 0..5 {
            assert_eq!(next(&mut ws).await, Message::Text(format!("message {i} {}", "z".repeat(i * 60))));
        }
        assert_eq!(ws.input.capacity(), 0);
    }

    #[tokio::test]
    async fn fragments_join_with_control_frames_between_and_pings_are_answered() {
        let (mut ws, mut client) = pair(1 << 20);
        let mut bytes = client_frame(false, TEXT, "héllo, ".as_bytes());
        bytes.extend(client_frame(true, PING, b"are you there"));
        bytes.extend(client_frame(false, CONTINUATION, "wor".as_bytes()));
        bytes.extend(client_frame(true, CONTINUATION, "ld".as_bytes()));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::Ping(b"are you there".to_vec()));
        assert_eq!(next(&mut ws).await, Message::Text("héllo, world".to_owned()));
        // The pong went out unmasked, with the ping's payload.
        let mut pong = [0u8; 15];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong[..2], &[0x80 | PONG, 13]);
        assert_eq!(&pong[2..], b"are you there");
    }

    #[tokio::test]
    async fn a_client_close_is_echoed_and_ends_reading() {
        let (mut ws, mut client) = pair(1024);
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        client.write_all(&client_frame(true, CLOSE, &payload)).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::Close(Some((4000, "bye".to_owned()))));
        assert!(ws.recv().await.is_none());
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [0x80 | CLOSE, 2, 0x0f, 0xa0]);
        // Nothing more may be written after the close.
        assert!(ws.send_text("late").await.is_err());
    }

    #[tokio::test]
    async fn what_breaks_the_protocol_is_refused_with_its_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], code::PROTOCOL),           // not masked
            (vec![0xC1, 0x80, 0, 0, 0, 0], code::PROTOCOL),           // RSV1 without an extension
            (client_frame(true, 0x3, b""), code::PROTOCOL),           // reserved opcode
            (client_frame(false, PING, b""), code::PROTOCOL),         // a fragmented control frame
            (client_frame(true, PING, &[0; 126]), code::PROTOCOL),    // a control frame too long
            (client_frame(true, CONTINUATION, b"x"), code::PROTOCOL), // nothing to continue
            (client_frame(true, TEXT, &[0xff, 0xfe]), code::INVALID_DATA), // not UTF-8
            (client_frame(true, CLOSE, &[3]), code::PROTOCOL),        // a one-byte close
            (client_frame(true, CLOSE, &1005u16.to_be_bytes()), code::PROTOCOL), // a reserved code
            (client_frame(true, BINARY, &[0; 2000]), code::TOO_BIG),
            ([client_frame(false, TEXT, b"a"), client_frame(true, TEXT, b"b")].concat(), code::PROTOCOL),
        ];
        for (bytes, expected) in cases {
            let (mut ws, mut client) = pair(1024);
            client.write_all(&bytes).await.unwrap();
            assert_eq!(refusal(&mut ws).await.0, expected, "{bytes:02x?}");
            assert!(ws.recv().await.is_none(), "nothing is read after a refusal");
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_from_its_header_alone() {
        let (mut ws, mut client) = pair(1024);
        // Only the header of a 1 GiB frame: refused without waiting for (or buffering) its bytes.
        let mut head = vec![0x82, 0xFF];
        head.extend_from_slice(&(1u64 << 30).to_be_bytes());
        head.extend_from_slice(&MASK);
        client.write_all(&head).await.unwrap();
        assert_eq!(refusal(&mut ws).await.0, code::TOO_BIG);
        // Fragments that pass the bound together are refused too.
        let (mut ws, mut client) = pair(1024);
        let mut bytes = client_frame(false, BINARY, &[0; 600]);
        bytes.extend(client_frame(true, CONTINUATION, &[0; 600]));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(refusal(&mut ws).await.0, code::TOO_BIG);
    }

    #[tokio::test]
    async fn written_frames_are_unmasked_with_the_shortest_length_and_no_buffer_stays() {
        let (mut ws, mut client) = pair(1024);
        for n in [0usize, 125, 126, 65_535, 65_536, 200_000] {
            let payload = vec![b'a'; n];
            let text = String::from_utf8(payload.clone()).unwrap();
            let reader = tokio::spawn(async move {
                let mut head = [0u8; 2];
                client.read_exact(&mut head).await.unwrap();
                assert_eq!(head[0], 0x80 | TEXT);
                assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
                let len = match head[1] {
                    126 => u64::from(client.read_u16().await.unwrap()),
                    127 => client.read_u64().await.unwrap(),
                    l => u64::from(l),
                };
                let mut body = vec![0u8; len as usize];
                client.read_exact(&mut body).await.unwrap();
                (client, body)
            });
            ws.send_text(&text).await.unwrap();
            assert_eq!(ws.out.capacity(), 0);
            let (c, body) = reader.await.unwrap();
            client = c;
            assert_eq!(body, payload);
        }
        ws.close(4002, &"é".repeat(100)).await.unwrap();
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [0x80 | CLOSE, 2 + 122], "the reason is cut at a character's boundary");
    }

    #[tokio::test]
    async fn a_client_gone_mid_frame_ends_the_socket() {
        let (mut ws, mut client) = pair(1024);
        let f = client_frame(true, TEXT, b"half of it");
        client.write_all(&f[..8]).await.unwrap();
        drop(client);
        assert!(ws.recv().await.is_none());
    }
}
