//! `anchorage chat`: a terminal client on the Rust SDK.
//!
//! The conversations on the left with their unread counts, the open one on the right, a line
//! to write in at the bottom. Everything shown comes from the SDK's local store, so it works
//! offline (messages written meanwhile wait in the outbox, marked `…`) and catches up on
//! reconnect; every change the SDK reports redraws the screen.
//!
//! Keys: ↑/↓ choose a conversation, Enter opens it (or sends what was written), Esc goes back
//! to the list, PgUp/PgDn scroll the history, Ctrl-C quits. Commands in the input line:
//! `/dm <user>`, `/group <id> <member>…`, `/add <member>…`, `/quit`.

#![warn(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use anchorage_sdk::{Client, ClientEvent, ClientOptions, ConversationSummary, LocalMessage};
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph};

/// How to connect, and as whom.
pub struct ChatOptions {
    /// The edge's WebSocket URL, `ws://host:port/ws`.
    pub url: String,
    /// The signed-in user (as the tokens say).
    pub user: String,
    /// A device token for each connection attempt.
    pub token: anchorage_sdk::TokenSource,
    /// The local store.
    pub store_path: PathBuf,
}

impl std::fmt::Debug for ChatOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatOptions")
            .field("url", &self.url)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Where the keys go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Focus {
    List,
    Input,
}

/// What the screen shows.
struct App {
    user: String,
    client: Client,
    convs: Vec<ConversationSummary>,
    list: ListState,
    open: Option<String>,
    messages: Vec<LocalMessage>,
    /// Lines scrolled back from the newest.
    back: usize,
    input: String,
    focus: Focus,
    online: bool,
    status: String,
    quit: bool,
}

