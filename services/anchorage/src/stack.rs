//! The Anchorage services in one process: projector, webhook worker and edge over one bus and
//! one store.
//!
//! `anchorage dev` runs a [`Stack`] next to a child nats-server; the end-to-end tests run one
//! next to theirs. [`Stack::start`] applies the streams and migrates the database first, so a
//! started stack is ready; [`Stack::stop`] cancels every task, waits for them (each finishes
//! its current batch or request) and closes the connections.

use std::net::SocketAddr;

use anchorage_bus::{ApplyReport, Bus};
use anchorage_config::Config;
use anchorage_projector::ProjectorOptions;
use anchorage_store::Store;
use anyhow::Context;

use crate::nats_auth::{self, Credentials};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A running projector and edge.
#[derive(Debug)]
pub struct Stack {
    pub bus: Bus,
    pub store: Store,
    /// Where the edge listens.
    pub edge_addr: SocketAddr,
    /// What `streams apply` did at start.
    pub applied: ApplyReport,
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
    /// The projector's and the edge's own connections, when they have their own identities.
    service_buses: Vec<Bus>,
}

impl Stack {
    /// Connects, applies the streams, migrates the database and starts the services; the edge
    /// serves on `listener`. Everything connects to NATS as `config.nats` says.
    pub async fn start(config: &Config, listener: TcpListener) -> anyhow::Result<Stack> {
        Self::start_as(config, listener, None).await
    }

    /// Like [`Stack::start`], but with `credentials` each part signs in as its own NATS user:
    /// the projector as `projector`, the edge as `edge`, and stream administration (and
    /// [`Stack::bus`]) as `operator` — the same least privilege as separate processes.
    pub async fn start_as(
        config: &Config,
        listener: TcpListener,
        credentials: Option<&Credentials>,
    ) -> anyhow::Result<Stack> {
        // Before the projector's workers name their metrics.
        anchorage_edge::metrics::handle();
        let as_user = |user: &str| -> anyhow::Result<Config> {
            let mut c = config.clone();
            if let Some(creds) = credentials {
                let password = creds
                    .password(user)
                    .with_context(|| format!("no NATS password for {user}"))?;
                c.nats.user = Some(user.to_owned());
                c.nats.password = Some(password.to_owned());
                c.nats.inbox_prefix = None;
            }
            Ok(c)
        };
        let streams = crate::load_streams(config)?;
        let bus = Bus::connect(&crate::bus_options(&as_user(nats_auth::OPERATOR)?, false)).await?;
        let applied = bus.apply(&streams).await.context("applying the streams")?;
        anyhow::ensure!(
            !applied.refused(),
            "the streams on the server differ from streams/ in ways apply will not fix:\n{applied}"
        );
        let store = Store::connect(&crate::store_options(config))
            .await
            .context("connecting to the database")?;
        store.migrate().await.context("migrating the database")?;

        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut service_buses = Vec::new();
        let (projector_bus, edge_bus) = match credentials {
            Some(_) => {
                let projector =
                    Bus::connect(&crate::bus_options(&as_user(nats_auth::PROJECTOR)?, false))
                        .await?;
                let edge =
                    Bus::connect(&crate::bus_options(&as_user(nats_auth::EDGE)?, false)).await?;
                service_buses.extend([projector.clone(), edge.clone()]);
                (projector, edge)
            }
            None => (bus.clone(), bus.clone()),
        };
        tasks.spawn(anchorage_projector::run(
            projector_bus.clone(),
            store.clone(),
            ProjectorOptions::from_config(&config.projector),
            shutdown.child_token(),
        ));
        tasks.spawn(anchorage_webhooks::run(
            projector_bus.clone(),
            config.webhooks.clone(),
            shutdown.child_token(),
        ));
        tasks.spawn(anchorage_push::run(
            projector_bus.clone(),
            store.clone(),
            config.push.clone(),
            shutdown.child_token(),
        ));
        if let Some(reaper) = crate::attachment_reaper(
            config,
            store.clone(),
            projector_bus.clone(),
            shutdown.child_token(),
        )? {
            tasks.spawn(reaper);
        }
        let edge_addr = listener.local_addr()?;
        let edge = crate::edge_state(config, edge_bus, store.clone(), streams).await?;
        tasks.spawn(anchorage_edge::run(listener, edge, shutdown.child_token()));
        Ok(Stack {
            bus,
            store,
            edge_addr,
            applied,
            tasks,
            shutdown,
            service_buses,
        })
    }

    /// Starts one more edge on `listener`, over a NATS connection of its own (as another
    /// process would have) and the same database; returns that connection. It stops with the
    /// stack.
    pub async fn add_edge(
        &mut self,
        config: &Config,
        listener: TcpListener,
    ) -> anyhow::Result<Bus> {
        let streams = crate::load_streams(config)?;
        let bus = Bus::connect(&crate::bus_options(config, false)).await?;
        let edge = crate::edge_state(config, bus.clone(), self.store.clone(), streams).await?;
        self.tasks.spawn(anchorage_edge::run(
            listener,
            edge,
            self.shutdown.child_token(),
        ));
        self.service_buses.push(bus.clone());
        Ok(bus)
    }

    /// Resolves when a service stops on its own — which only happens on an error.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            Some(Ok(Err(err))) => err,
            Some(Ok(Ok(()))) => anyhow::anyhow!("a service stopped unexpectedly"),
            Some(Err(join)) => anyhow::anyhow!("a service panicked: {join}"),
            None => anyhow::anyhow!("no services are running"),
        }
    }

    /// Stops every service and closes the connections.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut first_error = None;
        while let Some(done) = self.tasks.join_next().await {
            let result = done.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        for bus in self.service_buses {
            bus.close().await;
        }
        self.bus.close().await;
        self.store.close().await;
        first_error.map_or(Ok(()), Err)
    }
}
