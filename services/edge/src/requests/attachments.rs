//! Files: `upload` issues where to put one, `send` accepts a message naming it only once it
//! is stored as issued, and `download` gives members who can read the message where to get
//! it. The bytes go straight between the client and object storage (or, for the `fs`
//! backend, this edge's `/v1/blobs`).

use anchorage_protocol::request::{Download, Upload};
use anchorage_protocol::{DownloadGrant, UploadGrant};
use anchorage_schema::ConversationId;
use anchorage_schema::attachment::{Attachment, MAX_PER_MESSAGE};
use anchorage_store::EntryKind;

use super::error::RequestError;
use super::session::Session;
use crate::EdgeState;

impl From<anchorage_blobs::Refusal> for RequestError {
    fn from(r: anchorage_blobs::Refusal) -> Self {
        use anchorage_blobs::Refusal;
        match r {
            Refusal::Invalid(why) => RequestError::Invalid(why),
            Refusal::NotAllowed(why) => RequestError::Forbidden(why),
            Refusal::TooLarge(why) => RequestError::TooLarge(why),
        }
    }
}

impl EdgeState {
    /// The attachment storage, or `forbidden` when attachments are off.
    pub(crate) fn blobs(&self) -> Result<&anchorage_blobs::Blobs, RequestError> {
        self.blobs
            .as_deref()
            .ok_or_else(|| RequestError::Forbidden("attachments are off on this server".into()))
    }

    /// Checks the files a message names, as sent by `sender` to `conv`: each issued by
    /// `upload` to that sender for that conversation with that type and size, and stored
    /// with exactly that size.
    pub(crate) async fn check_attachments(
        &self,
        conv: &ConversationId,
        sender: &str,
        attachments: &[Attachment],
    ) -> Result<(), RequestError> {
        if attachments.is_empty() {
            return Ok(());
        }
        let blobs = self.blobs()?;
        if attachments.len() > MAX_PER_MESSAGE {
            return Err(RequestError::Invalid(format!(
                "a message carries at most {MAX_PER_MESSAGE} files; this one names {}",
                attachments.len()
            )));
        }
        for (n, a) in attachments.iter().enumerate() {
            a.check()
                .map_err(|e| RequestError::Invalid(format!("attachment {}: {e}", a.id)))?;
            if attachments[..n].iter().any(|b| b.id == a.id) {
                return Err(RequestError::Invalid(format!(
                    "attachment {} is named twice",
                    a.id
                )));
            }
            if !blobs.verify(conv.as_str(), sender, a) {
                return Err(RequestError::Forbidden(format!(
                    "attachment {} was not issued to {sender} for {conv} with this type and size",
                    a.id
                )));
            }
        }
        for a in attachments {
            // Released by a revoke (deleted, or about to be): never named again, also when
            // an upload URL re-created it.
            if self.store.object_released(a.id.object()).await? {
                return Err(RequestError::NotFound(format!(
                    "attachment {} was deleted with a revoked message",
                    a.id
                )));
            }
            match blobs.size_of(a.id.object()).await {
                Ok(Some(size)) if size == a.size => {}
                Ok(Some(size)) => {
                    return Err(RequestError::Invalid(format!(
                        "attachment {} is stored with {size} bytes, not {}",
                        a.id, a.size
                    )));
                }
                Ok(None) => {
                    return Err(RequestError::NotFound(format!(
                        "attachment {} is not uploaded (or was deleted)",
                        a.id
                    )));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "checking an attachment");
                    return Err(RequestError::Overloaded(format!(
                        "cannot check attachment {} now; retry in a moment",
                        a.id
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Session {
    pub(super) async fn upload(&self, r: Upload) -> Result<UploadGrant, RequestError> {
        let Upload {
            conv,
            name,
            content_type,
            size,
        } = r;
        let blobs = self.state.blobs()?;
        self.member(&conv)?;
        let (attachment, grant) = blobs
            .issue(
                conv.as_str(),
                self.claims.sub.as_str(),
                &name,
                &content_type,
                size,
            )
            .map_err(RequestError::from)?;
        Ok(UploadGrant {
            attachment,
            url: grant.url,
            method: grant.method.to_owned(),
            headers: grant.headers.into_iter().collect(),
            expires_at: grant.expires_at,
        })
    }

    pub(super) async fn download(&self, r: Download) -> Result<DownloadGrant, RequestError> {
        let Download {
            conv,
            seq,
            attachment,
        } = r;
        let blobs = self.state.blobs()?;
        self.member(&conv)?;
        let missing =
            || RequestError::NotFound(format!("message {seq} in {conv} has no file {attachment}"));
        // The message once the projection holds it, as the caller reads it: not deleted for
        // them, not revoked.
        self.target(&conv, seq).await?;
        let row = self
            .state
            .store
            .messages_after_for(conv.as_str(), seq - 1, 1, self.claims.sub.as_str())
            .await?
            .into_iter()
            .find(|row| row.seq == seq && row.kind == EntryKind::Message && !row.revoked)
            .ok_or_else(missing)?;
        let a = row
            .attachments
            .into_iter()
            .find(|a| a.id == attachment)
            .ok_or_else(missing)?;
        let grant = blobs.download(&a);
        Ok(DownloadGrant {
            attachment: a,
            url: grant.url,
            expires_at: grant.expires_at,
        })
    }
}
