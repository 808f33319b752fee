//! NATS locked down, against a real nats-server: every identity is refused what its job does
//! not need, nobody connects without credentials, TLS protects client connections, and the
//! edge forwards nothing to a socket that it did not build itself.

use std::time::Duration;

use anchorage::nats_auth::{EDGE, OPERATOR, PROJECTOR};
use anchorage_protocol::request::{AddMembers, MembersSync};
use anchorage_protocol::{MembersChange, MembersChanged, Push, ReplyBody, ServerFrame};
use anchorage_tests::{
    TestNats, TestStack, WsClient, create_group, credentials, eventually, fresh_database, group_id,
    nats_client, send_message, sync, test_config, user_ids, within,
};
use async_nats::jetstream;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

/// A client signed in as `user` that reports the server's errors (permission violations).
async fn client_with_errors(
    url: &str,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let password = credentials().password(user).unwrap().to_owned();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user.to_owned(), password)
        .custom_inbox_prefix(anchorage::nats_auth::inbox_prefix(user))
        .request_timeout(Some(Duration::from_millis(750)))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, rx)
}

/// Waits for a permissions violation naming `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    within(Duration::from_secs(5), "a permissions violation", async {
        loop {
            let e = errors.recv().await.unwrap();
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no permissions violation for {subject}"));
}

