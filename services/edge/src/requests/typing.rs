//! What a connection shows and who is typing: `view` / `unview` mark the conversations a
//! connection has open, `typing` tells the others. Nothing of it is stored; it travels between
//! edges on core NATS and reaches only connections viewing the conversation.

use anchorage_protocol::Done;
use anchorage_protocol::request::{Typing, View};
use anchorage_schema::subjects;

use super::error::RequestError;
use super::session::Session;
use crate::live::TypingSignal;

impl Session {
    pub(super) fn view(&self, r: View) -> Result<Done, RequestError> {
        self.member(&r.conv)?;
        self.state.hub.view(self.conn.id, &r.conv);
        Ok(Done {
            conv: Some(r.conv),
            seq: None,
        })
    }

    pub(super) fn unview(&self, r: View) -> Result<Done, RequestError> {
        self.state.hub.unview(self.conn.id, &r.conv);
        Ok(Done {
            conv: Some(r.conv),
            seq: None,
        })
    }

    pub(super) async fn typing(&self, r: Typing) -> Result<Done, RequestError> {
        let Typing { conv, stop } = r;
        self.member(&conv)?;
        let user = &self.claims.sub;
        // A user typing on and on is told to the others once per interval; the answer is the
        // same either way.
        if self.state.hub.typing_allowed(user, &conv, !stop) {
            let signal = TypingSignal {
                user: user.clone(),
                typing: !stop,
            };
            let payload = serde_json::to_string(&signal).unwrap_or_default();
            self.state
                .bus
                .notify(&subjects::typing(&conv), payload)
                .await?;
        }
        Ok(Done {
            conv: Some(conv),
            seq: None,
        })
    }
}
