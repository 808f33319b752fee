//! `anchorage chat` as a person uses it: the binary in a tmux pane against a real stack, driven
//! by keys (send-keys) and read off the screen (capture-pane). Two users chat both ways, see
//! unread counts, scroll back through history, and a client that was offline catches up.

use std::path::Path;
use std::time::Duration;

use anchorage_tests::{TestNats, TestStack, WsClient, eventually, send_message};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// One `anchorage chat` in a tmux session of its own (on a tmux server of the test's own).
struct Pane {
    socket: String,
    name: String,
}

impl Pane {
    fn start(socket: &str, name: &str, dir: &Path, url: &str, user: &str) -> Pane {
        let command = format!(
            "{} chat --url {url} --user {user} --device tui --store {}",
            env!("CARGO_BIN_EXE_anchorage"),
            dir.join(format!("{user}.db")).display()
        );
        let status = std::process::Command::new("tmux")
            .args(["-L", socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-s", name, "-x", "110", "-y", "30", "-c"])
            .arg(dir)
            .arg(&command)
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux new-session");
        Pane {
            socket: socket.to_owned(),
            name: name.to_owned(),
        }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Presses keys (tmux key names: `Enter`, `Tab`, `PPage`, `Escape`, …).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Types `text` literally, then Enter.
    fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", &self.name, "-l", text]);
        self.keys(&["Enter"]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.name])
    }

    /// Waits until the screen shows `what`; returns the screen.
    async fn shows(&self, what: &str) -> String {
        let found = eventually(WAIT, what, || async {
            let screen = self.screen();
            screen.contains(what).then_some(screen)
        })
        .await;
        match found {
            Ok(screen) => screen,
            Err(err) => panic!("{err}; the screen:\n{}", self.screen()),
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        self.tmux(&["kill-session", "-t", &self.name]);
    }
}

/// The line of the screen holding `what`.
fn line_of<'a>(screen: &'a str, what: &str) -> &'a str {
    screen.lines().find(|l| l.contains(what)).unwrap_or("")
}

#[tokio::test]
async fn two_people_chat_in_the_terminal() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let url = format!("ws://{}/ws", t.edge_addr());
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("anchorage-chat-{}", std::process::id());

    let alice = Pane::start(&socket, "alice", dir.path(), &url, "alice");
    alice.shows("alice · online").await;
    // A group, from the input line; it opens.
    alice.keys(&["Tab"]);
    alice.line("/group team bob");
    alice.shows("team").await;
    alice.line("hello from alice");
    alice.shows("me: hello from alice").await;

    let bob = Pane::start(&socket, "bob", dir.path(), &url, "bob");
    // The list shows the conversation with one unread message; Enter opens it.
    bob.shows("bob · online").await;
    bob.shows("team (1)").await;
    bob.keys(&["Enter"]);
    bob.shows("alice: hello from alice").await;
    bob.line("hi alice");
    bob.shows("me: hi alice").await;
    // Alice has the conversation open: it arrives live, and counts as read.
    let screen = alice.shows("bob: hi alice").await;
    assert!(!line_of(&screen, "team").contains("(1)"), "{screen}");
    // Bob read it by opening it.
    eventually(WAIT, "bob's unread count to go", || async {
        (!line_of(&bob.screen(), "> team").contains('(')).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", bob.screen()));

    // Forty more messages: the newest fill the pane; PgUp scrolls back to the oldest.
    let mut ws = WsClient::signed_in(t.edge_addr(), "alice", "phone")
        .await
        .unwrap()
        .0;
    for i in 0..40 {
        ws.ack(send_message(
            "team",
            &format!("h{i}"),
            json!(format!("line-{i:02}")),
        ))
        .await
        .unwrap();
    }
    let screen = bob.shows("alice: line-39").await;
    assert!(!screen.contains("line-00"), "{screen}");
    assert!(screen.contains("older above"), "{screen}");
    for _ in 0..5 {
        bob.keys(&["PPage"]);
    }
    let screen = bob.shows("hello from alice").await;
    assert!(screen.contains("line-00"), "{screen}");
    assert!(!screen.contains("line-39"), "{screen}");
    bob.keys(&["NPage", "NPage", "NPage", "NPage", "NPage"]);
    bob.shows("line-39").await;

    // Bob quits; alice writes meanwhile; bob starts again (same local store) and finds it
    // unread in his list, then in the conversation.
    bob.keys(&["C-c"]);
    eventually(WAIT, "bob's client to exit", || async {
        (!bob.tmux(&["list-sessions"]).contains("bob:")).then_some(())
    })
    .await
    .unwrap();
    drop(bob);
    alice.line("are you there?");
    alice.shows("me: are you there?").await;
    let bob = Pane::start(&socket, "bob", dir.path(), &url, "bob");
    // The list shows at once from the local store; once connected, it has caught up.
    bob.shows("bob · online").await;
    bob.shows("team (1)").await;
    bob.keys(&["Enter"]);
    bob.shows("alice: are you there?").await;
    // Control characters from a peer never reach the terminal as control characters.
    ws.ack(send_message("team", "esc", json!("a\u{1b}[2Jb")))
        .await
        .unwrap();
    let screen = bob.shows("alice: a [2Jb").await;
    assert!(screen.contains("are you there?"), "{screen}");
    // What is shown is read: the count goes.
    eventually(WAIT, "bob's unread count to go", || async {
        let screen = bob.screen();
        (!line_of(&screen, "> team").contains('(')).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", bob.screen()));
}
