//! JSON answers written straight from serde (`Rendered<T>`, documented with `T`'s schema), and
//! a bounded cache of rendered pages that the event bus's topic generations keep current.
//!
//! poem-openapi's `Json<T>` builds a `serde_json::Value` tree and then writes it; for a page
//! of twenty messages that is most of the request's work. `Rendered` writes the bytes once,
//! and `PageCache` keeps them while nothing on the page's topic has been published since.
//! Whoever may see the page is still checked on every request: the cache holds content,
//! never decisions.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;

use bytes::Bytes;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;

/// An answer of `T` with status `STATUS` (200 unless said), already encoded.
pub struct Rendered<T, const STATUS: u16 = 200> {
    bytes: Bytes,
    _of: PhantomData<fn() -> T>,
}

impl<T: serde::Serialize, const STATUS: u16> Rendered<T, STATUS> {
    pub fn of(value: &T) -> Self {
        Self::from_bytes(Bytes::from(serde_json::to_vec(value).expect("wire types serialize")))
    }
}

impl<T, const STATUS: u16> Rendered<T, STATUS> {
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self { bytes, _of: PhantomData }
    }

    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

impl<T: Type, const STATUS: u16> Payload for Rendered<T, STATUS> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send, const STATUS: u16> IntoResponse for Rendered<T, STATUS> {
    fn into_response(self) -> Response {
        Response::builder()
            .status(StatusCode::from_u16(STATUS).unwrap_or(StatusCode::OK))
            .content_type("application/json; charset=utf-8")
            .body(self.bytes)
    }
}

impl<T: Type, const STATUS: u16> ApiResponse for Rendered<T, STATUS> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(STATUS),
                status_range: None,
                content: vec![MetaMediaType { content_type: Self::CONTENT_TYPE, schema: Self::schema_ref() }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// Pages kept at most; a full cache starts over (hot pages come back at once).
const PAGES_MAX: usize = 4096;
/// Bytes kept at most.
const BYTES_MAX: usize = 64 << 20;

/// Rendered pages by key, each valid while its topic generation stays what it was when the
/// page was read.
pub struct PageCache<K> {
    inner: Mutex<Pages<K>>,
}

struct Pages<K> {
    map: HashMap<K, (u64, Bytes)>,
    bytes: usize,
}

impl<K: std::hash::Hash + Eq> Default for PageCache<K> {
    fn default() -> Self {
        Self { inner: Mutex::new(Pages { map: HashMap::new(), bytes: 0 }) }
    }
}

impl<K: std::hash::Hash + Eq> PageCache<K> {
    /// The page for `key` if it was rendered at `generation`.
    pub fn get(&self, key: &K, generation: u64) -> Option<Bytes> {
        let pages = self.inner.lock().ok()?;
        pages.map.get(key).filter(|(g, _)| *g == generation).map(|(_, b)| b.clone())
    }

    /// Keeps `page`, read at `generation` (taken before the read).
    pub fn put(&self, key: K, generation: u64, page: Bytes) {
        let Ok(mut pages) = self.inner.lock() else { return };
        if pages.map.len() >= PAGES_MAX || pages.bytes + page.len() > BYTES_MAX {
            pages.map.clear();
            pages.bytes = 0;
        }
        pages.bytes += page.len();
        if let Some((_, old)) = pages.map.insert(key, (generation, page)) {
            pages.bytes -= old.len();
        }
    }
}
