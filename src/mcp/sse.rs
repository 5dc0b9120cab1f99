//! The HTTP+SSE transport of MCP's 2024-11-05 revision, for servers that predate Streamable
//! HTTP (the SDK no longer speaks it): a `GET` opens an event stream whose first event,
//! `endpoint`, names where to `POST` the client's messages; the server's messages come back as
//! `message` events on the stream.
//!
//! Used as the specification's backwards-compatibility rule says: when a Streamable HTTP
//! `initialize` fails, a `GET` of the same URL that answers an event stream is the old
//! transport. The endpoint must be on the stream's own origin; every message is held to
//! `MESSAGE_BYTES_MAX`, and the stream's lines too, so a server cannot grow memory without bound.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream, StreamExt};
use reqwest_mcp::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};

/// The longest message (and event-stream line) taken, in bytes.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SseError(pub String);

pub type SseSink = Pin<Box<dyn Sink<TxJsonRpcMessage<RoleClient>, Error = SseError> + Send>>;
pub type SseStream = Pin<Box<dyn Stream<Item = RxJsonRpcMessage<RoleClient>> + Send>>;

/// One event of an event stream.
#[derive(Debug, Default, PartialEq, Eq)]
struct Event {
    kind: String,
    data: String,
}

/// Event-stream parsing (the WHATWG rules: `event:` and `data:` fields, a blank line ends an
/// event, lines starting with `:` are comments), with a cap on a line's and an event's length.
#[derive(Default)]
struct Parser {
    buf: BytesMut,
    event: Event,
    has_data: bool,
}

impl Parser {
    /// Takes `chunk`; the events it completes.
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
            let line = self.buf.split_to(at + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| SseError("the event stream is not UTF-8".into()))?;
            if line.is_empty() {
                if self.has_data || !self.event.kind.is_empty() {
                    let mut e = std::mem::take(&mut self.event);
                    if e.kind.is_empty() {
                        e.kind = "message".into();
                    }
                    out.push(e);
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => value.clone_into(&mut self.event.kind),
                "data" => {
                    if self.has_data {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
            if self.event.data.len() > MESSAGE_BYTES_MAX {
                return Err(SseError(format!("an event is over {MESSAGE_BYTES_MAX} bytes")));
            }
        }
        if self.buf.len() > MESSAGE_BYTES_MAX {
            return Err(SseError(format!("a line is over {MESSAGE_BYTES_MAX} bytes")));
        }
        Ok(out)
    }
}

/// Opens the old transport at `url` if the server speaks it: `Ok(None)` when the `GET` answers
/// anything but an event stream.
pub async fn open(
    client: reqwest_mcp::Client,
    url: &str,
    header: Option<(HeaderName, HeaderValue)>,
) -> Result<Option<(SseSink, SseStream)>, SseError> {
    let base = reqwest_mcp::Url::parse(url).map_err(|e| SseError(e.to_string()))?;
    let mut get = client.get(base.clone()).header(ACCEPT, "text/event-stream");
    if let Some((name, value)) = &header {
        get = get.header(name.clone(), value.clone());
    }
    let resp = get.send().await.map_err(|e| SseError(e.to_string()))?;
    let is_stream = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !resp.status().is_success() || !is_stream {
        return Ok(None);
    }
    let mut bytes = resp.bytes_stream();
    let mut parser = Parser::default();
    let mut pending = std::collections::VecDeque::new();
    // The first event names the endpoint.
    let endpoint = loop {
        if let Some(e) = pending.pop_front() {
            let e: Event = e;
            if e.kind == "endpoint" {
                break e.data;
            }
            continue;
        }
        match bytes.next().await {
            Some(Ok(chunk)) => pending.extend(parser.feed(&chunk)?),
            Some(Err(e)) => return Err(SseError(e.to_string())),
            None => return Err(SseError("the event stream ended before naming its endpoint".into())),
        }
    };
    let endpoint = base.join(endpoint.trim()).map_err(|e| SseError(format!("the endpoint: {e}")))?;
    if endpoint.origin() != base.origin() {
        return Err(SseError("the endpoint is not on the event stream's origin".into()));
    }
    let messages =
        futures_util::stream::unfold((bytes, parser, pending), |(mut bytes, mut parser, mut pending)| async move {
            loop {
                while let Some(e) = pending.pop_front() {
                    let e: Event = e;
                    if e.kind != "message" {
                        continue;
                    }
                    match serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(&e.data) {
                        Ok(m) => return Some((m, (bytes, parser, pending))),
                        Err(err) => tracing::debug!(error = %err, "an MCP server sent a message that is not one"),
                    }
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => match parser.feed(&chunk) {
                        Ok(events) => pending.extend(events),
                        Err(err) => {
                            tracing::debug!(error = %err, "an MCP server's event stream is refused");
                            return None;
                        }
                    },
                    Some(Err(_)) | None => return None,
                }
            }
        });
    let sink =
        futures_util::sink::unfold((client, endpoint, header), |(client, endpoint, header), message| async move {
            let body: Bytes = serde_json::to_vec(&message).map_err(|e| SseError(e.to_string()))?.into();
            let mut post = client.post(endpoint.clone()).header(CONTENT_TYPE, "application/json").body(body);
            if let Some((name, value)) = &header {
                post = post.header(name.clone(), value.clone());
            }
            let resp = post.send().await.map_err(|e| SseError(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(SseError(format!("the server answered {} to a message", resp.status())));
            }
            Ok((client, endpoint, header))
        });
    Ok(Some((Box::pin(sink), Box::pin(messages))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_lines() {
        let mut p = Parser::default();
        assert!(p.feed(b"event: endpoint\r\ndata: /message?sess").expect("fine").is_empty());
        let got = p.feed(b"ionId=1\r\n\r\n: a comment\ndata: {\"a\":\ndata: 1}\n\n").expect("fine");
        assert_eq!(
            got,
            [
                Event { kind: "endpoint".into(), data: "/message?sessionId=1".into() },
                Event { kind: "message".into(), data: "{\"a\":\n1}".into() },
            ]
        );
        let long = vec![b'x'; MESSAGE_BYTES_MAX + 1];
        assert!(Parser::default().feed(&long).is_err());
    }
}
