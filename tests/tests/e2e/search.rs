//! Message search over real sockets: what a user finds is what reached them — nothing from
//! before they joined or after they left, in its current text (edits, revokes and messages
//! deleted for oneself included) — CJK text is findable, hostile queries are words, and a
//! rebuild from the streams finds the same.

use anchorage_protocol::request::{AddMembers, Edit, Hide, RemoveMembers, Revoke, Search};
use std::time::Duration;

use anchorage_protocol::{
    ErrorCode, MembershipChanged, Reply, ReplyBody, SearchResults, ServerFrame,
};
use anchorage_schema::admin::Scope;
use anchorage_schema::subjects::stream;
use anchorage_store::Store;
use anchorage_store::text::Query;
use anchorage_tests::{
    TestEdge, TestNats, TestStack, WsClient, api_key, conv_id, create_group, fresh_database,
    group_id, http, projected, send_message, test_config, user_ids,
};
use serde_json::json;

use crate::common::projector;

fn search(query: &str) -> Search {
    Search {
        query: query.into(),
        conv: None,
        before: 0,
        limit: None,
    }
}

async fn results(c: &mut WsClient, s: Search) -> SearchResults {
    match c.reply(s).await.unwrap() {
        ReplyBody::SearchResults(r) => r,
        other => panic!("not search results: {other:?}"),
    }
}

/// The seqs `c` finds for `query`, newest first.
async fn found(c: &mut WsClient, query: &str) -> Vec<u64> {
    seqs(&results(c, search(query)).await)
}

fn seqs(r: &SearchResults) -> Vec<u64> {
    r.results.iter().map(|f| f.message.seq).collect()
}

async fn joined(c: &mut WsClient, conv: &str, yes: bool) {
    c.pushed(|m: &MembershipChanged| m.conv.as_str() == conv && m.joined == yes)
        .await
        .unwrap();
}

/// Adds `user` to the group `ops` (or removes them).
async fn members(c: &mut WsClient, add: bool, user: &str) {
    let (group, members) = (group_id("ops"), user_ids(&[user]));
    if add {
        c.ok(AddMembers { group, members }).await.unwrap();
    } else {
        c.ok(RemoveMembers { group, members }).await.unwrap();
    }
}

async fn say(c: &mut WsClient, id: &str, body: serde_json::Value) -> u64 {
    c.ack(send_message("ops", id, body)).await.unwrap().seq
}

/// Every user's results for `queries` on `store`, to compare a rebuild with.
async fn everything_found(
    store: &Store,
    users: &[&str],
    queries: &[&str],
) -> Vec<(String, String, Vec<u64>)> {
    let mut out = Vec::new();
    for user in users {
        for q in queries {
            let query = Query::parse(q).unwrap();
            let found = store
                .search(&anchorage_store::search::Search {
                    user,
                    query: &query,
                    conv: None,
                    before: 0,
                    limit: 100,
                })
                .await
                .unwrap();
            let seqs = found.iter().map(|f| f.message.seq).collect();
            out.push((user.to_string(), q.to_string(), seqs));
        }
    }
    out
}

