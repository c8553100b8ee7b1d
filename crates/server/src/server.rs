//! Starting a node: storage, the core task, the peer transport and the client listeners.

use crate::config::{MemberConfig, ServerConfig};
use crate::core::{self, CoreInput, INPUT_CHANNEL_CAPACITY, Snapshot};
use crate::peer::{self, PeerSenders};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use triarch_core::{DetRng, NodeId};
use triarch_node::Node;
use triarch_storage::FjallStorage;

/// What every connection task shares.
pub struct Shared {
    pub core: mpsc::Sender<CoreInput>,
    pub node_id: NodeId,
    pub region: String,
    pub value_bytes_max: usize,
    pub members: Vec<MemberConfig>,
    pub peers: PeerSenders,
    pub started: std::time::Instant,
    pub prometheus: PrometheusHandle,
}

impl Shared {
    /// Asks the core for a snapshot; `None` if the core has stopped.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.core.send(CoreInput::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open storage in {path}: {source}")]
    Storage {
        path: std::path::PathBuf,
        source: triarch_storage::StorageError,
    },
    #[error("cannot start the node: {0}")]
    Node(#[from] triarch_node::NodeError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

/// The running node's addresses.
#[derive(Clone, Debug)]
pub struct Running {
    pub resp_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

/// Starts every part of the node on the current tokio runtime and returns once it listens.
pub async fn start(config: ServerConfig) -> Result<Running, StartError> {
    let storage = FjallStorage::open(&config.data_dir).map_err(|source| StartError::Storage {
        path: config.data_dir.clone(),
        source,
    })?;
    let clock = core::Clock::new();
    let now = clock.now();
    let seed = u64::from(config.node_id) ^ now.wall_ms;
    let node = Node::new(
        config.node_config(),
        crate::storage::NodeStorage::new(storage),
        DetRng::seed_from_u64(seed),
        now,
    )?;
    let prometheus = crate::metrics::install();
    let (core_tx, core_rx) = mpsc::channel(INPUT_CHANNEL_CAPACITY);
    let me = NodeId(config.node_id);
    let peer_list = config
        .members
        .iter()
        .filter(|m| m.id != config.node_id)
        .map(|m| (NodeId(m.id), m.peer_addr))
        .collect();
    let peers = peer::start(me, config.peer_addr, peer_list, core_tx.clone())
        .await
        .map_err(|source| StartError::Bind {
            addr: config.peer_addr,
            what: "peers",
            source,
        })?;
    let resp = TcpListener::bind(config.resp_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.resp_addr,
            what: "RESP",
            source,
        })?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.http_addr,
            what: "HTTP",
            source,
        })?;
    let running = Running {
        resp_addr: resp.local_addr().expect("bound"),
        http_addr: http.local_addr().expect("bound"),
    };
    tokio::spawn(core::run(node, clock, core_rx, peers.clone()));
    let shared = Arc::new(Shared {
        core: core_tx,
        node_id: me,
        region: config.region.clone(),
        value_bytes_max: config.value_bytes_max,
        members: config.members.clone(),
        peers,
        started: std::time::Instant::now(),
        prometheus,
    });
    tokio::spawn(resp_accept_loop(resp, shared.clone(), config.max_clients));
    tokio::spawn(crate::http::serve(http, shared));
    tracing::info!(node = %me, resp = %running.resp_addr, http = %running.http_addr, peer = %config.peer_addr, "node started");
    Ok(running)
}

async fn resp_accept_loop(listener: TcpListener, shared: Arc<Shared>, max_clients: usize) {
    let permits = Arc::new(Semaphore::new(max_clients));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    crate::resp::serve(stream, shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                });
            }
        }
    }
}
