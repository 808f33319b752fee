//! `search`: full-text search of the messages that reached the user, over the index the
//! messages projection keeps (see `anchorage_store::search`).

use std::collections::BTreeMap;

use anchorage_protocol::request::Search;
use anchorage_protocol::{SearchResult, SearchResults};
use anchorage_schema::ConversationId;
use anchorage_schema::subjects::stream;
use anchorage_store::MessageRow;
use anchorage_store::text::Query;

use super::error::RequestError;
use super::session::Session;
use crate::EdgeState;
use crate::progress::Projection;
use crate::requests::messages::PROJECTION_WAIT;

/// Results one answer carries by default, and at most.
const DEFAULT_RESULTS: u32 = 20;
const MAX_RESULTS: u32 = 50;

impl EdgeState {
    /// `user`'s messages matching `r`, newest first: only those that reached them (decided
    /// while they were members), not deleted for themselves, in their current state.
    pub(crate) async fn search(
        &self,
        user: &str,
        r: &Search,
    ) -> Result<SearchResults, RequestError> {
        let query = Query::parse(&r.query).map_err(|e| RequestError::Invalid(e.to_string()))?;
        // Settled first: a member just added is a member of `conv`.
        self.search_settled(r.conv.as_ref()).await?;
        if let Some(conv) = &r.conv
            && !self.store.ever_member(conv.as_str(), user).await?
        {
            return Err(RequestError::Forbidden(format!("never a member of {conv}")));
        }
        let limit = r.limit.unwrap_or(DEFAULT_RESULTS).clamp(1, MAX_RESULTS);
        let mut found = self
            .store
            .search(&anchorage_store::search::Search {
                user,
                query: &query,
                conv: r.conv.as_ref().map(|c| c.as_str()),
                before: r.before,
                limit: limit + 1,
            })
            .await?;
        let more = found.len() > limit as usize;
        found.truncate(limit as usize);
        // Reactions are read per conversation; the results keep their order.
        let mut by_conv: BTreeMap<String, Vec<MessageRow>> = BTreeMap::new();
        for f in &found {
            by_conv
                .entry(f.message.conv.clone())
                .or_default()
                .push(f.message.clone());
        }
        let mut views = BTreeMap::new();
        for rows in by_conv.into_values() {
            for m in self.views(rows, user).await? {
                views.insert(m.seq, m);
            }
        }
        let results = found
            .into_iter()
            .filter_map(|f| {
                Some(SearchResult {
                    message: views.remove(&f.message.seq)?,
                    highlights: f.highlights,
                })
            })
            .collect();
        Ok(SearchResults { results, more })
    }
}

impl EdgeState {
    /// Refuses to answer from an index behind what was stored when the search came (waiting
    /// briefly for it): the memberships, which decide what the user finds — a member just
    /// added must find what the history already shows them — and the messages of the
    /// conversation searched, or of all.
    async fn search_settled(&self, conv: Option<&ConversationId>) -> Result<(), RequestError> {
        let memberships = self.bus.stream_state(stream::MEMBERSHIP).await?.last_seq;
        let messages = match conv {
            Some(conv) => self.conversation_end(conv).await?,
            None => self.bus.stream_state(stream::MESSAGES).await?.last_seq,
        };
        let (members_held, messages_held) = tokio::try_join!(
            async {
                Ok::<_, RequestError>(
                    self.progress
                        .reached(Projection::Membership, memberships.0, PROJECTION_WAIT)
                        .await?,
                )
            },
            self.messages_projected(messages),
        )?;
        if members_held && messages_held {
            Ok(())
        } else {
            Err(RequestError::Overloaded(
                "the search index is catching up; ask again in a moment".into(),
            ))
        }
    }
}

impl Session {
    pub(super) async fn search(&self, r: Search) -> Result<SearchResults, RequestError> {
        self.state.search(self.claims.sub.as_str(), &r).await
    }
}
