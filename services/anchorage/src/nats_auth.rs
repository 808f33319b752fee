//! Who may do what on NATS: one user per role, each allowed only the subjects its job needs.
//!
//! | identity | publishes | subscribes |
//! |---|---|---|
//! | `edge` | `msg.*`, `grp.*`, `read.*.*`, `user.*`, `admin.webhook.*` (server API), `typing.*`, `presence.*.*`; JetStream reads (stream info, direct and message gets, consumer info) | `live.>`, `typing.*`, `notify.grp.>`, `notify.progress.>` |
//! | `projector` | `msg.*`, `grp.*`, `user.*` (events translated from other systems), `dlq.*`, `notify.grp.*`, `notify.progress.*`; its pull consumers (fetch, ack), the webhook worker's consumers (create, delete), erasing revoked messages from MESSAGES, and JetStream reads | — |
//! | `operator` | everything (`anchorage streams apply`, `revoke`, `replay`, administration) | everything |
//! | `ext_<source>` | `ext.<source>.>` only | its own consumers (named `<source>`) on the streams it is given |
//!
//! Every identity receives replies only on its own inbox prefix, `_INBOX_<user>.>`, so no
//! identity can read another's JetStream answers. Nobody but the server publishes `live.>`
//! (stream RePublish is the server's own), and only the projector publishes `notify.>`.
//! `deploy/SECURITY.md` explains each line; [`render_authorization`] writes the nats-server
//! `authorization` block, with the passwords themselves or with environment references.

use std::collections::BTreeMap;
use std::path::Path;

use anchorage_bus::INBOX_PREFIX_BASE;
use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The services' NATS users.
pub const EDGE: &str = "edge";
pub const PROJECTOR: &str = "projector";
pub const OPERATOR: &str = "operator";
/// Integration users are `ext_<source>`.
pub const INTEGRATION_PREFIX: &str = "ext_";

