//! A hand-driven cluster of real `Node`s with virtual time, shared by the model tests: each
//! node's disk is synced after each step before its outputs leave (persist-then-send), timers
//! fire when virtual time reaches them, and nodes can be cut off, partitioned, or crashed and
//! restarted.

use super::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub(super) struct Cluster {
    pub(super) size: u32,
    pub(super) nodes: Vec<Option<Node<SimDisk>>>,
    pub(super) disks: Vec<Option<SimDisk>>,
    pub(super) in_flight: VecDeque<(NodeId, NodeId, Message)>,
    pub(super) replies: Vec<(NodeId, RequestId, Reply)>,
    pub(super) down: BTreeSet<NodeId>,
    pub(super) next_request: u64,
    pub(super) now_micros: u64,
    /// Every message delivered, for tests that replay one.
    pub(super) delivered: Vec<(NodeId, NodeId, Message)>,
    /// A node whose outputs [`Cluster::drain`] leaves alone.
    pub(super) keep: Option<NodeId>,
    /// Every node's region.
    pub(super) members: Vec<Member>,
    /// Directed links that drop every message.
    pub(super) cut: BTreeSet<(NodeId, NodeId)>,
    /// Adjusts every node's configuration before it starts.
    pub(super) tune: fn(&mut NodeConfig),
    /// The session tokens replies carried, by request.
    pub(super) sessions: BTreeMap<RequestId, SessionToken>,
}

