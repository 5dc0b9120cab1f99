//! `/v1/channels`: channels, members and messages.

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::{Deserialize, Serialize};

use super::auth_api::NoContent;
use super::body::JsonBody;
use super::problem::Problem;
use super::realtime::{PresenceList, presence_list};
use super::rendered::{PageCache, Rendered};
use super::{ApiTags, UserAuth, parse_id, user_ctx};
use crate::app::App;
use crate::auth::Principal;
use crate::domain::DomainError;
use crate::domain::chat::{
    self, Anchor, Attachment, Channel, ChannelKind, Member, Message, MessageChange, NewChannel, NewMessage, Place,
};
use crate::domain::policy::{self, Permission};
use crate::ids::{Id, rfc3339};
use crate::store::stamped::Stamped;

crate::problems!(ChatReadErrors: 400, 401, 403, 404, 422);
crate::problems!(ChatWriteErrors: 400, 401, 403, 404, 409, 413, 415, 422, 507);
crate::problems!(ChannelUpdateErrors: 400, 401, 403, 404, 409, 412, 413, 415, 422, 507);

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[oai(rename = "ChannelKind", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum KindView {
    /// Anyone in the organization reads and may join.
    Public,
    /// Members only.
    Private,
    /// A fixed set of two or more users; the same set always finds the same channel.
    Direct,
}

mirror_enum!(KindView <=> ChannelKind { Public, Private, Direct });

/// A channel.
#[derive(Object, Debug)]
#[oai(rename = "Channel")]
pub struct ChannelView {
    pub id: String,
    pub kind: KindView,
    pub name: Option<String>,
    pub topic: String,
    pub archived: bool,
    pub created_by: String,
    /// The newest message's number.
    pub last_seq: u64,
    /// Whether the caller belongs to it.
    pub member: bool,
    /// Messages after the caller's read position (members only).
    pub unread: Option<u64>,
    pub version: u64,
    pub created_at: String,
}

/// The channel as `me` (their membership, if any) sees it.
fn channel_view(c: Channel, me: Option<&Member>) -> ChannelView {
    let unread = me.map(|m| c.last_seq.saturating_sub(m.read_seq));
    ChannelView {
        id: c.id.to_string(),
        kind: c.kind.into(),
        name: c.name,
        topic: c.topic,
        archived: c.archived,
        created_by: c.created_by.to_string(),
        last_seq: c.last_seq,
        member: me.is_some(),
        unread,
        version: c.version,
        created_at: rfc3339(c.created_at_ms),
    }
}

/// The people who reacted with one emoji.
#[derive(Object, Debug, Serialize)]
#[oai(rename = "Reaction")]
pub struct ReactionView {
    pub emoji: String,
    pub count: u64,
    pub user_ids: Vec<String>,
}

/// An earlier text of an edited message.
#[derive(Object, Debug, Serialize)]
#[oai(rename = "MessageVersion")]
pub struct VersionView {
    pub text: String,
    pub at: String,
}

/// A message. A deleted one keeps its place as a tombstone (`deleted_at` set, no text).
#[derive(Object, Debug, Serialize)]
#[oai(rename = "Message")]
pub struct MessageView {
    pub id: String,
    /// The channel it was posted in (absent for a task's comment).
    pub channel_id: Option<String>,
    /// The task it comments on (absent for a channel's message).
    pub task_id: Option<String>,
    /// Its number in the channel.
    pub seq: u64,
    pub author_id: String,
    pub text: String,
    /// The `seq` of the thread's first message, for a reply.
    pub thread_parent_seq: Option<u64>,
    pub reply_count: u32,
    pub mention_ids: Vec<String>,
    pub reactions: Vec<ReactionView>,
    /// Earlier texts, oldest first.
    pub versions: Vec<VersionView>,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub deleted_at: Option<String>,
    /// Files attached to it.
    pub attachments: Vec<AttachmentView>,
}

/// A file attached to a message.
#[derive(Object, Debug, Serialize)]
#[oai(rename = "Attachment")]
pub struct AttachmentView {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// Where to download it (whoever reads the message may).
    pub content_url: String,
}

pub(super) fn message_view(m: Message) -> MessageView {
    let (channel_id, task_id) = match m.place() {
        Place::Channel(c) => (Some(c.to_string()), None),
        Place::Task(t) => (None, Some(t.to_string())),
    };
    MessageView {
        id: m.id.to_string(),
        channel_id,
        task_id,
        seq: m.seq,
        author_id: m.author.to_string(),
        text: m.text,
        thread_parent_seq: m.thread_parent,
        reply_count: m.reply_count,
        mention_ids: m.mentions.iter().map(ToString::to_string).collect(),
        reactions: m
            .reactions
            .into_iter()
            .map(|(emoji, who)| ReactionView {
                emoji,
                count: who.len() as u64,
                user_ids: who.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        versions: m.versions.into_iter().map(|v| VersionView { text: v.text, at: rfc3339(v.at_ms) }).collect(),
        created_at: rfc3339(m.created_at_ms),
        edited_at: m.edited_at_ms.map(rfc3339),
        deleted_at: m.deleted_at_ms.map(rfc3339),
        attachments: m.attachments.into_iter().map(AttachmentView::from).collect(),
    }
}

impl From<Attachment> for AttachmentView {
    fn from(a: Attachment) -> Self {
        Self {
            content_url: format!("/v1/assets/{}/content", a.id),
            id: a.id.to_string(),
            name: a.name,
            content_type: a.content_type,
            size: a.size,
        }
    }
}

#[derive(Object, Debug)]
#[oai(rename = "ChannelList")]
pub struct ChannelList {
    pub items: Vec<ChannelView>,
}

#[derive(Object, Debug, Serialize)]
#[oai(rename = "MessagePage")]
pub struct MessagePage {
    /// Oldest first.
    pub items: Vec<MessageView>,
}

/// Creates a channel (or finds the direct channel of the same people).
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "CreateChannel", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateChannelBody {
    pub kind: KindView,
    /// Required for public and private channels; none for direct ones.
    pub name: Option<String>,
    pub topic: Option<String>,
    /// The others to add (for a direct channel: everyone else in it).
    pub member_ids: Option<Vec<String>>,
}

/// Posts a message.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "PostMessage", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PostBody {
    /// 1–10,000 characters.
    pub text: String,
    /// Reply in the thread of this message.
    pub thread_parent_id: Option<String>,
    /// Users to notify in their inbox.
    pub mention_ids: Option<Vec<String>>,
    /// Files of the author's own (uploaded first) to attach; the channel's readers may then
    /// download them.
    pub attachment_ids: Option<Vec<String>>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "EditMessage", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    pub text: String,
}

/// Changes a channel's name or topic.
#[derive(Object, Debug, Deserialize)]
#[oai(rename = "UpdateChannel", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannelBody {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub version: Option<u64>,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "AddChannelMember", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct AddMemberBody {
    pub user_id: String,
}

#[derive(Object, Debug, Deserialize)]
#[oai(rename = "MarkRead", deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// Everything up to this message number is read.
    pub seq: u64,
}

#[derive(Object, Debug)]
#[oai(rename = "ReadPosition")]
pub struct ReadView {
    pub unread: u64,
}

#[derive(ApiResponse)]
pub enum ChannelMade {
    /// Made now.
    #[oai(status = 201)]
    Created(Json<ChannelView>),
    /// The direct channel of these people already existed.
    #[oai(status = 200)]
    Existing(Json<ChannelView>),
}

/// A message posted: written straight from serde (`Json` would build a value tree first).
pub type Posted = Rendered<MessageView, 201>;

pub(super) fn ids(v: Option<Vec<String>>, pointer: &str) -> Result<Vec<Id>, DomainError> {
    v.unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, s)| s.parse().map_err(|_| DomainError::invalid(&format!("{pointer}/{i}"), "invalid_id", "not an id")))
        .collect()
}

