//! The peer transport: one TCP connection per pair of nodes carries every message between them.
//!
//! The node with the lower id dials, the other accepts, so each pair has exactly one connection.
//! A connection starts with a hello (magic, wire version, sender id); then each direction is a
//! stream of frames: a 4-byte big-endian length, then [`triarch_node::encode_messages`] output
//! (its own version byte, then the messages). A peer that sends a bad hello, an oversized frame or
//! an undecodable one is logged and disconnected; it never takes the node down.
//!
//! Peers are the founding members of the configuration plus members joined later: the core adds
//! a joined member's link when the metadata group decides the join ([`PeerSenders::add`]).
//!
//! Outbound messages go through a bounded queue per peer. When it is full (the peer is slow or
//! unreachable) the batch is dropped and counted: to the protocols above, that is message loss,
//! which they already tolerate, and the core never waits on a peer.

use crate::core::CoreInput;
use crate::metrics::{peer_batch_dropped, peer_link};
use bytes::{Buf, BytesMut};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use triarch_core::NodeId;
use triarch_node::{Message, WIRE_VERSION, decode_messages, encode_messages};

const HELLO_MAGIC: &[u8; 4] = b"TRCH";
const HELLO_LEN: usize = 4 + 1 + 4;
/// Largest frame accepted from a peer. Frames carry whole values, so this sits above the largest
/// value a node accepts (512 MiB) with room for the batch around it.
pub const FRAME_BYTES_MAX: usize = 600 * 1024 * 1024;
/// A writer stops coalescing batches into one frame beyond this size.
const FRAME_COALESCE_BYTES: usize = 1024 * 1024;
/// Batches queued per peer before new ones are dropped.
pub const PEER_QUEUE_BATCHES: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The core's handle for sending to peers.
#[derive(Clone)]
pub struct PeerSenders {
    me: NodeId,
    queues: Arc<RwLock<BTreeMap<NodeId, mpsc::Sender<Vec<Message>>>>>,
    pub links: Arc<RwLock<BTreeMap<NodeId, Arc<PeerLink>>>>,
    /// Where the accept loop hands an inbound connection from each peer that dials this node.
    inbound_routes: Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<TcpStream>>>>,
    core: mpsc::Sender<CoreInput>,
}

/// What the node knows about one peer's link.
pub struct PeerLink {
    pub addr: SocketAddr,
    pub connected: AtomicBool,
}

impl PeerSenders {
    pub fn send(&self, to: NodeId, batch: Vec<Message>) {
        let queues = self.queues.read().expect("peer table lock");
        let Some(queue) = queues.get(&to) else {
            tracing::error!(%to, "message for an unknown peer dropped");
            return;
        };
        if queue.try_send(batch).is_err() {
            peer_batch_dropped(to);
        }
    }

    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.links
            .read()
            .expect("peer table lock")
            .get(&peer)
            .is_some_and(|l| l.connected.load(Ordering::Relaxed))
    }

    /// Every peer's link, in id order.
    pub fn links(&self) -> Vec<(NodeId, Arc<PeerLink>)> {
        let links = self.links.read().expect("peer table lock");
        links.iter().map(|(id, l)| (*id, l.clone())).collect()
    }

    /// Starts the link to `peer` at `addr` unless there is one: its queue, its task, and (if
    /// the peer dials this node) its route from the accept loop. Must run inside the runtime.
    pub fn add(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.me
            || self
                .queues
                .read()
                .expect("peer table lock")
                .contains_key(&peer)
        {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_BATCHES);
        let (in_tx, in_rx) = mpsc::channel::<TcpStream>(4);
        self.links.write().expect("peer table lock").insert(
            peer,
            Arc::new(PeerLink {
                addr,
                connected: AtomicBool::new(false),
            }),
        );
        if self.me > peer {
            self.inbound_routes
                .lock()
                .expect("peer table lock")
                .insert(peer, in_tx);
        }
        self.queues
            .write()
            .expect("peer table lock")
            .insert(peer, tx);
        let link = LinkTask {
            me: self.me,
            peer,
            addr,
            outbound: rx,
            inbound: in_rx,
            core: self.core.clone(),
            senders: self.clone(),
        };
        tokio::spawn(link.run());
        tracing::info!(me = %self.me, %peer, %addr, "peer added");
    }
}

/// Starts the listener and one link task per peer. Returns the senders the core uses.
pub async fn start(
    me: NodeId,
    listen: SocketAddr,
    peers: Vec<(NodeId, SocketAddr)>,
    core: mpsc::Sender<CoreInput>,
) -> std::io::Result<PeerSenders> {
    let listener = TcpListener::bind(listen).await?;
    let senders = PeerSenders {
        me,
        queues: Arc::default(),
        links: Arc::default(),
        inbound_routes: Arc::default(),
        core,
    };
    for (peer, addr) in peers {
        senders.add(peer, addr);
    }
    tokio::spawn(accept_loop(me, listener, senders.inbound_routes.clone()));
    Ok(senders)
}

async fn accept_loop(
    me: NodeId,
    listener: TcpListener,
    routes: Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<TcpStream>>>>,
) {
    loop {
        let (mut stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let mut hello = [0u8; HELLO_LEN];
            let read =
                tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut hello)).await;
            let from = match read {
                Ok(Ok(_)) => parse_hello(&hello),
                _ => Err("no hello within 5 s".to_string()),
            };
            let route = from.and_then(|id| {
                routes
                    .lock()
                    .expect("peer table lock")
                    .get(&id)
                    .map(|r| (id, r.clone()))
                    .ok_or(format!("{id} is not a peer that dials {me}"))
            });
            match route {
                Ok((id, route)) => {
                    let _ = stream.set_nodelay(true);
                    if route.send(stream).await.is_err() {
                        tracing::warn!(peer = %id, "link task gone");
                    }
                }
                Err(reason) => tracing::warn!(%addr, reason, "peer connection refused"),
            }
        });
    }
}

