//! Connections watching a group's member list (`members_sync` starts it, leaving the group or
//! `members_unsubscribe` ends it): they, and only they, get its `members_changed`.

use std::collections::{HashMap, HashSet};

use anchorage_schema::ConversationId;

use super::conn::ConnId;

/// Watchers by group and the groups by connection.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    by_conv: HashMap<ConversationId, HashSet<ConnId>>,
    by_conn: HashMap<ConnId, HashSet<ConversationId>>,
}

impl Watchers {
    pub fn watch(&mut self, conn: ConnId, conv: &ConversationId) {
        self.by_conv.entry(conv.clone()).or_default().insert(conn);
        self.by_conn.entry(conn).or_default().insert(conv.clone());
    }

    pub fn unwatch(&mut self, conn: ConnId, conv: &ConversationId) {
        if let Some(w) = self.by_conv.get_mut(conv) {
            w.remove(&conn);
            if w.is_empty() {
                self.by_conv.remove(conv);
            }
        }
        if let Some(w) = self.by_conn.get_mut(&conn) {
            w.remove(conv);
            if w.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
    }

    /// Everything `conn` watched (it closed).
    pub fn unwatch_all(&mut self, conn: ConnId) {
        for conv in self.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(w) = self.by_conv.get_mut(&conv) {
                w.remove(&conn);
                if w.is_empty() {
                    self.by_conv.remove(&conv);
                }
            }
        }
    }

    /// The connections watching `conv`.
    pub fn of(&self, conv: &ConversationId) -> impl Iterator<Item = ConnId> + '_ {
        self.by_conv.get(conv).into_iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watching_ends_per_group_or_with_the_connection() {
        let g = ConversationId::parse("g").unwrap();
        let h = ConversationId::parse("h").unwrap();
        let mut w = Watchers::default();
        w.watch(1, &g);
        w.watch(1, &h);
        w.watch(2, &g);
        w.unwatch(2, &g);
        assert_eq!(w.of(&g).collect::<Vec<_>>(), vec![1]);
        w.unwatch_all(1);
        assert_eq!(w.of(&g).count() + w.of(&h).count(), 0);
        assert!(w.by_conn.is_empty() && w.by_conv.is_empty());
    }
}