/// The caller, and the channel in the path with their membership, if they may see it (404
/// before 403).
async fn channel_in_path(
    app: &App,
    auth: &UserAuth,
    channel_id: &str,
) -> Result<(Principal, Channel, Option<Member>), Problem> {
    let p = auth.check(app).await?;
    let (channel, me) = chat::get(&app.store, p.org, p.user, parse_id(channel_id, "channel")?)?;
    p.require(Permission::ChatUse)?;
    Ok((p, channel, me))
}

/// The caller and the id of the channel in the path, as `channel_in_path`.
async fn channel_for(app: &App, auth: &UserAuth, channel_id: &str) -> Result<(Principal, Id), Problem> {
    let (p, channel, _) = channel_in_path(app, auth, channel_id).await?;
    Ok((p, channel.id))
}

/// Applies `c` to a message of `place` as the caller (a channel moderator may act on anyone's).
pub(super) async fn change_message(
    app: &App,
    req: &Request,
    p: &Principal,
    place: Place,
    message: Id,
    c: MessageChange,
) -> Result<Json<MessageView>, DomainError> {
    let moderates = policy::moderates_channels(p.role);
    let m = chat::change(&app.writer, user_ctx(req, p), p.user, moderates, place, message, c).await?;
    Ok(Json(message_view(m)))
}

