//! Message search from outside, written from PROTOCOL.md, API.md and INTEGRATION.md: the
//! stretches of membership through every way a message enters (sends, the API, other systems,
//! removals racing sends, dismissal, upgrades), hostile queries, the index in step with the
//! history through edits, revokes and concurrent changes, rebuilds (also partitioned) and the
//! server API's refusals.

use std::collections::BTreeSet;
use std::time::Duration;

use anchorage_protocol::request::{
    AddMembers, Edit, History, OpenDirect, RemoveMembers, Revoke, Search,
};
use anchorage_protocol::{
    ErrorCode, MembershipChanged, Push, ReplyBody, SearchResults, ServerFrame,
};
use anchorage_schema::admin::Scope;
use anchorage_schema::subjects::stream;
use anchorage_store::text::Query;
use anchorage_tests::{
    HttpAnswer, TestNats, TestStack, WsClient, api_key, conv_id, create_group, eventually,
    fresh_database, group_id, http, nats_client, projected, send_message, user_id, user_ids,
};
use serde_json::{Value, json};

fn search(query: &str) -> Search {
    Search {
        query: query.into(),
        conv: None,
        before: 0,
        limit: Some(50),
    }
}

async fn results(c: &mut WsClient, s: Search) -> SearchResults {
    match c.reply(s).await.unwrap() {
        ReplyBody::SearchResults(r) => r,
        other => panic!("not search results: {other:?}"),
    }
}

async fn found(c: &mut WsClient, query: &str) -> Vec<u64> {
    results(c, search(query))
        .await
        .results
        .iter()
        .map(|f| f.message.seq)
        .collect()
}

async fn joined(c: &mut WsClient, conv: &str, yes: bool) {
    c.pushed(|m: &MembershipChanged| m.conv.as_str() == conv && m.joined == yes)
        .await
        .unwrap();
}

async fn say(c: &mut WsClient, conv: &str, id: &str, body: Value) -> u64 {
    c.ack(send_message(conv, id, body)).await.unwrap().seq
}