/// What one NATS user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The inbox prefix of `user` (`_INBOX_edge`).
pub fn inbox_prefix(user: &str) -> String {
    format!("{INBOX_PREFIX_BASE}{user}")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// JetStream reads every service makes: stream info, messages by sequence or by subject.
const JS_READS: &[&str] = &[
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.*",
    "$JS.API.DIRECT.GET.*.>",
    "$JS.API.CONSUMER.INFO.*.*",
];

/// The edge: publishes what its clients and the server API's callers cause, reads streams
/// (API keys among them, which it cannot write), follows the live subjects.
pub fn edge() -> Permissions {
    let mut publish = strings(&[
        "msg.*",
        "grp.*",
        "read.*.*",
        "user.*",
        "admin.webhook.*",
        // Who is typing, between edges (never stored).
        "typing.*",
        // Who is connected to this edge (records that expire).
        "presence.*.*",
    ]);
    publish.extend(strings(JS_READS));
    publish.push(format!("{}.>", inbox_prefix(EDGE)));
    Permissions {
        publish,
        subscribe: vec![
            "live.>".into(),
            "typing.*".into(),
            "notify.grp.>".into(),
            "notify.progress.>".into(),
            format!("{}.>", inbox_prefix(EDGE)),
        ],
    }
}

/// The projector: reads every stream through its durable consumers, acknowledges, publishes
/// dead letters, member-list notifications, its progress and the native events of other
/// systems' events.
pub fn projector() -> Permissions {
    let mut publish = strings(&[
        "msg.*",
        "grp.*",
        "user.*",
        "dlq.*",
        "notify.grp.*",
        "notify.progress.*",
        // Which process applies each projection (records that expire unless renewed).
        "lease.*",
        "$JS.API.CONSUMER.MSG.NEXT.*.*",
        // A projection moves its consumer back to its own checkpoint when they disagree.
        "$JS.API.CONSUMER.RESET.*.*",
        // The webhook worker makes, restarts and deletes one consumer per endpoint and stream.
        "$JS.API.CONSUMER.CREATE.*.*",
        "$JS.API.CONSUMER.CREATE.*.*.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.*.*",
        "$JS.API.CONSUMER.DELETE.*.*",
        // A revoke erases the message and its edits from MESSAGES; nobody else may.
        "$JS.API.STREAM.MSG.DELETE.MESSAGES",
        "$JS.ACK.>",
    ]);
    publish.extend(strings(JS_READS));
    publish.push(format!("{}.>", inbox_prefix(PROJECTOR)));
    Permissions {
        publish,
        subscribe: vec![format!("{}.>", inbox_prefix(PROJECTOR))],
    }
}

/// The operator: everything (stream administration, revocations, replays).
pub fn operator() -> Permissions {
    Permissions {
        publish: vec![">".into()],
        subscribe: vec![">".into()],
    }
}

/// An integration: publishes its own events, and reads `streams` through consumers named
/// after it (`<source>`), nothing else.
pub fn integration(source: &str, streams: &[String]) -> Permissions {
    let user = format!("{INTEGRATION_PREFIX}{source}");
    let inbox = format!("{}.>", inbox_prefix(&user));
    let mut publish = vec![
        format!("ext.{source}.>"),
        inbox.clone(),
        "$JS.API.INFO".to_owned(),
    ];
    for s in streams {
        publish.extend([
            format!("$JS.API.STREAM.INFO.{s}"),
            format!("$JS.API.CONSUMER.CREATE.{s}.{source}"),
            format!("$JS.API.CONSUMER.CREATE.{s}.{source}.>"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{s}.{source}"),
            format!("$JS.API.CONSUMER.INFO.{s}.{source}"),
            format!("$JS.API.CONSUMER.DELETE.{s}.{source}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{source}"),
            format!("$JS.ACK.{s}.{source}.>"),
        ]);
    }
    Permissions {
        publish,
        subscribe: vec![inbox],
    }
}

/// Passwords of the NATS users, by user name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub users: BTreeMap<String, String>,
    /// Integrations and the streams each may read.
    #[serde(default)]
    pub integrations: BTreeMap<String, Vec<String>>,
    /// The password nodes of a cluster use on their routes.
    #[serde(default)]
    pub route_password: String,
}

/// A random password: 32 characters from a 62-letter alphabet (about 190 bits).
pub fn random_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes
        .iter()
        // 248 = 4 × 62: rejecting the rest keeps every letter equally likely.
        .filter(|b| **b < 248)
        .take(32)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

impl Credentials {
    /// Fresh random passwords for the three services and the named integrations.
    pub fn generate(integrations: &BTreeMap<String, Vec<String>>) -> anyhow::Result<Credentials> {
        let mut users = BTreeMap::new();
        for user in [EDGE, PROJECTOR, OPERATOR] {
            users.insert(user.to_owned(), random_password()?);
        }
        for source in integrations.keys() {
            users.insert(format!("{INTEGRATION_PREFIX}{source}"), random_password()?);
        }
        Ok(Credentials {
            users,
            integrations: integrations.clone(),
            route_password: random_password()?,
        })
    }

    /// Reads credentials kept in `path`, or generates and keeps them there (readable by the
    /// owner only).
    pub fn load_or_create(
        path: &Path,
        integrations: &BTreeMap<String, Vec<String>>,
    ) -> anyhow::Result<Credentials> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let mut creds: Credentials = serde_json::from_str(&text)
                .with_context(|| format!("reading NATS credentials {}", path.display()))?;
            // Integrations added to the configuration since get their password now.
            let mut changed = false;
            for (source, streams) in integrations {
                let user = format!("{INTEGRATION_PREFIX}{source}");
                if let std::collections::btree_map::Entry::Vacant(e) = creds.users.entry(user) {
                    e.insert(random_password()?);
                    changed = true;
                }
                if creds.integrations.get(source) != Some(streams) {
                    creds.integrations.insert(source.clone(), streams.clone());
                    changed = true;
                }
            }
            if changed {
                write_private(path, &serde_json::to_string_pretty(&creds)?)?;
            }
            return Ok(creds);
        }
        let creds = Credentials::generate(integrations)?;
        write_private(path, &serde_json::to_string_pretty(&creds)?)?;
        Ok(creds)
    }

    /// The password of `user`.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// Every user with its permissions, in a stable order.
    pub fn users(&self) -> Vec<(String, Permissions)> {
        let mut users = vec![
            (EDGE.to_owned(), edge()),
            (PROJECTOR.to_owned(), projector()),
            (OPERATOR.to_owned(), operator()),
        ];
        for (source, streams) in &self.integrations {
            users.push((
                format!("{INTEGRATION_PREFIX}{source}"),
                integration(source, streams),
            ));
        }
        users
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// How passwords appear in a rendered configuration.
#[derive(Debug, Clone, Copy)]
pub enum Secrets<'a> {
    /// The passwords themselves (a generated development configuration).
    Inline(&'a Credentials),
    /// `$ANCHORAGE_NATS_<USER>_PASSWORD` environment references, for configurations kept in
    /// version control (nats-server resolves them at start).
    Environment,
}

/// The environment variable nats-server reads a user's password from in
/// [`Secrets::Environment`] configurations.
pub fn password_variable(user: &str) -> String {
    let name: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ANCHORAGE_NATS_{name}_PASSWORD")
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nats-server `authorization` block for `users`.
pub fn render_authorization(users: &[(String, Permissions)], secrets: Secrets<'_>) -> String {
    let mut out = String::from("authorization {\n  users: [\n");
    for (user, p) in users {
        let password = match secrets {
            Secrets::Inline(c) => format!("{:?}", c.password(user).unwrap_or_default()),
            Secrets::Environment => format!("${}", password_variable(user)),
        };
        out.push_str(&format!(
            "    {{\n      user: {user:?}\n      password: {password}\n      permissions: {{\n        \
             publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n      }}\n    }}\n",
            quoted(&p.publish),
            quoted(&p.subscribe)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// The `authorization` block `anchorage nats-auth` prints: every role, the given integrations
/// (`source=STREAM,STREAM`), passwords from the environment.
pub fn render_for_deploy(integrations: &[String]) -> anyhow::Result<String> {
    let mut creds = Credentials {
        users: BTreeMap::new(),
        integrations: BTreeMap::new(),
        route_password: String::new(),
    };
    for spec in integrations {
        let (source, streams) = spec
            .split_once('=')
            .with_context(|| format!("--integration {spec}: expected SOURCE=STREAM,STREAM"))?;
        anchorage_schema::SourceId::parse(source)
            .with_context(|| format!("--integration {spec}"))?;
        if anchorage_schema::RESERVED_SOURCES.contains(&source) {
            anyhow::bail!("--integration {spec}: {source} is a source of Anchorage's own");
        }
        let streams: Vec<String> = streams.split(',').map(str::to_owned).collect();
        if let Some(s) = streams.iter().find(|s| !is_stream_name(s)) {
            anyhow::bail!("--integration {spec}: {s:?} is not a stream name");
        }
        creds.integrations.insert(source.to_owned(), streams);
    }
    let mut out = String::from(
        "# Anchorage's NATS users and what each may do (deploy/SECURITY.md); generated by\n\
         # `anchorage nats-auth`. Passwords come from the environment of nats-server:\n",
    );
    // Two users whose names differ only in case or in `-`/`_` would read one password.
    let mut variables = BTreeMap::new();
    for (user, _) in creds.users() {
        if let Some(other) = variables.insert(password_variable(&user), user.clone()) {
            anyhow::bail!(
                "the NATS users {other} and {user} would share the password variable {}",
                password_variable(&user)
            );
        }
        out.push_str(&format!("#   {}\n", password_variable(&user)));
    }
    out.push_str(&render_authorization(&creds.users(), Secrets::Environment));
    Ok(out)
}

/// Whether `s` can name a stream in a permission (1–64 of `A–Z a–z 0–9 _ -`).
pub fn is_stream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_and_random() {
        let (a, b) = (random_password().unwrap(), random_password().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn each_identity_gets_only_its_subjects() {
        let e = edge();
        assert!(e.publish.contains(&"msg.*".to_owned()));
        // The server API writes users and webhook endpoints, never API keys.
        assert!(e.publish.contains(&"user.*".to_owned()));
        for forbidden in [
            "admin.apikey.*",
            "admin.>",
            "admin.*.*",
            "ext.>",
            "live.>",
            "notify.grp.*",
            "notify.progress.*",
            "dlq.*",
            ">",
        ] {
            assert!(!e.publish.contains(&forbidden.to_owned()), "{forbidden}");
        }
        let p = projector();
        assert!(!p.subscribe.iter().any(|s| s.starts_with("live")));
        // Only revoked messages are erased, and only by the projector.
        let erase = "$JS.API.STREAM.MSG.DELETE.MESSAGES".to_owned();
        assert!(p.publish.contains(&erase));
        assert!(!e.publish.iter().any(|s| s.contains("MSG.DELETE")));
        assert!(!p.publish.iter().any(|s| s.contains("MSG.DELETE.*")));
        let i = integration("crm", &["MEMBERSHIP".into()]);
        assert_eq!(i.publish[0], "ext.crm.>");
        assert!(i.publish.iter().all(|s| !s.contains("MESSAGES")));
        assert_eq!(i.subscribe, vec!["_INBOX_ext_crm.>".to_owned()]);
    }

    #[test]
    fn renders_passwords_inline_or_from_the_environment() {
        let mut integrations = BTreeMap::new();
        integrations.insert("crm".to_owned(), vec!["MEMBERSHIP".to_owned()]);
        let creds = Credentials::generate(&integrations).unwrap();
        let inline = render_authorization(&creds.users(), Secrets::Inline(&creds));
        assert!(inline.contains(creds.password("edge").unwrap()));
        assert!(inline.contains("user: \"ext_crm\""));
        let env = render_authorization(&creds.users(), Secrets::Environment);
        assert!(env.contains("password: $ANCHORAGE_NATS_EDGE_PASSWORD"));
        assert!(!env.contains(creds.password("edge").unwrap()));
    }

    /// Integrations that would read one password, or speak as Anchorage itself, are refused.
    #[test]
    fn integrations_get_passwords_and_names_of_their_own() {
        let ok = render_for_deploy(&["crm=MEMBERSHIP".into(), "hr=USERS".into()]).unwrap();
        assert!(ok.contains("ANCHORAGE_NATS_EXT_CRM_PASSWORD"), "{ok}");
        for specs in [
            vec!["crm-x=USERS", "crm_x=USERS"],
            vec!["crm=USERS", "CRM=USERS"],
            vec!["api=USERS"],
            vec!["anchorage=USERS"],
        ] {
            let specs: Vec<String> = specs.into_iter().map(str::to_owned).collect();
            assert!(render_for_deploy(&specs).is_err(), "{specs:?}");
        }
    }

    #[test]
    fn kept_credentials_are_reused_and_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        let none = BTreeMap::new();
        let first = Credentials::load_or_create(&path, &none).unwrap();
        assert_eq!(Credentials::load_or_create(&path, &none).unwrap(), first);
        let mut one = BTreeMap::new();
        one.insert("crm".to_owned(), vec!["USERS".to_owned()]);
        let more = Credentials::load_or_create(&path, &one).unwrap();
        assert_eq!(more.password("edge"), first.password("edge"));
        assert!(more.password("ext_crm").is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the owner reads it");
        }
    }
}
