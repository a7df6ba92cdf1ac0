//! The DynamoDB implementations the tests run against, each on an ephemeral loopback port and
//! alive as long as its [`Backend`]: dynoxide in-process (the embedded server), dynalite as a node
//! process from `tools/dynalite` (rejects duplicate keys and oversized batches like DynamoDB), and
//! the project's simulator `dynamo-sim` in-process (throttling, faults, outages).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_dynamodb::Client;

use crate::config::{Config, Secret};
use crate::storage::dynamo::{self, SdkRetries};
use crate::storage::embedded::EmbeddedDynamo;
use crate::storage::tables::{self, Capacity};
use crate::test_util::counter::RequestCounter;

/// A DynamoDB implementation under test, alive as long as this value.
pub enum Backend {
    Dynoxide(EmbeddedDynamo),
    Dynalite {
        child: std::process::Child,
        addr: SocketAddr,
    },
    /// The project's simulator (throttling, faults), in-process.
    Sim(dynamo_sim::SimHandle),
}

impl Backend {
    pub async fn dynoxide() -> Backend {
        let server = EmbeddedDynamo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("dynoxide starts on an ephemeral port");
        Backend::Dynoxide(server)
    }

    /// Starts the simulator with `config` on an ephemeral loopback port (no tables: `prepare`
    /// creates them as for the other backends).
    pub async fn simulator(config: dynamo_sim::SimConfig) -> Backend {
        let sim = dynamo_sim::Simulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("the simulator starts on an ephemeral port");
        Backend::Sim(sim)
    }

    /// Switches the simulator's faults (the emulators have none to switch).
    pub fn set_faults(&self, faults: dynamo_sim::FaultConfig) {
        if let Backend::Sim(sim) = self {
            sim.set_faults(faults).expect("valid fault rates");
        }
    }

    /// Switches the simulator's forced outage (every request answered 503) on or off.
    pub fn set_outage(&self, on: bool) {
        if let Backend::Sim(sim) = self {
            sim.set_outage(on);
        }
    }

    /// The simulator's counters (`None` for the emulators).
    pub fn sim_stats(&self) -> Option<dynamo_sim::SimStats> {
        match self {
            Backend::Sim(sim) => Some(sim.stats()),
            _ => None,
        }
    }

    /// Starts dynalite (installed by `scripts/test` into tools/dynalite) on a free loopback port.
    pub async fn dynalite() -> Backend {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cli = root.join("tools/dynalite/node_modules/dynalite/cli.js");
        assert!(
            cli.exists(),
            "dynalite is not installed at {}: run `npm ci --prefix tools/dynalite` (scripts/test does)",
            cli.display()
        );
        // dynalite cannot report an ephemeral port, so find a free one first.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = std::process::Command::new("node")
            .arg(&cli)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--createTableMs",
                "50",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("node runs dynalite");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Wait until it accepts connections: bounded, 100 × 50 ms.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Backend::Dynalite { child, addr };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dynalite did not start listening on {addr}");
    }

    pub fn endpoint(&self) -> String {
        match self {
            Backend::Dynoxide(s) => s.endpoint(),
            Backend::Dynalite { addr, .. } => format!("http://{addr}"),
            Backend::Sim(sim) => sim.endpoint(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Dynoxide(_) => "dynoxide",
            Backend::Dynalite { .. } => "dynalite",
            Backend::Sim(_) => "dynamo-sim",
        }
    }

    /// A configuration pointing at this backend, with static test keys (and, for dynalite,
    /// which has no PartiQL, `pipeline.batch_statements` off).
    pub fn config(&self) -> Config {
        let mut cfg = config_at(self.endpoint());
        cfg.pipeline.batch_statements = !matches!(self, Backend::Dynalite { .. });
        cfg
    }

    /// Creates the six tables `cfg` names (on demand; idempotent), through `cfg`'s endpoint.
    pub async fn create_tables(cfg: &Config) {
        let admin = dynamo::client(&cfg.dynamodb, None, SdkRetries::Standard).await;
        tables::create_all(&admin, &cfg.dynamodb, Capacity::OnDemand)
            .await
            .expect("tables are created");
    }

    /// A pipeline client (no SDK retries) that counts requests, and the six tables created.
    pub async fn prepare(&self, cfg: &Config) -> (Client, RequestCounter) {
        Backend::create_tables(cfg).await;
        let client = dynamo::client(&cfg.dynamodb, None, SdkRetries::Disabled).await;
        let counter = RequestCounter::default();
        let conf = client
            .config()
            .to_builder()
            .interceptor(counter.clone())
            .build();
        (Client::from_conf(conf), counter)
    }
}

/// A configuration pointing at the DynamoDB at `endpoint` (no embedded one), with static test
/// keys.
pub fn config_at(endpoint: String) -> Config {
    let mut cfg = Config::default();
    cfg.dynamodb.endpoint_url = Some(endpoint);
    cfg.dynamodb.access_key_id = Some("test".into());
    cfg.dynamodb.secret_access_key = Some(Secret::new("test"));
    cfg.dynamodb.embedded = Some(false);
    cfg
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Dynalite { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One test body, two tests: for each `body` (an `async fn body(backend: Backend)` in scope),
/// a module `body` with the tests `on_dynoxide` and `on_dynalite`, each starting its backend
/// and running the body on it. Bodies name the backend in their failure messages
/// ([`Backend::name`]).
#[macro_export]
macro_rules! on_dynoxide_and_dynalite {
    ($($(#[$meta:meta])* $body:ident;)+) => {$(
        $(#[$meta])*
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_dynoxide() {
                super::$body($crate::test_util::Backend::dynoxide().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_dynalite() {
                super::$body($crate::test_util::Backend::dynalite().await).await;
            }
        }
    )+};
}
