//! Messages posted by the app's backend — as the system, or for a user (a bot is a user) —
//! and a conversation's history.

use anchorage_schema::admin::Scope;
use anchorage_schema::event::{MessageSent, SystemMessagePosted};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Actor, ClientMsgId, DeviceId, Envelope, Event, Seq, now_ms};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::attachments::File;
use super::keys::Key;
use super::problem::{Body, Page, Params, Problem};
use super::users::user_id;
use super::{
    API_DEVICE, API_SOURCE, EVENT_PREFIX, Written, applied, backend, caller, conversation,
    event_id, idempotency_key, page_limit,
};
use crate::EdgeState;
use crate::progress::Projection;
use crate::requests::RequestError;

/// A message to post.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// Text or any JSON (at most `edge.max_frame_bytes` encoded, nested at most 31 deep).
    pub body: Value,
    /// Post for this user (a member; a bot is a user). Absent: a system message.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub sender: Option<String>,
    /// The idempotency key (or the `Idempotency-Key` header): a repeat, also days later, is
    /// answered with the first post's seq and stored once.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub client_msg_id: Option<String>,
    /// Files the message carries (at most 10; only a message with a `sender`), each
    /// uploaded first through `POST /v1/conversations/{conv}/attachments` for that sender.
    #[serde(default)]
    #[schema(max_items = 10)]
    pub attachments: Vec<File>,
}

/// A stored message.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// Its place in the conversation (a MESSAGES stream sequence).
    pub seq: u64,
    /// Who sent it (`system:<source>` for a system message).
    pub sender: String,
    /// From which device (`api` for posts through this API; empty for system messages).
    pub device: String,
    /// The sender's id of the message.
    pub client_msg_id: String,
    /// Text or any JSON.
    pub body: Value,
    /// The sender's clock, Unix milliseconds.
    pub client_ts: i64,
    /// When it was stored, Unix milliseconds.
    pub server_ts: i64,
    /// Files it carries (get one through its download URL).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<File>,
}

/// A page of history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Pass as `before` for older messages; absent at the beginning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// Paging back through history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryPage {
    /// Messages before this seq (default: the newest).
    #[param(minimum = 0, maximum = 9223372036854775807_u64)]
    pub before: Option<u64>,
    /// At most this many (1 to 500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Post a message into a conversation.
#[utoipa::path(post, operation_id = "message_post", path = "/v1/conversations/{conv}/messages", tag = "messages",
    request_body = PostMessage,
    params(("conv" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), super::IdempotencyHeader),
    responses((status = 201, description = "Stored (or stored before under the same key)", body = Written)),
    security(("api_key" = [])))]
