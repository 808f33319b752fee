//! `search`: full-text search of the messages that reached the user, over the index the
//! messages projection keeps (see `anchorage_store::search`).

use std::collections::BTreeMap;

use anchorage_protocol::request::Search;
use anchorage_protocol::{SearchResult, SearchResults};
use anchorage_store::MessageRow;
use anchorage_store::text::Query;

use super::error::RequestError;
use super::session::Session;
use crate::EdgeState;

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

impl Session {
    pub(super) async fn search(&self, r: Search) -> Result<SearchResults, RequestError> {
        self.state.search(self.claims.sub.as_str(), &r).await
    }
}