async fn js_publish_fails(js: &jetstream::Context, subject: &str) {
    let outcome = match js
        .publish(subject.to_owned(), Bytes::from_static(b"{}"))
        .await
    {
        Ok(ack) => ack.await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(outcome.is_err(), "{subject} was accepted");
}

#[tokio::test]
async fn every_identity_is_refused_what_its_job_does_not_need() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let url = nats.url();

    // The edge: no API keys, no events of other systems, no live or notify subjects, no
    // stream administration, nobody else's replies.
    let (edge, mut errors) = client_with_errors(&url, EDGE).await;
    let js = jetstream::new(edge.clone());
    for subject in [
        "admin.apikey.0123456789abcdef",
        "ext.crm.user.created",
        "dlq.MESSAGES",
    ] {
        js_publish_fails(&js, subject).await;
    }
    // A forged progress announcement would let an edge decide on a projection that has not
    // applied what it says: only the projector announces.
    for subject in ["live.msg.g", "notify.grp.g", "notify.progress.membership"] {
        edge.publish(subject, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        edge.flush().await.unwrap();
        violation(&mut errors, subject).await;
    }
    assert!(
        js.create_stream(jetstream::stream::Config {
            name: "ROGUE".into(),
            subjects: vec!["rogue.>".into()],
            ..Default::default()
        })
        .await
        .is_err()
    );
    assert!(js.delete_stream("MESSAGES").await.is_err());
    let _sub = edge.subscribe("_INBOX_projector.>").await.unwrap();
    violation(&mut errors, "_INBOX_projector.>").await;

    // The projector: no live subjects, no read markers, no stream administration.
    let (projector, mut errors) = client_with_errors(&url, PROJECTOR).await;
    let js = jetstream::new(projector.clone());
    let _sub = projector.subscribe("live.>").await.unwrap();
    violation(&mut errors, "live.>").await;
    js_publish_fails(&js, "read.alice.g").await;
    assert!(js.delete_stream("MESSAGES").await.is_err());

    // An integration: its own ext subjects only, and consumers named after it on the streams
    // it was given.
    let (crm, mut errors) = client_with_errors(&url, "ext_crm").await;
    let js = jetstream::new(crm.clone());
    for subject in ["ext.other.user.created", "msg.g", "grp.g", "user.alice"] {
        js_publish_fails(&js, subject).await;
    }
    for subject in [
        "live.msg.>",
        "live.grp.>",
        "_INBOX_edge.>",
        "notify.grp.>",
        "notify.progress.>",
    ] {
        let _sub = crm.subscribe(subject).await.unwrap();
        violation(&mut errors, subject).await;
    }
    crm.publish("notify.progress.messages", Bytes::from_static(b"999999"))
        .await
        .unwrap();
    crm.flush().await.unwrap();
    violation(&mut errors, "notify.progress.messages").await;
    let messages = js.get_stream_no_info("MESSAGES").await.unwrap();
    assert!(
        messages
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("crm".into()),
                ..Default::default()
            })
            .await
            .is_err(),
        "nobody's messages"
    );
    let membership = js.get_stream_no_info("MEMBERSHIP").await.unwrap();
    assert!(
        membership
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("someone_else".into()),
                ..Default::default()
            })
            .await
            .is_err(),
        "only consumers named after the integration"
    );

    // Without credentials, or with a wrong password, nothing connects.
    assert!(async_nats::connect(&url).await.is_err());
    assert!(
        async_nats::ConnectOptions::new()
            .user_and_password(OPERATOR.into(), "guess".into())
            .connect(&url)
            .await
            .is_err()
    );
    stack.stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_integration_examples_work_with_the_integration_identity() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let crm = nats_client(&nats.url(), "ext_crm").await.unwrap();
    let js = jetstream::new(crm);
    // INTEGRATION.md: publish an event with JetStream, its source and id as Nats-Msg-Id.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "crm:u-1");
    let event = json!({"id": "u-1", "type": "user.created", "v": 1,
                       "occurred_at": 1763840000000u64,
                       "payload": {"user": "alice", "display_name": "Alice"}});
    js.publish_with_headers(
        "ext.crm.user.created",
        headers,
        Bytes::from(event.to_string()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let store = &stack.stack.store;
    eventually(Duration::from_secs(20), "alice created", || async {
        store.user_active("alice").await.ok()?.then_some(())
    })
    .await
    .unwrap();
    // INTEGRATION.md: a durable consumer of its own on MEMBERSHIP, read and acknowledged.
    let (mut owner, _) = WsClient::signed_in(stack.edge_addr(), "owner", "d")
        .await
        .unwrap();
    owner
        .ok(create_group("support", "Support", &[]))
        .await
        .unwrap();
    let consumer = js
        .get_stream_no_info("MEMBERSHIP")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("crm".into()),
            filter_subject: "grp.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    use futures::StreamExt;
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let first = batch.next().await.unwrap().unwrap();
    assert_eq!(first.subject.as_str(), "grp.support");
    first.ack().await.unwrap();
    stack.stack.stop().await.unwrap();
}

#[tokio::test]
async fn the_stack_runs_over_tls_and_plain_connections_are_refused() {
    let certs = tempfile::tempdir().unwrap();
    let tls = anchorage_tests::certificates(certs.path());
    let ca = tls.ca.clone();
    let nats = TestNats::start_with_tls(Some(tls)).await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    config.nats.tls_ca = Some(ca);
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.request(create_group("g", "G", &[])).await.unwrap();
    alice
        .ack(send_message("g", "m1", json!("hi")))
        .await
        .unwrap();
    let page = alice.messages(sync("g", 0)).await.unwrap();
    assert_eq!(page.messages[0].body, "hi", "{page:?}");
    // Credentials alone, without TLS, get nowhere.
    let password = credentials().password(OPERATOR).unwrap().to_owned();
    let plain = async_nats::ConnectOptions::new()
        .user_and_password(OPERATOR.into(), password)
        .connect(nats.url())
        .await;
    assert!(plain.is_err(), "a plain-text connection was accepted");
    stack.stack.stop().await.unwrap();
}

#[tokio::test]
async fn forged_notifications_never_reach_a_socket() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice
        .request(create_group("g", "G", &["bob"]))
        .await
        .unwrap();
    let store = &stack.stack.store;
    eventually(Duration::from_secs(20), "the group projected", || async {
        store.group_row("g").await.ok()?.map(|_| ())
    })
    .await
    .unwrap();
    let synced = alice
        .reply(MembersSync {
            group: group_id("g"),
            epoch: None,
            version: 0,
            digest: None,
            compact: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(
            synced,
            ReplyBody::MembersUnchanged
                | ReplyBody::MembersDiff(_)
                | ReplyBody::MembersPage(_)
                | ReplyBody::MembersBuckets(_)
        ),
        "{synced:?}"
    );
    // Even someone allowed to publish there (the operator) cannot put arbitrary frames, or
    // another group's notification, on alice's socket.
    let operator = nats_client(&nats.url(), OPERATOR).await.unwrap();
    let other_group = ServerFrame::Push(Push::MembersChanged(MembersChanged {
        group: group_id("other"),
        version: 99,
        prev: 1,
        digest: "0-0".into(),
        change: MembersChange::default(),
    }));
    for payload in [
        // A forged field no server frame has.
        r#"{"type":"welcome","injected":true}"#.to_owned(),
        "not json".to_owned(),
        other_group.to_json(),
    ] {
        operator
            .publish("notify.grp.g", Bytes::from(payload))
            .await
            .unwrap();
    }
    operator.flush().await.unwrap();
    // A real change still arrives, and it is the first thing alice sees.
    let added = alice
        .ok(AddMembers {
            group: group_id("g"),
            members: user_ids(&["carol"]),
        })
        .await
        .unwrap();
    let first: MembersChanged = alice.pushed(|_| true).await.unwrap();
    assert_eq!(first.group.as_str(), "g", "{first:?}");
    assert_eq!(Some(first.version), added.seq, "the real change: {first:?}");
    alice.ping().await.unwrap();
    // Nothing else reached the socket: no frame of another group, and no welcome (nor any
    // other answer) nobody asked for.
    for p in alice.pending_pushes() {
        assert!(
            !matches!(p, Push::MembersChanged(c) if c.group.as_str() == "other"),
            "{p:?}"
        );
    }
    assert!(
        alice.pending_answers().is_empty(),
        "{:?}",
        alice.pending_answers()
    );
    stack.stack.stop().await.unwrap();
}