pub async fn post(
    State(state): State<EdgeState>,
    key: Key,
    Params(conv): Params<String>,
    headers: HeaderMap,
    Body(r): Body<PostMessage>,
) -> Result<(StatusCode, Json<Written>), Problem> {
    key.require(Scope::Write)?;
    let given = idempotency_key(&headers, r.client_msg_id.as_deref())?;
    let conv = conversation(conv)?;
    let encoded = serde_json::to_vec(&r.body).unwrap_or_default();
    if encoded.len() > state.config.max_frame_bytes as usize {
        return Err(RequestError::TooLarge("the body exceeds edge.max_frame_bytes".into()).into());
    }
    // As over the WebSocket: a body inside its request nests at most 32 deep in all.
    if anchorage_schema::limits::json_depth(&encoded) >= anchorage_schema::limits::MAX_JSON_DEPTH {
        return Err(Problem::invalid("the body is nested more than 31 deep"));
    }
    let attachments = r
        .attachments
        .into_iter()
        .map(File::attachment)
        .collect::<Result<Vec<_>, _>>()?;
    if !attachments.is_empty() && r.sender.is_none() {
        return Err(RequestError::Forbidden(
            "a system message carries no files: post it for a user (a bot is a user)".into(),
        )
        .into());
    }
    let client_msg_id = match &given {
        Some(k) => k.clone(),
        None => ClientMsgId::parse(format!(
            "api-{}-{:016x}",
            now_ms(),
            anchorage_schema::backoff::random()
        ))
        .map_err(|e| Problem::from(RequestError::internal(e)))?,
    };
    let group = conv.group();
    let caller = caller(&state);
    let version = caller.settled_version(&group).await?;
    super::live_group(&state, &group).await?;
    let device =
        DeviceId::parse(API_DEVICE).map_err(|e| Problem::from(RequestError::internal(e)))?;
    let (env, sender, stored_device, stored_id) = match r.sender {
        Some(sender) => {
            let user = user_id(sender)?;
            super::not_deleted(&state, std::slice::from_ref(&user)).await?;
            let member = super::member_now(&state, &group, &user).await?;
            if let Some(until) = member.muted_until
                && until > now_ms()
            {
                return Err(RequestError::Forbidden(format!(
                    "{user} is muted in {conv} until {until}"
                ))
                .into());
            }
            let id = event_id(format!("{user}:{API_DEVICE}:{conv}:{client_msg_id}"))?;
            let env = Envelope::new(
                id,
                now_ms(),
                Actor::User {
                    user: user.clone(),
                    device: device.clone(),
                },
                MessageSent {
                    conv: conv.clone(),
                    sender: user.clone(),
                    device,
                    client_msg_id: client_msg_id.clone(),
                    body: r.body,
                    client_ts: now_ms(),
                    reply_to: None,
                    mentions: Vec::new(),
                    mention_all: false,
                    attachments,
                },
            );
            (
                env,
                user.to_string(),
                API_DEVICE.to_owned(),
                client_msg_id.to_string(),
            )
        }
        None => {
            if conv.is_direct() {
                return Err(RequestError::Forbidden(
                    "system messages do not go into 1:1 conversations".into(),
                )
                .into());
            }
            let id = event_id(format!("{EVENT_PREFIX}:{conv}:{client_msg_id}"))?;
            let stored_id = id.to_string();
            let env = Envelope::new(
                id,
                now_ms(),
                backend(),
                SystemMessagePosted {
                    conv: conv.clone(),
                    body: r.body,
                },
            );
            (
                env,
                format!("system:{API_SOURCE}"),
                String::new(),
                stored_id,
            )
        }
    };
    // A repeat — also after the stream's duplicate window — gets the original from the
    // history, never a second copy and never a second verdict of the hook: the history answers
    // once it holds all of the conversation. With a before-send hook the stored body may be
    // the hook's, so only without one is a repeat's body compared.
    let hooked = state.before_send.is_some() && matches!(env.event, Event::MessageSent(_));
    if given.is_some() {
        if !state.settled_conversation(&conv).await? {
            return Err(RequestError::Overloaded(format!(
                "the history of {conv} is catching up; retry in a moment"
            ))
            .into());
        }
        // The key names one post in the conversation, whoever it was for.
        let system_id = format!("{EVENT_PREFIX}:{conv}:{client_msg_id}");
        if let Some(row) = state
            .store
            .posted_under_key(
                conv.as_str(),
                API_DEVICE,
                client_msg_id.as_str(),
                &system_id,
            )
            .await
            .map_err(RequestError::from)?
        {
            if (
                row.sender.as_str(),
                row.device.as_str(),
                row.client_msg_id.as_str(),
            ) != (sender.as_str(), stored_device.as_str(), stored_id.as_str())
            {
                return Err(RequestError::Conflict(
                    "the idempotency key was used for another message".into(),
                )
                .into());
            }
            // What was posted is compared with what the history holds of it: the stored
            // copy, or once an edit replaced its body the event as it was posted. A revoke
            // erased both: a repeat of a revoked post is that post (never posted again).
            let same = if hooked || row.revoked {
                true
            } else if row.edits == 0 {
                serde_json::from_str::<Value>(&row.body).ok().as_ref() == message_body(&env)
                    && row.attachments.as_slice() == message_files(&env)
            } else {
                match state
                    .bus
                    .stored_event_if_any(stream::MESSAGES, Seq(row.seq))
                    .await
                    .map_err(RequestError::from)?
                {
                    Some(Ok(posted)) => {
                        message_body(&posted) == message_body(&env)
                            && message_files(&posted) == message_files(&env)
                    }
                    // Gone from the stream (past its limits): nothing left to compare.
                    _ => true,
                }
            };
            if !same {
                return Err(RequestError::Conflict(
                    "the idempotency key was used for another message".into(),
                )
                .into());
            }
            return Ok((
                StatusCode::CREATED,
                Json(Written {
                    seq: row.seq,
                    duplicate: true,
                }),
            ));
        }
    }
    // Not a repeat: its files are checked (a repeat is answered from the history, whatever
    // became of the store meanwhile).
    if let Event::MessageSent(m) = &env.event {
        state
            .check_attachments(&conv, m.sender.as_str(), &m.attachments)
            .await?;
    }
    // The hook sees what a user sends (never the system's own posts).
    let mut env = env;
    if let (Some(hook), Event::MessageSent(m)) = (&state.before_send, &mut env.event) {
        let draft = crate::hook::Draft {
            conv: &m.conv,
            sender: &m.sender,
            device: &m.device,
            client_msg_id: &m.client_msg_id,
            body: &m.body,
        };
        if let Some(replaced) = hook.check(&env.id, &draft).await? {
            m.body = replaced;
        }
    }
    let p = state
        .bus
        .publish_event_pipelined(&subjects::message(&conv), &env, Some(version))
        .await
        .map_err(RequestError::from)?
        .stored()
        .await
        .map_err(RequestError::from)?;
    if p.duplicate {
        let stored = state
            .bus
            .stored_event(stream::MESSAGES, p.seq)
            .await
            .map_err(RequestError::from)?;
        if !hooked
            && (message_body(&stored) != message_body(&env)
                || message_files(&stored) != message_files(&env))
        {
            return Err(RequestError::Conflict(
                "the idempotency key was used for another message".into(),
            )
            .into());
        }
    }
    applied(&state, Projection::Messages, p.seq.0).await;
    Ok((
        StatusCode::CREATED,
        Json(Written {
            seq: p.seq.0,
            duplicate: p.duplicate,
        }),
    ))
}