/// A stack, and alice in her group `ops`.
async fn alice_in_ops() -> (TestNats, TestStack, WsClient) {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(t.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.ok(create_group("ops", "Ops", &[])).await.unwrap();
    (nats, t, alice)
}

/// The whole history of `conv` as `c` sees it, newest first.
async fn history(c: &mut WsClient, conv: &str) -> Vec<anchorage_protocol::Message> {
    let mut out = Vec::new();
    let mut before = 0;
    loop {
        let page = c
            .messages(History {
                conv: conv_id(conv),
                before,
                limit: Some(500),
            })
            .await
            .unwrap();
        let Some(last) = page.messages.last() else {
            return out;
        };
        before = last.seq;
        out.extend(page.messages);
        if !page.more {
            return out;
        }
    }
}

/// The text search sees in a body (PROTOCOL.md "Which text").
fn text_of(body: &Value) -> Option<&str> {
    match body {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("text").and_then(Value::as_str),
        _ => None,
    }
}

async fn api_get(addr: std::net::SocketAddr, key: &str, path: &str) -> HttpAnswer {
    let auth = format!("Bearer {key}");
    http(addr, "GET", path, &[("authorization", &auth)], None)
        .await
        .unwrap()
}

fn api_seqs(page: &HttpAnswer) -> Vec<u64> {
    page.body["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["message"]["seq"].as_u64().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// An event from another system (INTEGRATION.md), as subject, msg id, payload.
fn ext(type_name: &str, id: &str, payload: Value) -> (String, String, Vec<u8>) {
    let body = json!({"id": id, "type": type_name, "v": 1, "occurred_at": 1_763_840_000_000u64,
                      "payload": payload});
    (
        format!("ext.crm.{type_name}"),
        format!("crm:{id}"),
        body.to_string().into_bytes(),
    )
}

async fn ingest(nats_url: &str, events: &[(String, String, Vec<u8>)]) {
    let client = nats_client(nats_url, "operator").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut acks = Vec::new();
    for (subject, id, payload) in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        acks.push(
            js.publish_with_headers(subject.clone(), headers, payload.clone().into())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// 1. Membership windows
// ---------------------------------------------------------------------------------------

/// INTEGRATION.md: an event may refer to what an earlier one created. A system post into a
/// group created (or joined) by the events just before it reached those members (history
/// shows it to them), and they find it.
#[tokio::test]
async fn ingested_post_right_after_ingested_group_is_findable_by_its_members() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    ingest(
        &nats.url(),
        &[
            ext(
                "user.created",
                "u1",
                json!({"user": "ina", "display_name": "Ina"}),
            ),
            ext(
                "user.created",
                "u2",
                json!({"user": "ivo", "display_name": "Ivo"}),
            ),
            ext(
                "user.created",
                "u3",
                json!({"user": "ida", "display_name": "Ida"}),
            ),
            ext(
                "group.created",
                "g1",
                json!({"group": "crmgrp", "owner": "ina", "title": "CRM", "members": ["ivo"]}),
            ),
            ext(
                "message.system_posted",
                "p1",
                json!({"conv": "crmgrp", "body": "ticket quokka opened"}),
            ),
            ext(
                "group.members_added",
                "a1",
                json!({"group": "crmgrp", "members": ["ida"]}),
            ),
            ext(
                "message.system_posted",
                "p2",
                json!({"conv": "crmgrp", "body": "ticket wombat opened"}),
            ),
        ],
    )
    .await;
    let (mut ina, _) = WsClient::signed_in(addr, "ina", "d").await.unwrap();
    let (mut ida, _) = WsClient::signed_in(addr, "ida", "d").await.unwrap();
    let store = t.stack.store.clone();
    let posts = eventually(Duration::from_secs(20), "both posts projected", || {
        let store = store.clone();
        async move {
            let rows = store
                .messages_before_for("crmgrp", 0, 10, "ina")
                .await
                .ok()?;
            (rows.len() >= 2).then_some(rows)
        }
    })
    .await
    .unwrap();
    let (p2, p1) = (posts[0].seq, posts[1].seq);
    // History shows both to the members.
    let h: Vec<u64> = history(&mut ina, "crmgrp")
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(h, [p2, p1]);
    let h: Vec<u64> = history(&mut ida, "crmgrp")
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert!(h.contains(&p2), "{h:?}");

    let mut problems = Vec::new();
    for (who, c, query, seq) in [
        ("ina (creator)", &mut ina, "quokka", p1),
        ("ida (added just before)", &mut ida, "wombat", p2),
    ] {
        let f = found(c, query).await;
        if f != [seq] {
            problems.push(format!(
                "{who} searching {query:?} found {f:?}, expected [{seq}]"
            ));
        }
    }
    let (key, _) = api_key(&nats.url(), Scope::Read, 1000).await;
    let page = api_get(addr, &key, "/v1/users/ivo/search?q=quokka").await;
    if api_seqs(&page) != [p1] {
        problems.push(format!("ivo (member at creation) via API: {:?}", page.body));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A 1:1 conversation: the peer finds what the other wrote.
#[tokio::test]
async fn direct_conversation_is_searchable() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    let (mut eve, _) = WsClient::signed_in(addr, "eve", "d").await.unwrap();
    let dm = alice
        .ok(OpenDirect {
            peer: user_id("bob"),
        })
        .await
        .unwrap()
        .conv
        .unwrap();
    joined(&mut bob, dm.as_str(), true).await;
    let s = say(&mut alice, dm.as_str(), "d1", json!("secret pangolin plan")).await;
    projected(&t.stack.store, "messages", s).await;
    assert_eq!(found(&mut bob, "pangolin").await, [s]);
    assert_eq!(found(&mut alice, "pangolin").await, [s]);
    assert_eq!(found(&mut eve, "pangolin").await, Vec::<u64>::new());
    let e = eve
        .refused(Search {
            conv: Some(dm.clone()),
            ..search("pangolin")
        })
        .await
        .unwrap();
    assert_eq!(e.code, ErrorCode::Forbidden);
}

/// Removal while sends are in flight: a removed member finds exactly the messages decided
/// before the removal (PROTOCOL.md), which include every one pushed to them live.
#[tokio::test]
async fn removal_racing_sends_finds_what_was_decided_before_it() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "laptop").await.unwrap();
    let (mut admin, _) = WsClient::signed_in(addr, "alice", "phone").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    alice
        .ok(create_group("race", "Race", &["bob"]))
        .await
        .unwrap();
    joined(&mut bob, "race", true).await;
    const N: u64 = 60;
    for k in 0..N {
        alice
            .send_request(
                1000 + k,
                send_message("race", &format!("r{k}"), json!(format!("burst number {k}"))),
            )
            .await
            .unwrap();
        if k == N / 3 {
            admin
                .send_request(
                    1,
                    RemoveMembers {
                        group: group_id("race"),
                        members: user_ids(&["bob"]),
                    },
                )
                .await
                .unwrap();
        }
    }
    let mut last = 0;
    for _ in 0..N {
        if let ServerFrame::Reply(r) = alice.next_answer().await.unwrap()
            && let ReplyBody::Ack(a) = r.body
        {
            last = last.max(a.seq);
        }
    }
    let removal = match admin.next_answer().await.unwrap() {
        ServerFrame::Reply(r) => match r.body {
            ReplyBody::Ok(done) => done.seq.unwrap(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    projected(&t.stack.store, "messages", last).await;
    // The messages decided before the removal, by the position each was decided at.
    let bus = &t.stack.bus;
    let mut reader = bus
        .read_stream(stream::MESSAGES, anchorage_schema::Seq(1))
        .await
        .unwrap();
    let mut before_removal = BTreeSet::new();
    loop {
        let e = reader.next().await.unwrap();
        if e.subject == "msg.race" && e.membership.unwrap() < removal {
            before_removal.insert(e.seq.0);
        }
        if e.seq.0 >= last {
            break;
        }
    }
    // Everything bob received live, until the socket goes quiet.
    let mut delivered = BTreeSet::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(3), bob.next_frame()).await;
        let Ok(Ok(frame)) = frame else { break };
        if let ServerFrame::Push(Push::Message(m)) = frame {
            delivered.insert(m.message.seq);
        }
    }
    for p in bob.pending_pushes() {
        if let Push::Message(m) = p {
            delivered.insert(m.message.seq);
        }
    }
    let searched: BTreeSet<u64> = found(&mut bob, "burst").await.into_iter().collect();
    // at most 50 per page: compare on what a page can hold
    let searched_all: BTreeSet<u64> = {
        let mut all = searched.clone();
        let mut before = *searched.iter().next().unwrap_or(&0);
        while before > 0 {
            let r = results(
                &mut bob,
                Search {
                    before,
                    ..search("burst")
                },
            )
            .await;
            if r.results.is_empty() {
                break;
            }
            before = r.results.last().unwrap().message.seq;
            all.extend(r.results.iter().map(|f| f.message.seq));
        }
        all
    };
    let delivered_not_found: Vec<_> = delivered.difference(&searched_all).collect();
    assert!(
        delivered_not_found.is_empty(),
        "delivered but not found: {delivered_not_found:?}"
    );
    assert_eq!(searched_all, before_removal);
}

/// Nothing posted after a group's dismissal (refused by the API, set aside by ingest) is
/// findable by its former members, what was sent before is; a deleted user's search is refused
/// on the API.
#[tokio::test]
async fn dismissed_group_and_deleted_user() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    let (admin_key, _) = api_key(&nats.url(), Scope::Admin, 1000).await;
    let auth = format!("Bearer {admin_key}");
    for u in ["alice", "bob"] {
        let r = http(
            addr,
            "POST",
            "/v1/users",
            &[("authorization", &auth)],
            Some(&json!({"user": u, "display_name": u})),
        )
        .await
        .unwrap();
        assert!(r.status < 300, "{} {:?}", r.status, r.body);
    }
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    alice
        .ok(create_group("gone", "Gone", &["bob"]))
        .await
        .unwrap();
    joined(&mut bob, "gone", true).await;
    let s = say(&mut alice, "gone", "g1", json!("narwhal before dismissal")).await;
    projected(&t.stack.store, "messages", s).await;
    let r = http(
        addr,
        "DELETE",
        "/v1/groups/gone",
        &[("authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert!(r.status < 300, "{} {:?}", r.status, r.body);
    // A system post after the dismissal is refused by the API, and set aside by ingest.
    let r = http(
        addr,
        "POST",
        "/v1/conversations/gone/messages",
        &[("authorization", &auth)],
        Some(&json!({"body": "narwhal after dismissal"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{:?}", r.body);
    ingest(
        &nats.url(),
        &[ext(
            "message.system_posted",
            "late1",
            json!({"conv": "gone", "body": "narwhal via ingest after dismissal"}),
        )],
    )
    .await;
    let refused = eventually(
        Duration::from_secs(20),
        "the late post set aside",
        || async {
            let letters = anchorage_tests::dead_letters(&nats.url()).await.ok()?;
            letters.into_iter().find(|h| {
                h.get("Anchorage-Dlq-Code")
                    .is_some_and(|c| c == "unknown_conversation")
            })
        },
    )
    .await;
    assert!(refused.is_ok(), "{refused:?}");
    // Bob finds what was sent while the group lived, and only that.
    assert_eq!(found(&mut bob, "narwhal").await, [s]);
    // A deleted user's search: refused, never their messages.
    let r = http(
        addr,
        "DELETE",
        "/v1/users/bob",
        &[("authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert!(r.status < 300, "{} {:?}", r.status, r.body);
    let gone = eventually(
        Duration::from_secs(20),
        "bob's deletion projected",
        || async {
            let page = api_get(addr, &admin_key, "/v1/users/bob/search?q=narwhal").await;
            (page.status != 200).then_some(page.status)
        },
    )
    .await
    .unwrap();
    assert!(gone == 404 || gone == 410, "{gone}");
}

/// Upgrading a database that already holds messages: the migration's own statement gives its
/// members their stretches, and the stored messages have no position. A member added after
/// the group was created finds the old messages the history shows them.
#[tokio::test]
async fn upgraded_database_finds_old_messages_for_members_added_later() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(addr, "carol", "d").await.unwrap();
    alice.ok(create_group("old", "Old", &[])).await.unwrap();
    alice
        .ok(AddMembers {
            group: group_id("old"),
            members: user_ids(&["carol"]),
        })
        .await
        .unwrap();
    joined(&mut carol, "old", true).await;
    let s = say(&mut alice, "old", "o1", json!("legacy armadillo report")).await;
    projected(&t.stack.store, "messages", s).await;
    assert_eq!(found(&mut carol, "armadillo").await, [s]);

    // The state the migration leaves: no positions on the stored messages, the stretches its
    // own statement writes.
    let migration = include_str!("../../../shared/store/migrations/0011_search.sql");
    let stretches = &migration[migration.find("INSERT INTO member_spans").unwrap()..];
    let db = sqlx::AnyPool::connect(&t.config.database.url)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET membership_seq = NULL; DELETE FROM member_spans; {stretches}"
    )))
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    let h: Vec<u64> = history(&mut carol, "old")
        .await
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(h, [s], "history shows the old message to carol");
    assert_eq!(
        found(&mut carol, "armadillo").await,
        [s],
        "after the upgrade carol (added after creation) cannot find the message she received"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Hostile queries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_queries_are_words_or_precise_refusals() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let (mut mallory, _) = WsClient::signed_in(addr, "mallory", "d").await.unwrap();
    alice.ok(create_group("ops", "Ops", &[])).await.unwrap();
    mallory.ok(create_group("mal", "Mal", &[])).await.unwrap();
    let mixed = "Grüße aus Köln — 東京タワー 🚀 ﬁnal №9 x² Ｄｅｐｌｏｙ ΣΊΣΥΦΟΣ İstanbul";
    let m1 = say(&mut alice, "ops", "m1", json!(mixed)).await;
    let m2 = say(&mut alice, "ops", "m2", json!("deploy the thing NEAR noon")).await;
    let mm = say(&mut mallory, "mal", "mm", json!("mallory private")).await;
    projected(&t.stack.store, "messages", m1.max(m2).max(mm)).await;

    let long_word = "a".repeat(256);
    let cjk_run: String = "東京都庁".chars().cycle().take(256).collect();
    let sixteen: String = (0..16).map(|i| format!("deploy{i} ")).collect();
    let hostile: Vec<String> = vec![
        "deploy\u{0}".into(),
        "\u{0}\u{1}\u{7f}deploy\u{1b}[31m".into(),
        "deploy\\".into(),
        "\\'deploy\\'".into(),
        "deploy'||'".into(),
        "deploy\"".into(),
        "\"\"\"".into(),
        "deploy OR mallory".into(),
        "deploy NOT thing".into(),
        "NOT deploy".into(),
        "deploy + mallory".into(),
        "conv_id:mal".into(),
        "terms:mallory".into(),
        "{conv_id} : mal".into(),
        "rowid".into(),
        "*".into(),
        "deploy*".into(),
        "d*".into(),
        "'#mal'".into(),
        "#mal".into(),
        "mal".into(),
        "deploy & !thing".into(),
        "deploy <2> noon".into(),
        "deploy:A".into(),
        "deploy:*B".into(),
        "\u{202e}yolped".into(),
        "de\u{200b}ploy".into(),
        "ＤＥＰＬＯＹ".into(),
        "🚀".into(),
        "🚀🚀 deploy".into(),
        "\u{0301}\u{0301}".into(),
        "ΣΊΣΥΦΟΣ".into(),
        "σισυφος".into(),
        "istanbul".into(),
        "x2".into(),
        "fin".into(),
        long_word.clone(),
        cjk_run.clone(),
        sixteen.clone(),
        mixed.into(),
        "\u{feff}".into(),
        "\u{d7ff}\u{e000}\u{10ffff}".into(),
    ];
    let mut problems = Vec::new();
    for q in &hostile {
        let frame = alice.request(search(q)).await.unwrap();
        match frame {
            ServerFrame::Reply(r) => match r.body {
                ReplyBody::SearchResults(res) => {
                    for f in &res.results {
                        if f.message.conv.as_str() != "ops" {
                            problems.push(format!("{q:?} returned mallory's {:?}", f.message));
                        }
                    }
                }
                other => problems.push(format!("{q:?}: {other:?}")),
            },
            ServerFrame::Error(e) if e.code == ErrorCode::InvalidRequest => {}
            other => problems.push(format!("{q:?}: {other:?}")),
        }
    }
    // Words of the mixed-script text each find it; the whole text finds it.
    for q in [
        "grüße",
        "koln",
        "東京",
        "タワー",
        "final",
        "deploy",
        "ΣΊΣΥΦΟΣ",
        "istanbul",
        mixed,
    ] {
        let f = found(&mut alice, q).await;
        if !f.contains(&m1) {
            problems.push(format!("{q:?} did not find the mixed text: {f:?}"));
        }
    }
    // Whole raw frames: the query with a NUL as JSON escape and as a lone surrogate.
    for raw in [
        r#"{"type":"search","id":9001,"query":"deploy\u0000noon"}"#,
        r#"{"type":"search","id":9002,"query":"\ud800deploy"}"#,
        r#"{"type":"search","id":9003,"query":"deploy","limit":0}"#,
        r#"{"type":"search","id":9004,"query":"deploy","limit":4294967295}"#,
        r#"{"type":"search","id":9005,"query":"deploy","before":18446744073709551615}"#,
        r#"{"type":"search","id":9006,"query":"deploy","before":-1}"#,
        r#"{"type":"search","id":9007,"query":"deploy","conv":"mal"}"#,
        r#"{"type":"search","id":9008,"query":"deploy","conv":""}"#,
        r#"{"type":"search","id":9009,"query":"deploy","conv":"../x"}"#,
        r#"{"type":"search","id":9010,"query":["deploy"]}"#,
        r#"{"type":"search","id":9011,"query":"deploy","conv":null}"#,
    ] {
        alice.send_text(raw).await.unwrap();
        let frame = alice.next_answer().await.unwrap();
        if let ServerFrame::Error(e) = &frame
            && e.code == ErrorCode::Internal
        {
            problems.push(format!("{raw}: internal error {e:?}"));
        }
        if let ServerFrame::Reply(r) = &frame
            && let ReplyBody::SearchResults(res) = &r.body
            && res.results.iter().any(|f| f.message.conv.as_str() != "ops")
        {
            problems.push(format!("{raw}: another conversation's message"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `before` beyond 2^63 on the WebSocket is refused, or means "before everything" — never an
/// empty page as if nothing matched.
#[tokio::test]
async fn ws_before_beyond_i64_is_not_an_empty_answer() {
    let (_nats, t, mut alice) = alice_in_ops().await;
    let s = say(&mut alice, "ops", "m1", json!("deploy now")).await;
    projected(&t.stack.store, "messages", s).await;
    let frame = alice
        .request(Search {
            before: u64::MAX,
            ..search("deploy")
        })
        .await
        .unwrap();
    match frame {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest),
        ServerFrame::Reply(r) => match r.body {
            ReplyBody::SearchResults(res) => assert_eq!(
                res.results
                    .iter()
                    .map(|f| f.message.seq)
                    .collect::<Vec<_>>(),
                [s],
                "every message is before u64::MAX"
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// CJK: a run is found where its characters stand together — `東京都` is not found in
/// `東京、京都` (two runs, whose pairs must not count as neighbours).
#[tokio::test]
async fn cjk_phrase_does_not_span_separate_runs() {
    let (_nats, t, mut alice) = alice_in_ops().await;
    let s = say(&mut alice, "ops", "m1", json!("東京、京都")).await;
    let s2 = say(&mut alice, "ops", "m2", json!("東京都")).await;
    projected(&t.stack.store, "messages", s2).await;
    let r = results(&mut alice, search("東京都")).await;
    let seqs: Vec<u64> = r.results.iter().map(|f| f.message.seq).collect();
    assert_eq!(seqs, [s2], "{s} holds no 東京都");
}

/// Canonically equivalent kana (NFD `か゛` vs NFC `が`, as some input methods write it) and
/// halfwidth kana are one text.
#[tokio::test]
async fn cjk_text_is_normalized_like_words() {
    let (_nats, t, mut alice) = alice_in_ops().await;
    let nfd = say(&mut alice, "ops", "m1", json!("か\u{3099}っこう")).await; // がっこう, NFD
    let half = say(&mut alice, "ops", "m2", json!("ｶﾀｶﾅ")).await;
    projected(&t.stack.store, "messages", half).await;
    let mut problems = Vec::new();
    if found(&mut alice, "がっこう").await != [nfd] {
        problems.push("NFC query does not find NFD text");
    }
    if found(&mut alice, "カタカナ").await != [half] {
        problems.push("fullwidth query does not find halfwidth katakana");
    }
    assert!(problems.is_empty(), "{problems:?}");
}

/// A long text is findable by its first 16,383 terms on both databases alike (PostgreSQL keeps
/// positions up to 16,383): a CJK phrase just within is found, one just beyond is not.
#[tokio::test]
async fn cjk_phrase_deep_in_a_long_text_is_found_within_the_indexed_beginning() {
    let (_nats, t, mut alice) = alice_in_ops().await;
    let within = say(
        &mut alice,
        "ops",
        "m1",
        json!(format!("{}東京都", "a ".repeat(16_000))),
    )
    .await;
    let beyond = say(
        &mut alice,
        "ops",
        "m2",
        json!(format!("{}東京都", "a ".repeat(16_400))),
    )
    .await;
    projected(&t.stack.store, "messages", beyond).await;
    assert_eq!(found(&mut alice, "東京都").await, [within]);
}

// ---------------------------------------------------------------------------------------
// 3. The index in step with the history
// ---------------------------------------------------------------------------------------

/// Words the churn writes; each message's current text holds at most a few.
const CHURN_WORDS: [&str; 8] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa",
];

/// Edits back and forth, text to non-text and back, a revoke racing pipelined edits and
/// concurrent edits from two connections; then, for every word, what `alice` finds against
/// what `history` shows. Returns the disagreements.
async fn index_churn(t: &TestStack) -> (Vec<String>, ()) {
    let addr = t.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "a").await.unwrap();
    let (mut phone, _) = WsClient::signed_in(addr, "alice", "b").await.unwrap();
    alice.ok(create_group("churn", "Churn", &[])).await.unwrap();
    let edit = |seq: u64, body: Value| Edit {
        conv: conv_id("churn"),
        seq,
        body,
    };
    // Back and forth, and through a body without text.
    let m1 = say(&mut alice, "churn", "m1", json!("alpha")).await;
    // A change refers to a message the history holds.
    projected(&t.stack.store, "messages", m1).await;
    for body in [
        json!("beta"),
        json!("alpha"),
        json!({"ciphertext": "gamma"}),
        json!({"text": "delta alpha"}),
    ] {
        alice.ok(edit(m1, body)).await.unwrap();
    }
    // A revoke in the middle of pipelined edits.
    let m2 = say(&mut alice, "churn", "m2", json!("epsilon")).await;
    projected(&t.stack.store, "messages", m2).await;
    for k in 0..20u64 {
        alice
            .send_request(100 + k, edit(m2, json!(format!("zeta{k} zeta"))))
            .await
            .unwrap();
        if k == 10 {
            alice
                .send_request(
                    99,
                    Revoke {
                        conv: conv_id("churn"),
                        seq: m2,
                    },
                )
                .await
                .unwrap();
        }
    }
    for _ in 0..21 {
        alice.next_answer().await.unwrap();
    }
    // Concurrent edits from two connections.
    let m3 = say(&mut alice, "churn", "m3", json!("theta")).await;
    projected(&t.stack.store, "messages", m3).await;
    for k in 0..25u64 {
        alice
            .send_request(200 + k, edit(m3, json!(format!("theta kappa{k}"))))
            .await
            .unwrap();
        phone
            .send_request(200 + k, edit(m3, json!(format!("kappa theta{k}"))))
            .await
            .unwrap();
    }
    for _ in 0..25 {
        alice.next_answer().await.unwrap();
        phone.next_answer().await.unwrap();
    }
    let last = t
        .stack
        .bus
        .stream_state(stream::MESSAGES)
        .await
        .unwrap()
        .last_seq;
    projected(&t.stack.store, "messages", last.0).await;
    let shown = history(&mut alice, "churn").await;
    let mut problems = Vec::new();
    for word in CHURN_WORDS {
        let expected: Vec<u64> = shown
            .iter()
            .filter(|m| !m.revoked)
            .filter(|m| {
                text_of(&m.body).is_some_and(|text| {
                    anchorage_store::text::index_terms(text)
                        .iter()
                        .any(|t| t.starts_with(word))
                })
            })
            .map(|m| m.seq)
            .collect();
        let got = found(&mut alice, word).await;
        if got != expected {
            problems.push(format!("{word}: found {got:?}, history says {expected:?}"));
        }
    }
    (problems, ())
}

/// A rebuild from the streams finds for `users` what the live database finds.
async fn rebuilt_agrees(t: &TestStack, users: &[&str], words: &[&str]) {
    let (_dir, rebuilt, _) = anchorage_tests::rebuilt(&t.config, &t.stack.bus, 7).await;
    for user in users {
        for word in words {
            let query = Query::parse(word).unwrap();
            let search = anchorage_store::search::Search {
                user,
                query: &query,
                conv: None,
                before: 0,
                limit: 50,
            };
            let live = t.stack.store.search(&search).await.unwrap();
            let again = rebuilt.search(&search).await.unwrap();
            assert_eq!(again, live, "{user} searching {word}");
        }
    }
}

#[tokio::test]
async fn edits_and_revokes_keep_the_index_in_step_with_history() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let (problems, _) = index_churn(&t).await;
    assert!(problems.is_empty(), "{problems:#?}");
    rebuilt_agrees(&t, &["alice"], &CHURN_WORDS).await;
}

#[tokio::test]
async fn edits_and_revokes_with_partitioned_projection() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config =
        anchorage_tests::test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    config.projector.message_partitions = 3;
    let t = TestStack::start_with(config, db_dir).await.unwrap();
    let (problems, _) = index_churn(&t).await;
    assert!(problems.is_empty(), "{problems:#?}");
    rebuilt_agrees(&t, &["alice"], &CHURN_WORDS).await;
}

// ---------------------------------------------------------------------------------------
// 4. The server API
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn api_search_refusals() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    alice.ok(create_group("ops", "Ops", &[])).await.unwrap();
    bob.ok(create_group("bobs", "Bobs", &[])).await.unwrap();
    let s = say(&mut alice, "ops", "m1", json!("deploy now")).await;
    let sb = say(&mut bob, "bobs", "m1", json!("deploy bob")).await;
    projected(&t.stack.store, "messages", s.max(sb)).await;
    let (read, _) = api_key(&nats.url(), Scope::Read, 1000).await;
    let (write, _) = api_key(&nats.url(), Scope::Write, 1000).await;
    let big = "x".repeat(10_000);
    let cases: Vec<(String, Option<&str>, &[u16])> = vec![
        ("/v1/users/alice/search?q=deploy".into(), None, &[401]),
        (
            "/v1/users/alice/search?q=deploy".into(),
            Some("nope"),
            &[401],
        ),
        (
            "/v1/users/alice/search?q=deploy".into(),
            Some(write.as_str()),
            &[200],
        ),
        (
            "/v1/users/nobody/search?q=deploy".into(),
            Some(read.as_str()),
            &[404, 200],
        ),
        (
            "/v1/users/a.b/search?q=deploy".into(),
            Some(read.as_str()),
            &[400],
        ),
        ("/v1/users/alice/search".into(), Some(read.as_str()), &[400]),
        (
            "/v1/users/alice/search?q=".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=%00".into(),
            Some(read.as_str()),
            // No word in it: nothing found.
            &[200],
        ),
        (
            "/v1/users/alice/search?q=%FF%FE".into(),
            Some(read.as_str()),
            // No word in it: nothing found.
            &[200],
        ),
        (
            "/v1/users/alice/search?q=deploy&conv=bobs".into(),
            Some(read.as_str()),
            &[403],
        ),
        (
            "/v1/users/alice/search?q=deploy&conv=a.b".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=deploy&conv=".into(),
            Some(read.as_str()),
            &[400, 200],
        ),
        (
            "/v1/users/alice/search?q=deploy&conv=nope".into(),
            Some(read.as_str()),
            &[403, 404],
        ),
        (
            "/v1/users/alice/search?q=deploy&limit=0".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=deploy&limit=-1".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=deploy&limit=50".into(),
            Some(read.as_str()),
            &[200],
        ),
        (
            "/v1/users/alice/search?q=deploy&limit=x".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=deploy&before=-1".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=deploy&before=9223372036854775807".into(),
            Some(read.as_str()),
            &[200],
        ),
        (
            "/v1/users/alice/search?q=deploy&before=9223372036854775808".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=deploy&before=99999999999999999999999".into(),
            Some(read.as_str()),
            &[400],
        ),
        (
            "/v1/users/alice/search?q=deploy&q=bob".into(),
            Some(read.as_str()),
            &[400, 200],
        ),
        (
            "/v1/users/alice/search?q=deploy&extra=1".into(),
            Some(read.as_str()),
            &[400, 200],
        ),
        (
            format!("/v1/users/alice/search?q={big}"),
            Some(read.as_str()),
            &[400, 414, 431],
        ),
        (
            "/v1/users/alice/search?q=%22deploy%22%20OR%20bob".into(),
            Some(read.as_str()),
            &[200],
        ),
    ];
    let mut problems = Vec::new();
    for (path, key, ok) in &cases {
        let mut headers = Vec::new();
        let auth;
        if let Some(k) = key {
            auth = format!("Bearer {k}");
            headers.push(("authorization", auth.as_str()));
        }
        let r = http(addr, "GET", path, &headers, None).await.unwrap();
        let short: String = path.chars().take(90).collect();
        if !ok.contains(&r.status) {
            problems.push(format!("{short}: {} {:?}", r.status, r.body));
        }
        if r.status == 200
            && r.body["results"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|f| path.contains("alice") && f["conv"] != "ops")
            })
        {
            problems.push(format!(
                "{short}: another user's conversation in alice's results"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Words compare case-folded, not just lowercased: `GRÜSSE` (the uppercase of `Grüße`) and
/// the Greek final sigma.
#[tokio::test]
async fn case_folding_of_sharp_s_and_final_sigma() {
    let (_nats, t, mut alice) = alice_in_ops().await;
    let de = say(&mut alice, "ops", "m1", json!("Grüße aus Köln")).await;
    let el = say(&mut alice, "ops", "m2", json!("ο Σίσυφος")).await;
    projected(&t.stack.store, "messages", el).await;
    let mut problems = Vec::new();
    for (q, want) in [
        ("GRÜSSE", de),
        ("grusse", de),
        ("ΣΊΣΥΦΟΣ", el),
        ("σισυφοσ", el),
    ] {
        let f = found(&mut alice, q).await;
        if f != [want] {
            problems.push(format!("{q:?} found {f:?}, expected [{want}]"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