fn hello(me: NodeId) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(HELLO_MAGIC);
    h[4] = WIRE_VERSION;
    h[5..].copy_from_slice(&me.0.to_be_bytes());
    h
}

fn parse_hello(h: &[u8; HELLO_LEN]) -> Result<NodeId, String> {
    if &h[..4] != HELLO_MAGIC {
        return Err("bad magic: not a Triarch peer".into());
    }
    if h[4] != WIRE_VERSION {
        return Err(format!(
            "wire version {} (this node speaks {WIRE_VERSION})",
            h[4]
        ));
    }
    Ok(NodeId(u32::from_be_bytes([h[5], h[6], h[7], h[8]])))
}

struct LinkTask {
    me: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    outbound: mpsc::Receiver<Vec<Message>>,
    inbound: mpsc::Receiver<TcpStream>,
    core: mpsc::Sender<CoreInput>,
    senders: PeerSenders,
}

impl LinkTask {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let stream = if self.me < self.peer {
                match TcpStream::connect(self.addr).await {
                    Ok(mut s) => {
                        let _ = s.set_nodelay(true);
                        if s.write_all(&hello(self.me)).await.is_err() {
                            continue;
                        }
                        s
                    }
                    Err(_) => {
                        self.drain_while_down();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            } else {
                // Wait for the peer to dial us; meanwhile drop what cannot be delivered.
                loop {
                    tokio::select! {
                        s = self.inbound.recv() => match s {
                            Some(s) => break s,
                            None => return,
                        },
                        b = self.outbound.recv() => if b.is_none() { return },
                    }
                }
            };
            backoff = BACKOFF_MIN;
            self.set_connected(true);
            tracing::info!(me = %self.me, peer = %self.peer, "peer connected");
            let reason = self.serve(stream).await;
            self.set_connected(false);
            tracing::warn!(me = %self.me, peer = %self.peer, reason, "peer disconnected");
        }
    }

    fn set_connected(&self, up: bool) {
        if let Some(l) = self
            .senders
            .links
            .read()
            .expect("peer table lock")
            .get(&self.peer)
        {
            l.connected.store(up, Ordering::Relaxed);
        }
        peer_link(self.peer, up);
    }

    fn drain_while_down(&mut self) {
        while self.outbound.try_recv().is_ok() {}
    }

    /// Runs one connection until it fails; returns why.
    async fn serve(&mut self, stream: TcpStream) -> String {
        let (mut reader, mut writer) = stream.into_split();
        let core = self.core.clone();
        let peer = self.peer;
        let mut read_task = tokio::spawn(async move { read_frames(peer, &mut reader, core).await });
        let mut frame = Vec::with_capacity(64 * 1024);
        let mut batch: Vec<Message> = Vec::new();
        let reason = loop {
            tokio::select! {
                r = &mut read_task => break match r { Ok(reason) => reason, Err(e) => e.to_string() },
                b = self.outbound.recv() => {
                    let Some(mut first) = b else { break "node shutting down".into() };
                    batch.append(&mut first);
                    // Coalesce what else is queued into one frame (one write, one syscall).
                    let mut size_guess = 0usize;
                    while size_guess < FRAME_COALESCE_BYTES {
                        match self.outbound.try_recv() {
                            Ok(mut more) => { size_guess += more.len() * 64; batch.append(&mut more); }
                            Err(_) => break,
                        }
                    }
                    frame.clear();
                    frame.extend_from_slice(&[0u8; 4]);
                    encode_messages(&batch, &mut frame);
                    batch.clear();
                    let len = (frame.len() - 4) as u32;
                    frame[..4].copy_from_slice(&len.to_be_bytes());
                    if let Err(e) = writer.write_all(&frame).await {
                        break e.to_string();
                    }
                }
            }
        };
        read_task.abort();
        reason
    }
}

async fn read_frames(
    peer: NodeId,
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    core: mpsc::Sender<CoreInput>,
) -> String {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > FRAME_BYTES_MAX {
                return format!("frame of {len} bytes exceeds the {FRAME_BYTES_MAX} limit");
            }
            if buf.len() < 4 + len {
                // Grow with the bytes that arrive, not with the length a peer claims.
                buf.reserve((4 + len - buf.len()).min(1024 * 1024));
                break;
            }
            buf.advance(4);
            let frame = buf.split_to(len);
            match decode_messages(&frame) {
                Ok(messages) => {
                    if core
                        .send(CoreInput::Peer {
                            from: peer,
                            messages,
                        })
                        .await
                        .is_err()
                    {
                        return "node shutting down".into();
                    }
                }
                Err(e) => return format!("bad frame: {e}"),
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => return "connection closed".into(),
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_strangers() {
        assert_eq!(parse_hello(&hello(NodeId(7))).unwrap(), NodeId(7));
        let mut h = hello(NodeId(7));
        h[0] = b'X';
        assert!(parse_hello(&h).is_err());
        let mut h = hello(NodeId(7));
        h[4] = WIRE_VERSION + 1;
        assert!(parse_hello(&h).unwrap_err().contains("wire version"));
    }
}
