//! Connections viewing a conversation (`view` starts it, `unview`, leaving the conversation
//! or closing ends it): they, and only they, get its typing indicators. An edge follows a
//! conversation's typing subject only while one of its connections views it, so typing costs
//! what the viewers cost, never what the members do.

use std::collections::{HashMap, HashSet, VecDeque};

use anchorage_schema::ConversationId;
use tokio_util::sync::CancellationToken;

use super::conn::ConnId;

/// Conversations one connection views at once; viewing another stops viewing the oldest.
pub(super) const VIEWS_PER_CONN: usize = 8;

/// Viewers by conversation (with the stop signal of the conversation's typing subscription)
/// and the conversations by connection, oldest first.
#[derive(Debug, Default)]
pub(super) struct Views {
    by_conv: HashMap<ConversationId, (HashSet<ConnId>, CancellationToken)>,
    by_conn: HashMap<ConnId, VecDeque<ConversationId>>,
}

impl Views {
    /// `conn` views `conv`; returns the subscription to start when it is the conversation's
    /// first viewer here.
    pub fn view(
        &mut self,
        conn: ConnId,
        conv: &ConversationId,
        parent: &CancellationToken,
    ) -> Option<CancellationToken> {
        let mine = self.by_conn.entry(conn).or_default();
        if mine.contains(conv) {
            return None;
        }
        mine.push_back(conv.clone());
        let oldest = (mine.len() > VIEWS_PER_CONN)
            .then(|| mine.pop_front())
            .flatten();
        if let Some(oldest) = oldest {
            self.drop_viewer(conn, &oldest);
        }
        match self.by_conv.get_mut(conv) {
            Some((viewers, _)) => {
                viewers.insert(conn);
                None
            }
            None => {
                let stop = parent.child_token();
                self.by_conv
                    .insert(conv.clone(), (HashSet::from([conn]), stop.clone()));
                Some(stop)
            }
        }
    }

    pub fn unview(&mut self, conn: ConnId, conv: &ConversationId) {
        if let Some(mine) = self.by_conn.get_mut(&conn) {
            mine.retain(|c| c != conv);
            if mine.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        self.drop_viewer(conn, conv);
    }

    /// Everything `conn` viewed (it closed).
    pub fn unview_all(&mut self, conn: ConnId) {
        for conv in self.by_conn.remove(&conn).unwrap_or_default() {
            self.drop_viewer(conn, &conv);
        }
    }

    fn drop_viewer(&mut self, conn: ConnId, conv: &ConversationId) {
        if let Some((viewers, stop)) = self.by_conv.get_mut(conv) {
            viewers.remove(&conn);
            if viewers.is_empty() {
                stop.cancel();
                self.by_conv.remove(conv);
            }
        }
    }

    /// The connections viewing `conv`.
    pub fn of(&self, conv: &ConversationId) -> impl Iterator<Item = ConnId> + '_ {
        self.by_conv
            .get(conv)
            .into_iter()
            .flat_map(|(viewers, _)| viewers.iter().copied())
    }

    /// Stops every typing subscription.
    pub fn clear(&mut self) {
        for (_, (_, stop)) in self.by_conv.drain() {
            stop.cancel();
        }
        self.by_conn.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_lives_while_someone_views() {
        let parent = CancellationToken::new();
        let g = ConversationId::parse("g").unwrap();
        let mut v = Views::default();
        let stop = v.view(1, &g, &parent).expect("the first viewer subscribes");
        assert!(v.view(2, &g, &parent).is_none());
        assert!(v.view(2, &g, &parent).is_none(), "viewing twice is viewing");
        v.unview(1, &g);
        assert!(!stop.is_cancelled());
        v.unview_all(2);
        assert!(stop.is_cancelled(), "the last viewer left");
        assert!(v.by_conv.is_empty() && v.by_conn.is_empty());
    }

    #[test]
    fn a_connection_views_a_bounded_number_of_conversations() {
        let parent = CancellationToken::new();
        let mut v = Views::default();
        let convs: Vec<ConversationId> = (0..=VIEWS_PER_CONN)
            .map(|n| ConversationId::parse(format!("c{n}")).unwrap())
            .collect();
        let stops: Vec<CancellationToken> =
            convs.iter().filter_map(|c| v.view(7, c, &parent)).collect();
        assert!(stops[0].is_cancelled(), "the oldest view ended");
        assert_eq!(v.of(&convs[0]).count(), 0);
        assert_eq!(v.of(&convs[VIEWS_PER_CONN]).count(), 1);
        assert_eq!(v.by_conn[&7].len(), VIEWS_PER_CONN);
    }
}