fn message_body(env: &Envelope) -> Option<&Value> {
    anchorage_protocol::MessageParts::of(env).map(|p| p.body)
}

fn message_files(env: &Envelope) -> &[anchorage_schema::attachment::Attachment] {
    match &env.event {
        Event::MessageSent(m) => &m.attachments,
        _ => &[],
    }
}

/// A conversation's history, newest first.
#[utoipa::path(get, operation_id = "message_history", path = "/v1/conversations/{conv}/messages", tag = "messages",
    params(("conv" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), HistoryPage),
    responses((status = 200, description = "A page of history", body = History)),
    security(("api_key" = [])))]
pub async fn history(
    State(state): State<EdgeState>,
    key: Key,
    Params(conv): Params<String>,
    Page(page): Page<HistoryPage>,
) -> Result<Json<History>, Problem> {
    key.require(Scope::Read)?;
    let conv = conversation(conv)?;
    let limit = page_limit(page.limit, 50, 500)?;
    let before = page.before.unwrap_or(0);
    if before > i64::MAX as u64 {
        return Err(Problem::invalid("before is at most 2^63 - 1"));
    }
    let exists = state
        .store
        .group_row(conv.group().as_str())
        .await
        .map_err(RequestError::from)?
        .is_some();
    if !exists {
        return Err(RequestError::NotFound(format!("{conv} does not exist")).into());
    }
    let rows = state
        .store
        .messages_before(conv.as_str(), before, limit + 1)
        .await
        .map_err(RequestError::from)?;
    let more = rows.len() > limit as usize;
    let messages: Vec<Message> = rows
        .into_iter()
        .take(limit as usize)
        .map(|row| Message {
            seq: row.seq,
            sender: row.sender,
            device: row.device,
            client_msg_id: row.client_msg_id,
            body: serde_json::from_str(&row.body).unwrap_or(Value::String(row.body)),
            client_ts: row.client_ts,
            server_ts: row.server_ts,
            attachments: row.attachments.into_iter().map(File::from).collect(),
        })
        .collect();
    let next_before = more.then(|| messages.last().map(|m| m.seq)).flatten();
    Ok(Json(History {
        messages,
        next_before,
    }))
}