/// Chat's operations, with the rendered history pages they keep (see `rendered`): one cache per
/// served API, so each server in a process has its own.
pub struct ChatApi {
    history_pages: PageCache<HistoryKey>,
    /// Who was found allowed to read a channel, by (organization, user, channel): kept while
    /// the channel and membership rows that said so stay unchanged.
    readers: Stamped<(Id, Id, Id), ()>,
}

/// Readers remembered at most.
const READERS_MAX: usize = 16_384;

impl Default for ChatApi {
    fn default() -> Self {
        Self { history_pages: PageCache::default(), readers: Stamped::new(READERS_MAX) }
    }
}

#[OpenApi(tag = "ApiTags::Chat")]
#[allow(clippy::too_many_arguments)] // query parameters are arguments by the framework's design
impl ChatApi {
    /// Create a channel
    ///
    /// For `direct`, the channel of exactly these people is found if it exists (200).
    ///
    /// Permission: `channels.create`.
    #[oai(path = "/v1/channels", method = "post", operation_id = "createChannel")]
    async fn create(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        body: JsonBody<CreateChannelBody>,
    ) -> Result<ChannelMade, ChatWriteErrors> {
        let p = auth.require(&app, Permission::ChannelsCreate).await?;
        let b = body.0;
        let new = NewChannel {
            kind: b.kind.into(),
            name: b.name,
            topic: b.topic,
            members: ids(b.member_ids, "/member_ids")?,
        };
        let (ch, me, made) = chat::create(&app.writer, user_ctx(req, &p), p.user, new).await?;
        let v = channel_view(ch, Some(&me));
        Ok(if made { ChannelMade::Created(Json(v)) } else { ChannelMade::Existing(Json(v)) })
    }

    /// List my channels
    ///
    /// Public channels and those I belong to, with my unread counts.
    ///
    /// Permission: `chat.use`.
    #[oai(path = "/v1/channels", method = "get", operation_id = "listChannels")]
    async fn list(&self, app: Data<&App>, auth: UserAuth) -> Result<Json<ChannelList>, ChatReadErrors> {
        let p = auth.require(&app, Permission::ChatUse).await?;
        let items = chat::list(&app.store, p.org, p.user).await?;
        Ok(Json(ChannelList { items: items.into_iter().map(|(c, me)| channel_view(c, me.as_ref())).collect() }))
    }

    /// Get a channel
    ///
    /// Permission: `chat.use`.
    #[oai(path = "/v1/channels/:channel_id", method = "get", operation_id = "getChannel")]
    async fn get(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        channel_id: Path<String>,
    ) -> Result<Json<ChannelView>, ChatReadErrors> {
        let (_, c, me) = channel_in_path(&app, &auth, &channel_id.0).await?;
        Ok(Json(channel_view(c, me.as_ref())))
    }

