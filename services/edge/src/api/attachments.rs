//! Files for the app's backend: upload a file for a message a user (or bot) posts, and get a
//! short-lived download URL for a file of any message.

use std::collections::BTreeMap;

use anchorage_schema::admin::Scope;
use anchorage_schema::attachment::{Attachment, AttachmentId};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys::Key;
use super::problem::{Body, Params, Problem};
use super::users::user_id;
use super::{caller, conversation};
use crate::EdgeState;
use crate::requests::RequestError;

/// A file to upload for a message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUpload {
    /// Who posts the message (a member; a bot is a user): only their message may name it.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub sender: String,
    /// The file's name.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\\s.][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*$"
    )]
    pub name: String,
    /// Its media type (one of `attachments.allowed_types`).
    #[schema(
        max_length = 127,
        pattern = r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$"
    )]
    pub content_type: String,
    /// Its exact size in bytes (at most `attachments.max_bytes`).
    #[schema(minimum = 0, maximum = 5368709120_u64)]
    #[serde(deserialize_with = "size")]
    pub size: u64,
}

/// A file as a message names it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The id `upload` gave it.
    #[schema(pattern = r"^[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}$")]
    pub id: String,
    /// Its name (a message may rename it).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\\s.][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*$"
    )]
    pub name: String,
    /// Its media type, as issued.
    #[schema(
        max_length = 127,
        pattern = r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$"
    )]
    pub content_type: String,
    /// Its size in bytes, as issued.
    #[schema(minimum = 0, maximum = 5368709120_u64)]
    #[serde(deserialize_with = "size")]
    pub size: u64,
}

/// A size as JSON may write it: `5` or `5.0`; one past any limit (`1e30`) stays too large.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    let n = <serde_json::Number as Deserialize>::deserialize(d)?;
    if let Some(n) = n.as_u64() {
        return Ok(n);
    }
    match n.as_f64() {
        // Saturates: a size too large for a u64 is refused as too large.
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as u64),
        _ => Err(D::Error::custom(format!("{n} is not a size in bytes"))),
    }
}

impl File {
    /// The attachment this describes, or why it is not one.
    pub(super) fn attachment(self) -> Result<Attachment, Problem> {
        let a = Attachment {
            id: AttachmentId::parse(self.id).map_err(|e| Problem::invalid(e.0))?,
            name: self.name,
            content_type: self.content_type,
            size: self.size,
        };
        a.check().map_err(|e| Problem::invalid(e.0))?;
        Ok(a)
    }
}

impl From<Attachment> for File {
    fn from(a: Attachment) -> Self {
        File {
            id: a.id.to_string(),
            name: a.name,
            content_type: a.content_type,
            size: a.size,
        }
    }
}

/// Where to upload a file.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadTarget {
    /// What the message names once the file is uploaded.
    pub attachment: File,
    /// The URL: absolute, or a path on this server.
    pub url: String,
    /// The method (`PUT`); the body is the file, exactly `size` bytes.
    pub method: String,
    /// Headers the upload carries, with these values.
    pub headers: BTreeMap<String, String>,
    /// When the URL stops working, Unix milliseconds.
    pub expires_at: i64,
}

/// Where to download a file.
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadTarget {
    /// The file as the message names it.
    pub attachment: File,
    /// The URL (`GET`): absolute, or a path on this server.
    pub url: String,
    /// When the URL stops working, Unix milliseconds.
    pub expires_at: i64,
}

/// Upload a file for a message `sender` posts into a conversation.
#[utoipa::path(post, operation_id = "attachment_upload", path = "/v1/conversations/{conv}/attachments", tag = "messages",
    request_body = NewUpload,
    params(("conv" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 201, description = "Where to upload the file; name the attachment in the message once it is there", body = UploadTarget)),
    security(("api_key" = [])))]
pub async fn upload(
    State(state): State<EdgeState>,
    key: Key,
    Params(conv): Params<String>,
    Body(r): Body<NewUpload>,
) -> Result<(StatusCode, Json<UploadTarget>), Problem> {
    key.require(Scope::Write)?;
    let conv = conversation(conv)?;
    let sender = user_id(r.sender)?;
    let blobs = state.blobs()?;
    let group = conv.group();
    caller(&state).settled_version(&group).await?;
    super::member_now(&state, &group, &sender).await?;
    super::live_group(&state, &group).await?;
    let (attachment, grant) = blobs
        .issue(
            conv.as_str(),
            sender.as_str(),
            &r.name,
            &r.content_type,
            r.size,
        )
        .map_err(RequestError::from)?;
    Ok((
        StatusCode::CREATED,
        Json(UploadTarget {
            attachment: attachment.into(),
            url: grant.url,
            method: grant.method.to_owned(),
            headers: grant.headers.into_iter().collect(),
            expires_at: grant.expires_at,
        }),
    ))
}

/// A short-lived download URL for a file of a message.
#[utoipa::path(get, operation_id = "attachment_download", path = "/v1/conversations/{conv}/messages/{seq}/attachments/{id}", tag = "messages",
    params(
        ("conv" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
        ("seq" = u64, Path, minimum = 1, maximum = 9223372036854775807_u64),
        ("id" = String, Path, pattern = r"^[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}$"),
    ),
    responses((status = 200, description = "Where to download the file", body = DownloadTarget)),
    security(("api_key" = [])))]
pub async fn download(
    State(state): State<EdgeState>,
    key: Key,
    Params((conv, seq, id)): Params<(String, u64, String)>,
) -> Result<Json<DownloadTarget>, Problem> {
    key.require(Scope::Read)?;
    let conv = conversation(conv)?;
    let id = AttachmentId::parse(id).map_err(|e| Problem::invalid(e.0))?;
    let blobs = state.blobs()?;
    let missing = || RequestError::NotFound(format!("message {seq} in {conv} has no file {id}"));
    if seq == 0 || seq > i64::MAX as u64 {
        return Err(missing().into());
    }
    if !state.settled_conversation(&conv).await? {
        return Err(RequestError::Overloaded(format!(
            "the history of {conv} is catching up; ask again in a moment"
        ))
        .into());
    }
    let row = state
        .store
        .message(conv.as_str(), seq)
        .await
        .map_err(RequestError::from)?
        .filter(|row| !row.revoked)
        .ok_or_else(missing)?;
    let a = row
        .attachments
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(missing)?;
    let grant = blobs.download(&a);
    Ok(Json(DownloadTarget {
        attachment: a.into(),
        url: grant.url,
        expires_at: grant.expires_at,
    }))
}

#[cfg(test)]
mod tests {
    /// The pattern of a file name the server takes: no control characters, no `/` or `\`, not
    /// only dots and spaces.
    const NAME: &str = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\\s.][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*$";
    /// The pattern of a media type: `type/subtype` in lower case, without parameters.
    const MEDIA_TYPE: &str = r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}$";

    /// The document's patterns are the server's rules, so nothing it describes is refused as
    /// malformed.
    #[test]
    fn the_documented_patterns_are_the_checks() {
        assert!(NAME.len() > 10 && MEDIA_TYPE.len() > 10);
        let doc = crate::api::openapi_json();
        assert!(
            doc.contains(&NAME.replace('\\', "\\\\")),
            "name pattern documented"
        );
        assert!(
            doc.contains(&MEDIA_TYPE.replace('\\', "\\\\")),
            "media type pattern documented"
        );
    }
}