#[tokio::test]
async fn a_user_finds_what_reached_them_in_its_current_text() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let addr = t.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "laptop").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "phone").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(addr, "carol", "phone").await.unwrap();
    let (mut dave, _) = WsClient::signed_in(addr, "dave", "phone").await.unwrap();
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    joined(&mut bob, "ops", true).await;

    let m1 = say(&mut alice, "m1", json!("Deploy the release at noon")).await;
    let m2 = say(&mut alice, "m2", json!("東京都 meeting moved")).await;
    let m3 = say(
        &mut alice,
        "m3",
        json!({"text": "Café opens at 9", "lang": "en"}),
    )
    .await;
    // Not text: an encrypted payload is not indexed, whatever it holds.
    say(&mut alice, "m4", json!({"ciphertext": "deploy"})).await;
    members(&mut alice, true, "carol").await;
    joined(&mut carol, "ops", true).await;
    let m5 = say(&mut alice, "m5", json!("deploy again")).await;
    members(&mut alice, false, "bob").await;
    joined(&mut bob, "ops", false).await;
    let m6 = say(&mut alice, "m6", json!("deploying after bob left")).await;
    members(&mut alice, true, "bob").await;
    joined(&mut bob, "ops", true).await;
    let m7 = say(&mut alice, "m7", json!("bob is back: deploy")).await;
    let store = &t.stack.store;
    projected(store, "messages", m7).await;

    // Each finds the messages of their own stretches of membership, newest first.
    assert_eq!(found(&mut alice, "deploy").await, [m7, m6, m5, m1]);
    assert_eq!(found(&mut bob, "deploy").await, [m7, m5, m1]);
    assert_eq!(found(&mut carol, "deploy").await, [m7, m6, m5]);
    assert_eq!(found(&mut dave, "deploy").await, Vec::<u64>::new());

    // The server API finds the same for a user.
    let (key, _) = api_key(&nats.url(), Scope::Read, 1000).await;
    let auth = format!("Bearer {key}");
    let get = |path: String| {
        let auth = auth.clone();
        async move {
            http(addr, "GET", &path, &[("authorization", &auth)], None)
                .await
                .unwrap()
        }
    };
    let page = get("/v1/users/carol/search?q=deploy&limit=2".into()).await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    let api_seqs: Vec<u64> = page.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(api_seqs, [m7, m6]);
    assert_eq!(page.body["results"][0]["conv"], json!("ops"));
    assert_eq!(page.body["results"][0]["highlights"], json!(["deploy"]));
    assert_eq!(page.body["next_before"], json!(m6));
    let page = get(format!(
        "/v1/users/carol/search?q=deploy&limit=2&before={m6}"
    ))
    .await;
    assert_eq!(page.body["results"][0]["message"]["seq"], json!(m5));
    assert!(page.body.get("next_before").is_none(), "{:?}", page.body);
    // A query without a word finds nothing; one beyond the bounds is refused.
    let nothing = get("/v1/users/carol/search?q=%20%2C%3B".into()).await;
    assert_eq!(
        (nothing.status, nothing.body["results"].clone()),
        (200, json!([]))
    );
    let long = format!("/v1/users/carol/search?q={}", "x".repeat(257));
    assert_eq!(get(long).await.status, 400);
    assert_eq!(
        get("/v1/users/carol/search?q=deploy&limit=51".into())
            .await
            .status,
        400
    );
    assert_eq!(
        get("/v1/users/dave/search?q=deploy&conv=ops".into())
            .await
            .status,
        403
    );

    // Pages: `before` the last result's seq; `more` says whether to ask.
    let first = results(
        &mut carol,
        Search {
            limit: Some(2),
            ..search("deploy")
        },
    )
    .await;
    assert_eq!((seqs(&first), first.more), (vec![m7, m6], true));
    let next = results(
        &mut carol,
        Search {
            limit: Some(2),
            before: m6,
            conv: Some(conv_id("ops")),
            ..search("deploy")
        },
    )
    .await;
    assert_eq!((seqs(&next), next.more), (vec![m5], false));

    // Words fold case and diacritics, match as prefixes from three characters; CJK is found
    // by any run of its characters; every part must match; highlights are the text's own.
    let cafe = results(&mut alice, search("CAFE")).await;
    assert_eq!(seqs(&cafe), [m3]);
    assert_eq!(cafe.results[0].highlights, ["Café"]);
    assert_eq!(
        cafe.results[0].message.body,
        json!({"text": "Café opens at 9", "lang": "en"})
    );
    let kyoto = results(&mut alice, search("京都")).await;
    assert_eq!(
        (seqs(&kyoto), kyoto.results[0].highlights.clone()),
        (vec![m2], vec!["京都".to_owned()])
    );
    assert_eq!(found(&mut alice, "東").await, [m2]);
    assert_eq!(found(&mut alice, "東京都 meet").await, [m2]);
    assert_eq!(found(&mut alice, "都東").await, Vec::<u64>::new());
    assert_eq!(found(&mut alice, "de").await, Vec::<u64>::new());
    assert_eq!(found(&mut alice, "deploy noon").await, [m1]);
    assert_eq!(found(&mut alice, "deploy tokyo").await, Vec::<u64>::new());

    // Query syntax of either database is nothing but words.
    for hostile in [
        "deploy\" OR \"*",
        "NEAR(deploy noon)",
        "deploy:* | !noon",
        "'; DROP TABLE messages; --",
        "{terms}: deploy",
        "^deploy",
    ] {
        let r = alice.request(search(hostile)).await.unwrap();
        assert!(
            matches!(&r, anchorage_protocol::ServerFrame::Reply(_)),
            "{hostile}: {r:?}"
        );
    }
    assert_eq!(
        found(&mut alice, "deploy\" OR \"*").await,
        Vec::<u64>::new()
    );
    assert_eq!(found(&mut alice, "(deploy) -noon").await, [m1]);

    // Precise refusals.
    for (bad, why) in [
        (search(" ,;. "), "no word"),
        (search(&"x".repeat(300)), "longer than"),
    ] {
        let e = alice.refused(bad).await.unwrap();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains(why), "{}", e.message);
    }
    let e = dave
        .refused(Search {
            conv: Some(conv_id("ops")),
            ..search("deploy")
        })
        .await
        .unwrap();
    assert_eq!(e.code, ErrorCode::Forbidden);

    // An edit replaces the text found, a revoke removes it, a message deleted for oneself is
    // gone for that user only.
    let edited = alice
        .ok(Edit {
            conv: conv_id("ops"),
            seq: m1,
            body: json!("Ship the release at noon"),
        })
        .await
        .unwrap();
    let revoked = alice
        .ok(Revoke {
            conv: conv_id("ops"),
            seq: m5,
        })
        .await
        .unwrap();
    let hidden = carol
        .ok(Hide {
            conv: conv_id("ops"),
            seqs: vec![m6],
        })
        .await
        .unwrap();
    projected(
        store,
        "messages",
        revoked.seq.unwrap().max(edited.seq.unwrap()),
    )
    .await;
    projected(store, "users", hidden.seq.unwrap()).await;
    assert_eq!(found(&mut alice, "deploy").await, [m7, m6]);
    assert_eq!(found(&mut carol, "deploy").await, [m7]);
    let ship = results(&mut bob, search("ship")).await;
    assert_eq!(seqs(&ship), [m1]);
    assert_eq!(ship.results[0].message.edits, 1);
    assert_eq!(ship.results[0].highlights, ["Ship"]);
    // A former stretch still counts after leaving for good.
    members(&mut alice, false, "bob").await;
    joined(&mut bob, "ops", false).await;
    let ops_only = Search {
        conv: Some(conv_id("ops")),
        ..search("ship")
    };
    assert_eq!(seqs(&results(&mut bob, ops_only).await), [m1]);

    // A rebuild from the streams finds the same for everyone.
    let last = t
        .stack
        .bus
        .stream_state(stream::MEMBERSHIP)
        .await
        .unwrap()
        .last_seq;
    projected(store, "membership", last.0).await;
    let (_dir, rebuilt, _) = anchorage_tests::rebuilt(&t.config, &t.stack.bus, 3).await;
    let users = ["alice", "bob", "carol", "dave"];
    let queries = ["deploy", "ship", "京都", "cafe", "meeting", "bob"];
    let live = everything_found(store, &users, &queries).await;
    assert_eq!(everything_found(&rebuilt, &users, &queries).await, live);
    assert!(live.iter().any(|(_, _, s)| s.len() > 1));
    assert_eq!(
        anchorage_tests::rebuild_differences(store, &rebuilt).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_revoked_text_leaves_no_term_in_the_index() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(t.edge_addr(), "alice", "laptop")
        .await
        .unwrap();
    alice.ok(create_group("ops", "Ops", &[])).await.unwrap();
    // A term no other text shares a prefix with, so the index holds it whole.
    let word = format!("xylograph{}", std::process::id());
    let seq = say(&mut alice, "s1", json!(format!("the {word} plan"))).await;
    say(&mut alice, "s2", json!("the other plan")).await;
    let store = &t.stack.store;
    projected(store, "messages", seq + 1).await;
    assert_eq!(found(&mut alice, &word).await, [seq]);
    let sqlite = t.config.database.url.starts_with("sqlite");
    let holding = |word: &str| {
        let mut files = vec![t.db_dir.path().to_path_buf()];
        let mut holding = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if std::fs::read(&path)
                .unwrap()
                .windows(word.len())
                .any(|w| w == word.as_bytes())
            {
                holding.push(path.display().to_string());
            }
        }
        holding
    };
    if sqlite {
        assert!(!holding(&word).is_empty(), "the index holds the term");
    }

    let revoked = alice
        .ok(Revoke {
            conv: conv_id("ops"),
            seq,
        })
        .await
        .unwrap();
    projected(store, "messages", revoked.seq.unwrap()).await;
    assert_eq!(found(&mut alice, &word).await, Vec::<u64>::new());
    assert_eq!(found(&mut alice, "plan").await, [seq + 1]);
    if sqlite {
        assert_eq!(holding(&word), Vec::<String>::new());
    }
    assert_eq!(found(&mut alice, "other").await, [seq + 1]);
}

