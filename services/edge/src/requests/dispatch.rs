//! The dispatcher: one decoded request in, its answer (with the request's id) out.

use anchorage_protocol::request::Hello;
use anchorage_protocol::{MembersDelta, ReplyBody, Request, RequestBody, RequestId, ServerFrame};

use super::rules::GroupCommand;
use super::send::AckFuture;
use super::session::Session;

impl Session {
    /// Answers `hello`: the conversations changed since the client's anchors.
    pub async fn hello(&mut self, id: RequestId, hello: &Hello) {
        let answer = self.welcome(hello).await.map(Into::into);
        self.answer(id, answer).await;
    }

    /// Handles one request and queues its answer — except a send: its answer is returned, for
    /// the caller to queue after the answers of the sends before it.
    #[tracing::instrument(level = "debug", skip_all, fields(
        conn = self.conn.id,
        user = %self.claims.sub,
        device = %self.claims.device,
        request = request.id,
        kind = request.body.type_name(),
    ))]
    pub async fn handle(&mut self, request: Request) -> Option<AckFuture> {
        let Request { id, body } = request;
        let kind = body.type_name();
        let positional = matches!(&body, RequestBody::MembersSync(r) if r.compact);
        let answer = match body {
            RequestBody::Send(send) => return Some(self.send(id, send).await),
            RequestBody::Ping {} => Ok(ReplyBody::Pong),
            RequestBody::Hello(hello) => match self.same_sign_in(&hello) {
                Ok(()) => self.welcome(&hello).await.map(Into::into),
                Err(err) => Err(err),
            },
            RequestBody::Sync(r) => self.sync(r).await.map(Into::into),
            RequestBody::History(r) => self.history(r).await.map(Into::into),
            RequestBody::Read(r) => self.read(r).await.map(Into::into),
            RequestBody::Received(r) => self.received(r).await.map(Into::into),
            RequestBody::OpenDirect(r) => self.open_direct(r).await.map(Into::into),
            RequestBody::CreateGroup(r) => self.create_group(r).await.map(Into::into),
            RequestBody::Leave(r) => self.leave(r).await.map(Into::into),
            RequestBody::AddMembers(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::RemoveMembers(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::SetRole(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::MuteMember(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::SetNickname(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::UpdateGroup(r) => self.group_command(r.group.clone(), r.into()).await,
            RequestBody::DismissGroup(r) => {
                self.group_command(r.group, GroupCommand::Dismiss).await
            }
            RequestBody::GroupVersions(r) => self.group_versions(r).await.map(Into::into),
            RequestBody::MembersSync(r) => self.members_sync(r).await,
            RequestBody::MembersFetch(r) => self.members_fetch(r).await.map(Into::into),
            RequestBody::MembersSketch(r) => self.members_sketch(r).await.map(Into::into),
            RequestBody::MembersSyncBatch(r) => self.members_sync_batch(r).await.map(Into::into),
            RequestBody::MembersSearch(r) => self.members_search(r).await.map(Into::into),
            RequestBody::MembersUnsubscribe(r) => self.members_unsubscribe(r).map(Into::into),
            RequestBody::Edit(r) => self.edit(r).await.map(Into::into),
            RequestBody::Revoke(r) => self.revoke(r).await.map(Into::into),
            RequestBody::React(r) => self.react(r).await.map(Into::into),
            RequestBody::Pin(r) => self.pin(r).await.map(Into::into),
            RequestBody::Reactors(r) => self.reactors(r).await.map(Into::into),
            RequestBody::Edits(r) => self.edits(r).await.map(Into::into),
            RequestBody::View(r) => self.view(r).map(Into::into),
            RequestBody::Unview(r) => self.unview(r).map(Into::into),
            RequestBody::Typing(r) => self.typing(r).await.map(Into::into),
            RequestBody::SetPrefs(r) => self.set_prefs(r).await.map(Into::into),
            RequestBody::Hide(r) => self.hide(r).await.map(Into::into),
            RequestBody::SetPrivacy(r) => self.set_privacy(r).await.map(Into::into),
            RequestBody::UserState(r) => self.user_state(r).await.map(Into::into),
            RequestBody::Receipts(r) => self.receipts(r).await.map(Into::into),
            RequestBody::Presence(r) => self.presence(r).await.map(Into::into),
            RequestBody::Search(r) => self.search(r).await.map(Into::into),
            RequestBody::SetPush(r) => self.set_push(r).await.map(Into::into),
            RequestBody::RemovePush(r) => self.remove_push(r).await.map(Into::into),
            RequestBody::Upload(r) => self.upload(r).await.map(Into::into),
            RequestBody::Download(r) => self.download(r).await.map(Into::into),
        };
        let code = match &answer {
            Ok(_) => "ok",
            Err(err) => err.code().as_str(),
        };
        crate::metrics::request(kind, code);
        match answer {
            // Only `members_sync` answers a single diff.
            Ok(ReplyBody::MembersDiff(diff)) if positional => {
                self.reply(ServerFrame::Delta(MembersDelta::of(id, diff)))
                    .await;
            }
            answer => self.answer(id, answer).await,
        }
        None
    }
}