/// Runs the client until the user quits.
pub async fn run(options: ChatOptions) -> anyhow::Result<()> {
    let client = Client::start(ClientOptions {
        url: options.url,
        token: options.token,
        store_path: options.store_path,
    })
    .await?;
    let mut app = App {
        user: options.user,
        client: client.clone(),
        convs: Vec::new(),
        list: ListState::default(),
        open: None,
        messages: Vec::new(),
        back: 0,
        input: String::new(),
        focus: Focus::List,
        online: false,
        status: "connecting…".into(),
        quit: false,
    };
    let mut events = client.subscribe();
    // Keys come from a thread of their own: reading the terminal blocks.
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Event>(64);
    std::thread::spawn(move || {
        while let Ok(e) = event::read() {
            if keys_tx.blocking_send(e).is_err() {
                break;
            }
        }
    });
    let mut terminal = ratatui::init();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = async {
        loop {
            app.refresh().await;
            terminal.draw(|f| app.draw(f))?;
            if app.quit {
                return anyhow::Ok(());
            }
            tokio::select! {
                Some(e) = keys.recv() => app.on_terminal(e).await,
                e = events.recv() => match e {
                    Ok(e) => app.on_client(e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return Ok(()),
                },
                _ = tick.tick() => {}
            }
        }
    }
    .await;
    ratatui::restore();
    client.shutdown().await;
    result
}

impl App {
    /// Reads what the screen shows from the local store.
    async fn refresh(&mut self) {
        if let Some(conv) = self.open.clone() {
            if let Ok(messages) = self.client.messages(&conv).await {
                self.messages = messages;
            }
            // Shown is read: the user's other devices follow.
            let newest = self.messages.iter().filter_map(|m| m.seq).max();
            let read = self.client.read_marker(&conv).await.unwrap_or(0);
            if let Some(newest) = newest.filter(|n| *n > read) {
                let _ = self.client.mark_read(&conv, newest).await;
            }
        }
        if let Ok(convs) = self.client.conversations().await {
            self.convs = convs;
        }
        if self.list.selected().is_none() && !self.convs.is_empty() {
            self.list.select(Some(0));
        }
    }

    fn on_client(&mut self, e: ClientEvent) {
        match e {
            ClientEvent::Connected => {
                self.online = true;
                self.status.clear();
            }
            ClientEvent::Disconnected { .. } => {
                self.online = false;
                self.status = "offline: reconnecting…".into();
            }
            ClientEvent::Failed { reason, .. } => self.status = format!("not sent: {reason}"),
            _ => {}
        }
    }

    async fn on_terminal(&mut self, e: Event) {
        let Event::Key(key) = e else {
            return;
        };
        if key.kind != KeyEventKind::Press {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        match key.code {
            KeyCode::PageUp => self.back = self.back.saturating_add(10),
            KeyCode::PageDown => self.back = self.back.saturating_sub(10),
            _ => match self.focus {
                Focus::List => self.on_list_key(key),
                Focus::Input => self.on_input_key(key).await,
            },
        }
    }

    fn on_list_key(&mut self, key: KeyEvent) {
        let n = self.convs.len();
        match key.code {
            KeyCode::Up | KeyCode::Char('k') if n > 0 => {
                let i = self.list.selected().unwrap_or(0);
                self.list.select(Some(i.saturating_sub(1)));
            }
            KeyCode::Down | KeyCode::Char('j') if n > 0 => {
                let i = self.list.selected().unwrap_or(0);
                self.list.select(Some((i + 1).min(n - 1)));
            }
            KeyCode::Enter => {
                if let Some(c) = self.list.selected().and_then(|i| self.convs.get(i)) {
                    let conv = c.conv.clone();
                    self.open(conv);
                }
            }
            KeyCode::Tab | KeyCode::Char('/') | KeyCode::Char('i') => {
                self.focus = Focus::Input;
                if key.code == KeyCode::Char('/') {
                    self.input.push('/');
                }
            }
            KeyCode::Char('q') => self.quit = true,
            _ => {}
        }
    }

    async fn on_input_key(&mut self, key: KeyEvent) {
        match key.code {
            KeyCode::Esc => self.focus = Focus::List,
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Char(c) => self.input.push(c),
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input);
                self.submit(line.trim()).await;
            }
            _ => {}
        }
    }

    fn open(&mut self, conv: String) {
        self.client.open_conversation(&conv);
        self.open = Some(conv);
        self.messages.clear();
        self.back = 0;
        self.focus = Focus::Input;
        self.status.clear();
    }

    /// Sends what was written, or runs a command.
    async fn submit(&mut self, line: &str) {
        if line.is_empty() {
            return;
        }
        let Some(command) = line.strip_prefix('/') else {
            let Some(conv) = self.open.clone() else {
                self.status = "open a conversation first (Esc, ↑/↓, Enter)".into();
                return;
            };
            match self.client.send(&conv, serde_json::json!(line)).await {
                Ok(_) => self.back = 0,
                Err(err) => self.status = format!("not sent: {err}"),
            }
            return;
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        let outcome = match words.as_slice() {
            ["quit"] | ["q"] => {
                self.quit = true;
                Ok(())
            }
            ["dm", peer] => match self.client.open_direct(&self.user, peer).await {
                Ok(conv) => {
                    self.open(conv);
                    Ok(())
                }
                Err(err) => Err(err.to_string()),
            },
            ["group", group, members @ ..] => {
                let members: Vec<&str> = members.to_vec();
                match self.client.create_group(group, group, &members).await {
                    Ok(()) => {
                        self.open((*group).to_owned());
                        Ok(())
                    }
                    Err(err) => Err(err.to_string()),
                }
            }
            ["add", members @ ..] if !members.is_empty() => match self.open.clone() {
                Some(conv) => self
                    .client
                    .add_members(&conv, members)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("open a group first".into()),
            },
            _ => Err(format!(
                "unknown command /{command}: /dm <user>, /group <id> <member>…, /add <member>…, /quit"
            )),
        };
        if let Err(err) = outcome {
            self.status = err;
        }
    }

    fn draw(&mut self, f: &mut Frame) {
        let [main, input, status] = Layout::vertical([
            Constraint::Min(3),
            Constraint::Length(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let [left, right] =
            Layout::horizontal([Constraint::Length(30), Constraint::Min(20)]).areas(main);

        let items: Vec<ListItem> = self
            .convs
            .iter()
            .map(|c| {
                let mut spans = vec![Span::raw(c.conv.clone())];
                if c.unread > 0 {
                    spans.push(Span::styled(
                        format!(" ({})", c.unread),
                        Style::default().add_modifier(Modifier::BOLD),
                    ));
                }
                ListItem::new(Line::from(spans))
            })
            .collect();
        let list = List::new(items)
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("Conversations"),
            )
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> ");
        f.render_stateful_widget(list, left, &mut self.list);

        let title = self
            .open
            .clone()
            .unwrap_or_else(|| "no conversation open".into());
        let height = right.height.saturating_sub(2) as usize;
        let lines: Vec<Line> = self
            .messages
            .iter()
            .map(|m| message_line(m, &self.user))
            .collect();
        let newest_top = lines.len().saturating_sub(height);
        self.back = self.back.min(newest_top);
        let top = newest_top - self.back;
        let shown: Vec<Line> = lines.into_iter().skip(top).take(height).collect();
        let scrolled = if self.back > 0 {
            format!(" — {} older above, {} newer below", top, self.back)
        } else if top > 0 {
            format!(" — {top} older above")
        } else {
            String::new()
        };
        f.render_widget(
            Paragraph::new(shown).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!("{title}{scrolled}")),
            ),
            right,
        );

        let prompt = match self.focus {
            Focus::Input => "Write (Enter sends, Esc: list)",
            Focus::List => "↑/↓ choose, Enter opens, Tab writes, q quits",
        };
        f.render_widget(
            Paragraph::new(self.input.as_str())
                .block(Block::default().borders(Borders::ALL).title(prompt)),
            input,
        );
        if self.focus == Focus::Input {
            let x = input.x + 1 + self.input.chars().count() as u16;
            f.set_cursor_position((x.min(input.right().saturating_sub(2)), input.y + 1));
        }
        let state = if self.online { "online" } else { "offline" };
        f.render_widget(
            Paragraph::new(format!("{} · {state} · {}", self.user, self.status)),
            status,
        );
    }
}

/// One message as a line: time, sender, text; `…` while it waits in the outbox.
fn message_line(m: &LocalMessage, me: &str) -> Line<'static> {
    let time = match m.server_ts {
        Some(ts) => {
            let minutes = ts.div_euclid(60_000);
            format!(
                "{:02}:{:02}",
                minutes.div_euclid(60).rem_euclid(24),
                minutes.rem_euclid(60)
            )
        }
        None => " …  ".into(),
    };
    let text = if m.revoked {
        "(revoked)".to_owned()
    } else {
        let mut text = match &m.body {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => match o.get("text") {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => m.body.to_string(),
            },
            other => other.to_string(),
        };
        for a in &m.refs.attachments {
            text.push_str(&format!(" [file: {}]", a.name));
        }
        if m.edits > 0 {
            text.push_str(" (edited)");
        }
        text
    };
    // One line per message: control characters from a peer never move the cursor.
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let sender = if m.sender == me || m.seq.is_none() {
        "me".to_owned()
    } else {
        m.sender.clone()
    };
    Line::from(vec![
        Span::raw(format!("{time} ")),
        Span::styled(sender, Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(": {text}")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: &Line) -> String {
        line.spans.iter().map(|s| s.content.as_ref()).collect()
    }

    #[test]
    fn a_message_is_one_line_without_control_characters() {
        let m = LocalMessage {
            seq: Some(3),
            sender: "bob".into(),
            body: serde_json::json!({"text": "hi\n\u{1b}[2Jthere"}),
            server_ts: Some(3_600_000 * 25 + 61_000),
            edits: 1,
            ..LocalMessage::default()
        };
        assert_eq!(
            text(&message_line(&m, "alice")),
            "01:01 bob: hi  [2Jthere (edited)"
        );
        let pending = LocalMessage {
            body: serde_json::json!("soon"),
            ..LocalMessage::default()
        };
        assert_eq!(text(&message_line(&pending, "alice")), " …   me: soon");
        let revoked = LocalMessage {
            seq: Some(4),
            sender: "alice".into(),
            revoked: true,
            server_ts: Some(0),
            ..LocalMessage::default()
        };
        assert_eq!(
            text(&message_line(&revoked, "alice")),
            "00:00 me: (revoked)"
        );
    }
}