#[tokio::test]
async fn the_sdk_searches_page_by_page() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = |user: &'static str| {
        anchorage_sdk::Client::start(anchorage_sdk::ClientOptions {
            url: format!("ws://{}/ws", t.edge_addr()),
            token: std::sync::Arc::new(move || anchorage_tests::token(user, "d1", 3600)),
            store_path: dir.path().join(format!("{user}.db")),
        })
    };
    let alice = client("alice").await.unwrap();
    let bob = client("bob").await.unwrap();
    alice.create_group("team", "Team", &["bob"]).await.unwrap();
    for i in 0..30 {
        alice
            .send("team", json!(format!("standup note {i}")))
            .await
            .unwrap();
    }
    alice.send("team", json!("lunch?")).await.unwrap();
    let all = anchorage_tests::eventually(
        std::time::Duration::from_secs(20),
        "bob to find every note",
        || async {
            let r = bob.search("standup", None, 0, 50).await.ok()?;
            (r.results.len() == 30).then_some(r)
        },
    )
    .await
    .unwrap();
    let newest_first: Vec<u64> = all.results.iter().map(|f| f.message.seq).collect();
    assert!(newest_first.windows(2).all(|w| w[0] > w[1]));
    assert!(!all.more);

    // Pages of 7, each before the last one's last result, give the same, once each.
    let mut paged = Vec::new();
    let mut before = 0;
    loop {
        let page = bob
            .search("standup", Some("team"), before, 7)
            .await
            .unwrap();
        assert!(page.results.len() <= 7);
        paged.extend(page.results.iter().map(|f| f.message.seq));
        match page.results.last() {
            Some(last) if page.more => before = last.message.seq,
            _ => break,
        }
    }
    assert_eq!(paged, newest_first);
    assert_eq!(all.results[0].highlights, ["standup"]);

    let refused = bob.search(" !? ", None, 0, 5).await.unwrap_err();
    assert!(
        matches!(&refused, anchorage_sdk::SdkError::Refused(m) if m.contains("no word")),
        "{refused:?}"
    );
    let refused = bob
        .search("lunch", Some("elsewhere"), 0, 5)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, anchorage_sdk::SdkError::Refused(_)),
        "{refused:?}"
    );
    alice.shutdown().await;
    bob.shutdown().await;
}