/// A search of a user's messages.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find: every one must match; a word of three characters or more also matches
    /// words that start with it; CJK text matches where its characters stand together. A
    /// query without a word finds nothing.
    #[param(min_length = 1, max_length = 256)]
    pub q: String,
    /// Only this conversation (one the user is or was a member of).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub conv: Option<String>,
    /// Messages before this seq (default: the newest).
    #[param(minimum = 0, maximum = 9223372036854775807_u64)]
    pub before: Option<u64>,
    /// At most this many (1 to 50, default 20).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<u32>,
}

/// A message found.
#[derive(Debug, Serialize, ToSchema)]
pub struct Found {
    /// Its conversation.
    pub conv: String,
    /// The message in its current state.
    pub message: Message,
    /// The pieces of its text that matched, as written there.
    pub highlights: Vec<String>,
}

/// Messages found, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    /// Newest first.
    pub results: Vec<Found>,
    /// Pass as `before` for older results; absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// Full-text search of the messages that reached a user — in every conversation they are or
/// were a member of, none from before they joined or after they left — as the user's own
/// `search` request finds them.
#[utoipa::path(get, operation_id = "user_search_messages", path = "/v1/users/{user}/search", tag = "messages",
    params(("user" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"), SearchParams),
    responses((status = 200, description = "Messages found", body = SearchPage)),
    security(("api_key" = [])))]
pub async fn search(
    State(state): State<EdgeState>,
    key: Key,
    Params(user): Params<String>,
    Page(params): Page<SearchParams>,
) -> Result<Json<SearchPage>, Problem> {
    key.require(Scope::Read)?;
    let user = user_id(user)?;
    let limit = page_limit(params.limit, 20, 50)?;
    let before = params.before.unwrap_or(0);
    if before > i64::MAX as u64 {
        return Err(Problem::invalid("before is at most 2^63 - 1"));
    }
    if params.q.is_empty() {
        return Err(Problem::invalid("q is empty"));
    }
    let conv = params.conv.map(conversation).transpose()?;
    super::not_deleted(&state, std::slice::from_ref(&user)).await?;
    // A query without a word (only punctuation, say) finds nothing.
    if anchorage_store::text::Query::parse(&params.q)
        == Err(anchorage_store::text::QueryError::Empty)
    {
        return Ok(Json(SearchPage {
            results: Vec::new(),
            next_before: None,
        }));
    }
    let request = anchorage_protocol::request::Search {
        query: params.q,
        conv,
        before,
        limit: Some(limit),
    };
    let found = state.search(user.as_str(), &request).await?;
    let results: Vec<Found> = found
        .results
        .into_iter()
        .map(|r| {
            let m = r.message;
            Found {
                conv: m.conv.to_string(),
                message: Message {
                    seq: m.seq,
                    sender: m.sender,
                    device: m.device,
                    client_msg_id: m.client_msg_id,
                    body: m.body,
                    client_ts: m.client_ts,
                    server_ts: m.server_ts,
                    attachments: m.attachments.into_iter().map(File::from).collect(),
                },
                highlights: r.highlights,
            }
        })
        .collect();
    let next_before = found
        .more
        .then(|| results.last().map(|f| f.message.seq))
        .flatten();
    Ok(Json(SearchPage {
        results,
        next_before,
    }))
}