    /// Join a public channel
    ///
    /// Permission: `chat.use`.
    #[oai(path = "/v1/channels/:channel_id/join", method = "post", operation_id = "joinChannel")]
    async fn join(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
    ) -> Result<NoContent, ChatWriteErrors> {
        let (p, id) = channel_for(&app, &auth, &channel_id.0).await?;
        chat::join(&app.writer, user_ctx(req, &p), p.user, id).await?;
        Ok(NoContent::Done)
    }

    /// Rename a channel or set its topic
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id", method = "patch", operation_id = "updateChannel")]
    async fn update(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        #[oai(name = "If-Match")] if_match: Header<Option<String>>,
        body: JsonBody<UpdateChannelBody>,
    ) -> Result<Json<ChannelView>, ChannelUpdateErrors> {
        let (p, id) = channel_for(&app, &auth, &channel_id.0).await?;
        let b = body.0;
        let version = super::parse_if_match(if_match.0.as_deref())?.or(b.version);
        let (ch, me) = chat::update(&app.writer, user_ctx(req, &p), p.user, id, b.name, b.topic, version).await?;
        Ok(Json(channel_view(ch, me.as_ref())))
    }

    /// Archive a channel
    ///
    /// Its creator or an admin.
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id/archive", method = "post", operation_id = "archiveChannel")]
    async fn archive(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
    ) -> Result<Json<ChannelView>, ChatWriteErrors> {
        let (p, id) = channel_for(&app, &auth, &channel_id.0).await?;
        let (ch, me) =
            chat::archive(&app.writer, user_ctx(req, &p), p.user, policy::moderates_channels(p.role), id).await?;
        Ok(Json(channel_view(ch, me.as_ref())))
    }

    /// Add someone to a channel
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id/members", method = "post", operation_id = "addChannelMember")]
    async fn add_member(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        body: JsonBody<AddMemberBody>,
    ) -> Result<NoContent, ChatWriteErrors> {
        let (p, id) = channel_for(&app, &auth, &channel_id.0).await?;
        // A malformed id names nobody: membership is checked first, then "user not found".
        let target = body.0.user_id.parse().unwrap_or(Id::NIL);
        chat::add_member(&app.writer, user_ctx(req, &p), p.user, id, target).await?;
        Ok(NoContent::Done)
    }

    /// Remove someone from a channel (or leave it)
    ///
    /// Oneself, or anyone by the channel's creator or an admin.
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id/members/:user_id", method = "delete", operation_id = "removeChannelMember")]
    async fn remove_member(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        user_id: Path<String>,
    ) -> Result<NoContent, ChatWriteErrors> {
        let (p, id) = channel_for(&app, &auth, &channel_id.0).await?;
        let target = user_id.0.parse().unwrap_or(Id::NIL);
        chat::remove_member(&app.writer, user_ctx(req, &p), p.user, policy::moderates_channels(p.role), id, target)
            .await?;
        Ok(NoContent::Done)
    }

    /// Post a message
    ///
    /// With an `Idempotency-Key`, posting again with the same key returns the first message
    /// instead of posting twice.
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id/messages", method = "post", operation_id = "postMessage")]
    async fn post(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        #[oai(name = "Idempotency-Key")] idempotency_key: Header<Option<String>>,
        body: JsonBody<PostBody>,
    ) -> Result<Posted, ChatWriteErrors> {
        // The hot path: the writer itself finds the channel (404) and checks membership (403),
        // so no separate read comes first. Every role holds chat.use, so checking it first
        // tells nobody anything about the channel.
        let p = auth.require(&app, Permission::ChatUse).await?;
        let id = parse_id(&channel_id.0, "channel")?;
        let b = body.0;
        let thread_parent = match b.thread_parent_id {
            Some(t) => Some(
                t.parse().map_err(|_| DomainError::invalid("/thread_parent_id", "invalid_id", "not a message id"))?,
            ),
            None => None,
        };
        let new = NewMessage {
            text: b.text,
            thread_parent,
            mentions: ids(b.mention_ids, "/mention_ids")?,
            idempotency_key: idempotency_key.0,
            attachments: ids(b.attachment_ids, "/attachment_ids")?,
        };
        Ok(Rendered::of(&message_view(
            chat::post(&app.writer, user_ctx(req, &p), p.user, Place::Channel(id), new).await?,
        )))
    }