/// While the projector is down, a search is not answered from an index that misses what was
/// stored: a member just added would find nothing of what the history will show them, so the
/// answer is `overloaded`; once the projector is back, they find what was sent to them.
#[tokio::test]
async fn a_search_waits_for_the_memberships_and_messages_stored_before_it() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    let stack = TestStack::start_with(config.clone(), db_dir).await.unwrap();
    let store = stack.stack.store.clone();
    let edge = TestEdge::start(&config).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(edge.addr, "carol", "d").await.unwrap();
    let created = alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    let before = say(&mut alice, "m1", json!("walrus before carol")).await;
    // The projection holds the group as it is: adding carol is decided while it is down.
    projected(&store, "membership", created.seq.unwrap()).await;
    projected(&store, "messages", before).await;
    stack.stack.stop().await.unwrap();

    members(&mut alice, true, "carol").await;
    joined(&mut carol, "ops", true).await;
    let after = say(&mut alice, "m2", json!("walrus after carol")).await;
    let refused = carol.refused(search("walrus")).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Overloaded, "{refused:?}");
    assert!(refused.retry_after_ms.is_some(), "{refused:?}");
    // Named conversation too: carol is a member, not `forbidden`.
    let mut in_ops = search("walrus");
    in_ops.conv = Some(conv_id("ops"));
    let refused = carol.refused(in_ops.clone()).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Overloaded, "{refused:?}");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let projector = projector(&config, shutdown.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        // As a client does: come back after the time the refusal names.
        match carol.request(in_ops.clone()).await.unwrap() {
            ServerFrame::Reply(Reply {
                body: ReplyBody::SearchResults(r),
                ..
            }) => break r,
            ServerFrame::Error(e)
                if e.code == ErrorCode::Overloaded && tokio::time::Instant::now() < deadline =>
            {
                let wait = e.retry_after_ms.expect("overloaded says when to retry");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            other => panic!("no search results: {other:?}"),
        }
    };
    assert_eq!(seqs(&answer), [after], "{answer:?}");
    assert_eq!(found(&mut carol, "walrus").await, [after]);
    assert_eq!(found(&mut alice, "walrus").await, [after, before]);
    shutdown.cancel();
    projector.await.unwrap().unwrap();
    edge.stop().await.unwrap();
}

