//! `anchorage apikey create|list|revoke`: server API keys as records on the `ADMIN` stream.

use std::process::ExitCode;

use anchorage_bus::Bus;
use anchorage_config::Config;
use anchorage_schema::admin::{ApiKeyRecord, Scope};
use anchorage_schema::subjects::{self, stream};
use anyhow::{Context, bail};

use crate::cli::ApikeyCommand;

/// Runs an `apikey` command.
pub async fn run(config: &Config, command: ApikeyCommand) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&crate::bus_options(config, false)).await?;
    let result = match command {
        ApikeyCommand::Create { name, scope, rate } => {
            let Some(scope) = Scope::parse(&scope) else {
                bail!("--scope is read, write or admin");
            };
            let (record, key) = create(&bus, &name, scope, rate).await?;
            eprintln!(
                "created API key {} ({name}, {}, {rate}/s); it is shown once:",
                record.id,
                scope.as_str()
            );
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        ApikeyCommand::List => {
            for record in list(&bus).await? {
                let state = match record.revoked_at {
                    Some(at) => format!("revoked at {at}"),
                    None => "active".to_owned(),
                };
                println!(
                    "{}  {:<6} {:>6}/s  {state:<24} {}",
                    record.id,
                    record.scope.as_str(),
                    record.rate_per_sec,
                    record.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ApikeyCommand::Revoke { id } => {
            let record = revoke(&bus, &id).await?;
            println!("revoked API key {id} ({})", record.name);
            Ok(ExitCode::SUCCESS)
        }
    };
    bus.close().await;
    result
}

/// Creates and stores a key: its record and the key itself (to hand out once).
pub async fn create(
    bus: &Bus,
    name: &str,
    scope: Scope,
    rate: u32,
) -> anyhow::Result<(ApiKeyRecord, String)> {
    if name.trim().is_empty() || name.len() > 200 {
        bail!("a key's name is 1 to 200 bytes");
    }
    if rate == 0 {
        bail!("a key's rate is at least 1 request per second");
    }
    let (record, key) = ApiKeyRecord::generate(name, scope, rate, anchorage_schema::now_ms())
        .map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    store(bus, &record).await?;
    Ok((record, key))
}

/// Revokes key `id` (a revoked key stays revoked).
pub async fn revoke(bus: &Bus, id: &str) -> anyhow::Result<ApiKeyRecord> {
    let Some(mut record) = find(bus, id).await? else {
        bail!("no API key {id}");
    };
    if record.revoked_at.is_none() {
        record.revoked_at = Some(anchorage_schema::now_ms());
        store(bus, &record).await?;
    }
    Ok(record)
}

async fn store(bus: &Bus, record: &ApiKeyRecord) -> anyhow::Result<()> {
    bus.publish_raw(
        &subjects::api_key(&record.id),
        None,
        serde_json::to_vec(record)?,
    )
    .await
    .context("storing the API key on the ADMIN stream (run `anchorage streams apply`?)")?;
    Ok(())
}

/// The current record of key `id`.
pub async fn find(bus: &Bus, id: &str) -> anyhow::Result<Option<ApiKeyRecord>> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("an API key id is 16 hex digits");
    }
    let stored = bus
        .last_subject_payload(stream::ADMIN, &subjects::api_key(id))
        .await?;
    Ok(stored.and_then(|(_, bytes)| serde_json::from_slice(&bytes).ok()))
}

/// Every key's current record, by id.
pub async fn list(bus: &Bus) -> anyhow::Result<Vec<ApiKeyRecord>> {
    let mut records = Vec::new();
    for subject in bus.subjects(stream::ADMIN, "admin.apikey.*").await? {
        let id = subjects::last_token(&subject);
        if let Some(record) = find(bus, id).await? {
            records.push(record);
        }
    }
    Ok(records)
}
