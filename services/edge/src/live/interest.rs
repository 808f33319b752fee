//! Interest: the conversations with at least one member connected here, each followed by one
//! subscription to `live.msg.<conv>` for the whole edge.
//!
//! The map only records what is wanted; the subscriptions themselves are started by the hub
//! outside its lock ([`Subscribe`]) and stopped through their cancellation tokens.

use std::collections::{HashMap, HashSet};

use anchorage_schema::{ConversationId, UserId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::conn::Frame;

/// A subscription to start: the conversation, its stop signal, and where to say it is in
/// place.
#[derive(Debug)]
pub(super) struct Subscribe {
    pub conv: ConversationId,
    pub stop: CancellationToken,
    pub ready: watch::Sender<bool>,
}

#[derive(Debug)]
struct Entry {
    users: HashSet<UserId>,
    stop: CancellationToken,
    /// The live subscription is in place on the server.
    ready: bool,
    /// Membership frames held back until then: a client told "you joined" must not miss a
    /// message published after it could have asked for history.
    held: Vec<(UserId, Frame)>,
    /// Turns true once the subscription is in place.
    ready_rx: watch::Receiver<bool>,
}

/// The conversations followed by this edge and the local users interested in each.
#[derive(Debug, Default)]
pub(super) struct Interest {
    convs: HashMap<ConversationId, Entry>,
}

impl Interest {
    /// `user` is interested in `conv`; returns the subscription to start if it is the first.
    pub fn add(
        &mut self,
        user: &UserId,
        conv: ConversationId,
        parent: &CancellationToken,
    ) -> Option<Subscribe> {
        if let Some(entry) = self.convs.get_mut(&conv) {
            entry.users.insert(user.clone());
            return None;
        }
        let (ready, ready_rx) = watch::channel(false);
        let stop = parent.child_token();
        self.convs.insert(
            conv.clone(),
            Entry {
                users: HashSet::from([user.clone()]),
                stop: stop.clone(),
                ready: false,
                held: Vec::new(),
                ready_rx,
            },
        );
        Some(Subscribe { conv, stop, ready })
    }

    /// `user` lost interest in `conv`; the subscription stops with the last user.
    pub fn remove(&mut self, user: &UserId, conv: &ConversationId) {
        let empty = self.convs.get_mut(conv).is_some_and(|e| {
            e.users.remove(user);
            e.users.is_empty()
        });
        if empty && let Some(entry) = self.convs.remove(conv) {
            entry.stop.cancel();
        }
    }

    /// Holds `frame` for `user` until `conv`'s subscription is in place; gives it back if
    /// it is in place already (or not followed), to be pushed now.
    pub fn hold(
        &mut self,
        conv: &ConversationId,
        user: UserId,
        frame: Frame,
    ) -> Option<(UserId, Frame)> {
        match self.convs.get_mut(conv) {
            Some(entry) if !entry.ready => {
                entry.held.push((user, frame));
                None
            }
            _ => Some((user, frame)),
        }
    }

    /// `conv`'s subscription is in place: returns the frames held for it.
    pub fn ready(&mut self, conv: &ConversationId) -> Vec<(UserId, Frame)> {
        match self.convs.get_mut(conv) {
            Some(entry) => {
                entry.ready = true;
                std::mem::take(&mut entry.held)
            }
            None => Vec::new(),
        }
    }

    /// The local users interested in `conv`.
    pub fn users(&self, conv: &ConversationId) -> impl Iterator<Item = &UserId> {
        self.convs
            .get(conv)
            .into_iter()
            .flat_map(|e| e.users.iter())
    }

    /// Signals that turn true once the subscriptions of `convs` not yet in place are.
    pub fn pending<'a>(
        &self,
        convs: impl IntoIterator<Item = &'a ConversationId>,
    ) -> Vec<watch::Receiver<bool>> {
        convs
            .into_iter()
            .filter_map(|c| self.convs.get(c))
            .filter(|e| !e.ready)
            .map(|e| e.ready_rx.clone())
            .collect()
    }

    /// Stops every subscription.
    pub fn clear(&mut self) {
        for (_, entry) in self.convs.drain() {
            entry.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subscription_per_conversation_until_the_last_user_goes() {
        let parent = CancellationToken::new();
        let conv = ConversationId::parse("c").unwrap();
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let mut interest = Interest::default();
        let sub = interest.add(&a, conv.clone(), &parent).unwrap();
        assert!(interest.add(&b, conv.clone(), &parent).is_none());
        // Frames wait for the subscription, then come out in order.
        assert!(interest.hold(&conv, a.clone(), "1".into()).is_none());
        assert_eq!(interest.pending([&conv]).len(), 1);
        assert_eq!(interest.ready(&conv).len(), 1);
        assert!(interest.hold(&conv, a.clone(), "2".into()).is_some());
        interest.remove(&a, &conv);
        assert!(!sub.stop.is_cancelled());
        interest.remove(&b, &conv);
        assert!(sub.stop.is_cancelled());
        assert_eq!(interest.users(&conv).count(), 0);
    }
}