    /// Read history
    ///
    /// The newest messages, or those `before` / `after` a message number, or `around` one;
    /// top-level messages, or with `thread` one thread's replies. Oldest first.
    ///
    /// Permission: `chat.use`.
    #[oai(path = "/v1/channels/:channel_id/messages", method = "get", operation_id = "listMessages")]
    async fn history(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        channel_id: Path<String>,
        before: Query<Option<u64>>,
        after: Query<Option<u64>>,
        around: Query<Option<u64>>,
        /// A thread's first message id: list its replies.
        thread: Query<Option<String>>,
        /// 1–100 (default 20).
        limit: Query<Option<u32>>,
    ) -> Result<Rendered<MessagePage>, ChatReadErrors> {
        // The history read itself finds the channel (404); chat.use is every role's.
        let p = auth.require(&app, Permission::ChatUse).await?;
        let id = parse_id(&channel_id.0, "channel")?;
        let anchor = anchor(before.0, after.0, around.0)?;
        let thread = thread.0.map(|t| parse_id(&t, "message")).transpose()?;
        let limit = history_limit(limit.0)?;
        // Pages are kept rendered while nothing is published on the channel's topic; read the
        // generation before the store, so a page is never newer-labelled than its content.
        let key = HistoryKey { org: p.org, channel: id, anchor: anchor_key(anchor), thread, limit };
        let generation = app.bus.generation(p.org, &format!("channel:{id}"));
        if let Some(page) = self.history_pages.get(&key, generation) {
            // Who may read it is decided afresh every time: from the rows, or from what they said
            // when they were last read, if none of them has been written since.
            let stamp = chat::visibility_stamp(&app.store, p.org, p.user, id);
            if self.readers.get(&(p.org, p.user, id), stamp).is_none() {
                chat::get(&app.store, p.org, p.user, id)?;
                self.readers.put((p.org, p.user, id), stamp, ());
            }
            return Ok(Rendered::from_bytes(page));
        }
        let items =
            chat::history(&app.store, p.org, p.user, Place::Channel(id), anchor, thread, limit as usize).await?;
        let page = Rendered::of(&MessagePage { items: items.into_iter().map(message_view).collect() });
        self.history_pages.put(key, generation, page.bytes());
        Ok(page)
    }

    /// Get a message, with its earlier versions
    ///
    /// Permission: `chat.use`.
    #[oai(path = "/v1/channels/:channel_id/messages/:message_id", method = "get", operation_id = "getMessage")]
    async fn message(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        channel_id: Path<String>,
        message_id: Path<String>,
    ) -> Result<Json<MessageView>, ChatReadErrors> {
        let p = auth.check(&app).await?;
        let id = parse_id(&channel_id.0, "channel")?;
        let m =
            chat::message(&app.store, p.org, p.user, Place::Channel(id), parse_id(&message_id.0, "message")?).await?;
        p.require(Permission::ChatUse)?;
        Ok(Json(message_view(m)))
    }

    /// Edit my message
    ///
    /// The previous text is kept among the message's versions.
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id/messages/:message_id", method = "patch", operation_id = "editMessage")]
    async fn edit(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        message_id: Path<String>,
        body: JsonBody<EditBody>,
    ) -> Result<Json<MessageView>, ChatWriteErrors> {
        change(&app, &auth, req, &channel_id.0, &message_id.0, MessageChange::Edit(body.0.text)).await
    }

    /// Delete a message
    ///
    /// Its author or an admin; a tombstone stays in its place.
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id/messages/:message_id", method = "delete", operation_id = "deleteMessage")]
    async fn delete(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        message_id: Path<String>,
    ) -> Result<Json<MessageView>, ChatWriteErrors> {
        change(&app, &auth, req, &channel_id.0, &message_id.0, MessageChange::Delete).await
    }

