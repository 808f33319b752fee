//! Who is connected to this edge, and which sessions were revoked lately.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anchorage_protocol::close;
use anchorage_schema::{DeviceId, UserId};

use super::conn::{ConnHandle, ConnId, Frame};

/// How long an edge remembers a revocation it heard live; by then the projection has it.
const REVOKED_MEMORY: Duration = Duration::from_secs(600);

/// The connections of this edge, by id and by user.
#[derive(Debug, Default)]
pub(super) struct Registry {
    conns: HashMap<ConnId, ConnHandle>,
    /// A user's connections here: a few at most, so a list (every user connected here has an
    /// entry: it is kept small).
    by_user: HashMap<UserId, Vec<ConnId>>,
    /// Sessions revoked recently (all of a user's: no device), and when this edge heard of it.
    revoked: HashMap<(UserId, Option<DeviceId>), Instant>,
}

impl Registry {
    /// Adds a connection.
    pub fn add(&mut self, conn: ConnHandle) {
        self.by_user
            .entry(conn.user.clone())
            .or_default()
            .push(conn.id);
        self.conns.insert(conn.id, conn);
    }

    /// Removes a connection; returns its user if it was that user's last one here.
    pub fn remove(&mut self, id: ConnId) -> Option<UserId> {
        let conn = self.conns.remove(&id)?;
        let conns = self.by_user.get_mut(&conn.user)?;
        conns.retain(|c| *c != id);
        if !conns.is_empty() {
            return None;
        }
        self.by_user.remove(&conn.user);
        Some(conn.user)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn get(&self, id: ConnId) -> Option<&ConnHandle> {
        self.conns.get(&id)
    }

    /// The ids of `user`'s connections here.
    pub fn conns_of(&self, user: &UserId) -> impl Iterator<Item = ConnId> + '_ {
        self.by_user.get(user).into_iter().flatten().copied()
    }

    /// Every user connected here, with how many connections they have.
    pub fn users(&self) -> impl Iterator<Item = (&UserId, usize)> + '_ {
        self.by_user.iter().map(|(user, conns)| (user, conns.len()))
    }

    /// Queues `frame` to every connection of `user`.
    pub fn push_user(&self, user: &UserId, frame: &Frame) {
        for id in self.conns_of(user) {
            if let Some(conn) = self.conns.get(&id) {
                conn.push(frame.clone());
            }
        }
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: u16) {
        for conn in self.conns.values() {
            conn.close_with(code);
        }
    }

    /// Closes the connections of a revoked session (every session of the user with no
    /// `device`) and remembers the revocation for [`REVOKED_MEMORY`].
    pub fn revoke(&mut self, user: &UserId, device: Option<&DeviceId>) {
        let now = Instant::now();
        self.revoked
            .retain(|_, at| now.duration_since(*at) < REVOKED_MEMORY);
        self.revoked.insert((user.clone(), device.cloned()), now);
        for conn in self.conns.values() {
            if &conn.user == user && device.is_none_or(|d| &conn.device == d) {
                conn.close_with(close::REVOKED);
            }
        }
    }

    /// Whether the session of `device` (or every session of the user) was revoked lately.
    pub fn revoked(&self, user: &UserId, device: &DeviceId) -> bool {
        self.revoked
            .contains_key(&(user.clone(), Some(device.clone())))
            || self.revoked.contains_key(&(user.clone(), None))
    }
}