pub(super) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl Cluster {
    pub(super) fn new(size: u32) -> Self {
        Cluster::with_regions(size, 1)
    }

    /// `size` nodes spread over `regions` regions `r1`, `r2`, ...: node `i` is in region
    /// `(i - 1) % regions + 1`.
    pub(super) fn with_regions(size: u32, regions: u32) -> Self {
        let mut c = Cluster {
            members: (1..=size)
                .map(|i| Member {
                    id: NodeId(i),
                    region: format!("r{}", (i - 1) % regions + 1),
                })
                .collect(),
            cut: BTreeSet::new(),
            tune: |_| {},
            sessions: BTreeMap::new(),
            size,
            nodes: Vec::new(),
            disks: (0..size).map(|_| Some(SimDisk::new())).collect(),
            in_flight: VecDeque::new(),
            replies: Vec::new(),
            down: BTreeSet::new(),
            next_request: 1,
            now_micros: 0,
            delivered: Vec::new(),
            keep: None,
        };
        c.nodes = (0..size).map(|_| None).collect();
        for i in 1..=size {
            c.start(i);
        }
        c
    }

    pub(super) fn now(&self) -> Now {
        Now::new(
            Instant(self.now_micros),
            1_000_000 + self.now_micros / 1_000,
        )
    }

    pub(super) fn start(&mut self, id: u32) {
        let disk = self.disks[id as usize - 1]
            .take()
            .expect("a stopped node's disk");
        let mut config = NodeConfig::new(NodeId(id), self.members.clone());
        // Nodes past the founding members join the running cluster.
        config.joining = id as usize > self.members.len();
        config.region = Some("r1".into());
        (self.tune)(&mut config);
        let seed = u64::from(id) * 7919 + self.now_micros;
        let node = Node::new(config, disk, DetRng::seed_from_u64(seed), self.now()).unwrap();
        self.nodes[id as usize - 1] = Some(node);
        self.drain(NodeId(id));
    }

    /// Adds a node that joins the running cluster (started, not yet a member); returns its id.
    pub(super) fn add_joining(&mut self) -> u32 {
        self.size += 1;
        self.nodes.push(None);
        self.disks.push(Some(SimDisk::new()));
        self.start(self.size);
        self.size
    }

    /// Crashes node `id`: unsynced writes are lost (there are none: every step is synced).
    pub(super) fn crash(&mut self, id: u32) {
        let node = self.nodes[id as usize - 1].take().expect("running");
        let mut disk = node.into_storage();
        disk.crash();
        self.disks[id as usize - 1] = Some(disk);
    }

    pub(super) fn node(&mut self, id: NodeId) -> Option<&mut Node<SimDisk>> {
        self.nodes[id.0 as usize - 1].as_mut()
    }

    /// Syncs the node's disk (telling the node, which may then commit), then releases its
    /// outputs.
    pub(super) fn drain(&mut self, id: NodeId) {
        let now = self.now();
        let Some(node) = self.nodes[id.0 as usize - 1].as_mut() else {
            return;
        };
        let point = node.sync_point();
        node.storage_mut().sync().unwrap();
        node.synced(now, point);
        if self.keep == Some(id) {
            return;
        }
        while let Some(o) = node.poll_output() {
            match o {
                Output::Send { to, message } => self.in_flight.push_back((id, to, message)),
                Output::Reply {
                    request,
                    reply,
                    session,
                    ..
                } => {
                    if let Some(token) = session {
                        self.sessions.insert(request, token);
                    }
                    self.replies.push((id, request, reply))
                }
            }
        }
        node.check_invariants();
    }

    /// Delivers every message in flight (and those they cause), then fires the earliest timer.
    pub(super) fn step(&mut self) {
        while let Some((from, to, message)) = self.in_flight.pop_front() {
            if self.down.contains(&from)
                || self.down.contains(&to)
                || self.cut.contains(&(from, to))
            {
                continue;
            }
            self.now_micros += 50;
            let now = self.now();
            let Some(node) = self.node(to) else { continue };
            node.handle_message(now, from, message.clone());
            self.delivered.push((from, to, message));
            self.drain(to);
        }
        let next = self
            .nodes
            .iter()
            .flatten()
            .filter_map(|n| n.poll_timeout())
            .min();
        if let Some(t) = next {
            self.now_micros = self.now_micros.max(t.as_micros());
            let now = self.now();
            for i in 1..=self.size {
                let id = NodeId(i);
                if let Some(node) = self.node(id)
                    && node.poll_timeout().is_some_and(|t| t <= now.instant)
                {
                    node.handle_timeout(now);
                    self.drain(id);
                }
            }
        }
    }

    /// Cuts every link between `a`'s nodes and the others, both ways.
    pub(super) fn partition(&mut self, a: &[u32]) {
        for &x in a {
            for y in 1..=self.size {
                if !a.contains(&y) {
                    self.cut.insert((NodeId(x), NodeId(y)));
                    self.cut.insert((NodeId(y), NodeId(x)));
                }
            }
        }
    }

    pub(super) fn heal(&mut self) {
        self.cut.clear();
    }

    /// Runs `steps` steps (virtual time advances with each timer).
    pub(super) fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step();
        }
    }

    pub(super) fn submit(&mut self, via: u32, req: Request) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        let now = self.now();
        self.node(NodeId(via))
            .expect("running")
            .handle_request(now, request, req);
        self.drain(NodeId(via));
        request
    }

    pub(super) fn reply_to(&mut self, request: RequestId) -> Option<Reply> {
        let i = self.replies.iter().position(|(_, r, _)| *r == request)?;
        Some(self.replies.remove(i).2)
    }

    /// Submits `req` through node `via` and runs until it is answered (10 virtual s at most).
    pub(super) fn call(&mut self, via: u32, req: Request) -> Reply {
        let request = self.submit(via, req);
        let deadline = self.now_micros + 10_000_000;
        loop {
            if let Some(r) = self.reply_to(request) {
                return r;
            }
            assert!(self.now_micros < deadline, "request {request:?} unanswered");
            self.step();
        }
    }

    pub(super) fn leader(&mut self, keyspace: &str) -> Option<NodeId> {
        (1..=self.size).map(NodeId).find(|id| {
            !self.down.contains(id)
                && self.nodes[id.0 as usize - 1]
                    .as_ref()
                    .and_then(|n| n.primary().info(keyspace))
                    .is_some_and(|g| g.leader == Some(*id))
        })
    }

    /// Runs until the keyspace has a leader that every running, reachable voter follows.
    pub(super) fn elect(&mut self, keyspace: &str) -> NodeId {
        let deadline = self.now_micros + 30_000_000;
        loop {
            if let Some(l) = self.leader(keyspace) {
                let agreed = (1..=self.size).map(NodeId).all(|id| {
                    self.down.contains(&id)
                        || self.nodes[id.0 as usize - 1]
                            .as_ref()
                            .and_then(|n| n.primary().info(keyspace))
                            .is_none_or(|g| g.leader == Some(l))
                });
                if agreed {
                    return l;
                }
            }
            assert!(self.now_micros < deadline, "no leader elected");
            self.step();
        }
    }

    pub(super) fn get(&mut self, via: u32, key: &str) -> Reply {
        self.call(
            via,
            Request::Get {
                key: b(key),
                r: None,
            },
        )
    }

    pub(super) fn set(&mut self, via: u32, key: &str, value: &str) -> Reply {
        self.call(
            via,
            Request::Set {
                key: b(key),
                value: b(value),
                w: None,
            },
        )
    }

    pub(super) fn incr(&mut self, via: u32, key: &str, by: i64) -> Reply {
        self.call(
            via,
            Request::Apply {
                key: b(key),
                op: Operation::CounterAdd(by),
                r: None,
                w: None,
            },
        )
    }
}