    /// React to a message
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(
        path = "/v1/channels/:channel_id/messages/:message_id/reactions/:emoji",
        method = "put",
        operation_id = "addReaction"
    )]
    async fn react(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        message_id: Path<String>,
        emoji: Path<String>,
    ) -> Result<Json<MessageView>, ChatWriteErrors> {
        change(&app, &auth, req, &channel_id.0, &message_id.0, MessageChange::React { emoji: emoji.0, add: true }).await
    }

    /// Take back a reaction
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(
        path = "/v1/channels/:channel_id/messages/:message_id/reactions/:emoji",
        method = "delete",
        operation_id = "removeReaction"
    )]
    async fn unreact(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        message_id: Path<String>,
        emoji: Path<String>,
    ) -> Result<Json<MessageView>, ChatWriteErrors> {
        change(&app, &auth, req, &channel_id.0, &message_id.0, MessageChange::React { emoji: emoji.0, add: false })
            .await
    }

    /// Mark read
    ///
    /// Moves my read position forward (never back); answers what is still unread.
    ///
    /// Permission: `chat.use`. Channel role: `member`.
    #[oai(path = "/v1/channels/:channel_id/read", method = "post", operation_id = "markChannelRead")]
    async fn read(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        req: &Request,
        channel_id: Path<String>,
        body: JsonBody<ReadBody>,
    ) -> Result<Json<ReadView>, ChatWriteErrors> {
        let (p, id) = channel_for(&app, &auth, &channel_id.0).await?;
        let unread = chat::mark_read(&app.writer, user_ctx(req, &p), p.user, id, body.0.seq).await?;
        Ok(Json(ReadView { unread }))
    }

    /// Who is here
    ///
    /// The people with presence in the channel now (set over the realtime socket).
    ///
    /// Permission: `chat.use`.
    #[oai(path = "/v1/channels/:channel_id/presence", method = "get", operation_id = "getChannelPresence")]
    async fn presence(
        &self,
        app: Data<&App>,
        auth: UserAuth,
        channel_id: Path<String>,
    ) -> Result<Json<PresenceList>, ChatReadErrors> {
        let (p, id) = channel_for(&app, &auth, &channel_id.0).await?;
        Ok(Json(presence_list(&app, p.org, &format!("channel:{id}"))))
    }
}

/// What a rendered history page is kept under.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct HistoryKey {
    org: Id,
    channel: Id,
    anchor: (u8, u64),
    thread: Option<Id>,
    limit: u32,
}

fn anchor_key(a: Anchor) -> (u8, u64) {
    match a {
        Anchor::Latest => (0, 0),
        Anchor::Before(s) => (1, s),
        Anchor::After(s) => (2, s),
        Anchor::Around(s) => (3, s),
    }
}

/// Where a history page starts: at most one of `before`, `after`, `around`.
pub(super) fn anchor(before: Option<u64>, after: Option<u64>, around: Option<u64>) -> Result<Anchor, DomainError> {
    match (before, after, around) {
        (None, None, None) => Ok(Anchor::Latest),
        (Some(s), None, None) => Ok(Anchor::Before(s)),
        (None, Some(s), None) => Ok(Anchor::After(s)),
        (None, None, Some(s)) => Ok(Anchor::Around(s)),
        _ => Err(DomainError::invalid("?before", "conflicting_anchors", "give at most one of before, after, around")),
    }
}

async fn change(
    app: &App,
    auth: &UserAuth,
    req: &Request,
    channel_id: &str,
    message_id: &str,
    c: MessageChange,
) -> Result<Json<MessageView>, ChatWriteErrors> {
    let (p, id) = channel_for(app, auth, channel_id).await?;
    let message = parse_id(message_id, "message")?;
    // Not found before not allowed: the message must be there for the caller to act on it.
    chat::message(&app.store, p.org, p.user, Place::Channel(id), message).await?;
    Ok(change_message(app, req, &p, Place::Channel(id), message, c).await?)
}

/// A history page's size: 1–`HISTORY_LIMIT_MAX` (default 20), as the document says.
pub fn history_limit(limit: Option<u32>) -> Result<u32, DomainError> {
    crate::domain::paging::limit(limit, 20, chat::HISTORY_LIMIT_MAX_U32)
}