// A search reads its candidates and then what reached the user in two statements on
// PostgreSQL: an edit applied in between must not make a message that no longer holds the
// words a result. Searched over and over while one message's text goes back and forth.
#[tokio::test]
async fn a_message_edited_while_it_is_searched_is_found_only_holding_the_words() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(t.edge_addr(), "alice", "laptop")
        .await
        .unwrap();
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    let m1 = say(&mut alice, "m1", json!("invoice due friday")).await;
    let store = t.stack.store.clone();
    projected(&store, "messages", m1).await;
    const EDITS: usize = 200;
    let editor = tokio::spawn(async move {
        for n in 0..EDITS {
            let text = if n % 2 == 0 {
                "hello there"
            } else {
                "invoice due friday"
            };
            let edit = || Edit {
                conv: conv_id("ops"),
                seq: m1,
                body: json!(text),
            };
            // At the pace the edge allows.
            while let ServerFrame::Error(e) = alice.request(edit()).await.unwrap() {
                assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
                let wait = e.retry_after_ms.unwrap_or(10);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    });
    let query = Query::parse("invoice").unwrap();
    let (mut searches, mut hits) = (0, 0);
    while !editor.is_finished() {
        let found = store
            .search(&anchorage_store::search::Search {
                user: "bob",
                query: &query,
                conv: None,
                before: 0,
                limit: 20,
            })
            .await
            .unwrap();
        for f in &found {
            assert!(
                f.message.body.contains("invoice"),
                "found holding {} after {searches} searches",
                f.message.body
            );
            hits += 1;
        }
        searches += 1;
    }
    editor.await.unwrap();
    assert!(hits > 10, "{hits} hits in {searches} searches");
    t.stack.stop().await.unwrap();
}
