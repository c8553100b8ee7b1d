//! What only the trade-off explorer's runs do ([`Simulation::for_explore_with`]): keyspace
//! settings chosen by the user (N/R/W, merge policy, read policy, anti-entropy), a count of
//! reads answered with siblings, and a periodic check, after the final heal, of whether every
//! replica of every key agrees (the time to converge). Other runs build no [`ExploreRun`] and
//! behave exactly as before.

use super::{Event, HostState, Phase, Simulation, index};
use crate::checker::regional;
use crate::merged::MergedWorkload;
use std::collections::BTreeMap;
use std::time::Duration;
use triarch_core::{Instant, KeyspaceConfig, MergePolicy, Model, NodeId, ReadPolicy};
use triarch_leaderless::ring::{self, Ring};
use triarch_leaderless::table_name;
use triarch_node::{Reply, RequestError};
use triarch_storage::Storage;

/// How often, after the final heal, the replicas are compared. The time to converge is known to
/// this resolution.
pub const CONVERGENCE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Per host: (incarnation, syncs, staged writes) ([`Simulation::disks_fingerprint`]).
type DisksFingerprint = Vec<(u64, u64, usize)>;

/// The settings of an explorer run. `Default`: the keyspaces' own settings, anti-entropy off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExploreSettings {
    /// The leaderless data keyspace's (N, R, W); `None`: its own (3, 2, 2).
    pub quorums: Option<(u8, u8, u8)>,
    /// The merge policy of the leaderless register keyspaces (workloads LR and LB, whose
    /// clients GET and SET): `lww` or `siblings`; `None`: `lww`. Other keyspaces keep theirs.
    pub merge: Option<MergePolicy>,
    /// The primary-backup keyspaces' read policy (workloads L and B); `None`: linearizable,
    /// served under leader leases on odd seeds and by ReadIndex on even ones.
    pub read: Option<ReadPolicy>,
    /// Leaderless Merkle anti-entropy on, comparing each range with each peer at most once per
    /// this interval; `None`: off.
    pub anti_entropy_interval: Option<Duration>,
}

/// What an explorer run keeps besides the settings.
#[derive(Clone, Debug, Default)]
pub(super) struct ExploreRun {
    pub(super) settings: ExploreSettings,
    /// Main-phase reads answered "this key has siblings" (more than one concurrent value).
    pub(super) siblings_reads: u64,
    pub(super) healed_at: Option<Instant>,
    /// The first check of the current unbroken run of checks at which every replica agreed.
    pub(super) agreeing_since: Option<Instant>,
    pub(super) checks: u64,
    /// What every disk looked like at the last check ([`Simulation::disks_fingerprint`]) and
    /// whether the replicas agreed then: unchanged disks need no new comparison.
    pub(super) last_check: Option<(DisksFingerprint, bool)>,
}

impl ExploreSettings {
    /// The keyspace `workload` runs on under these settings (`None`: workload A, whose
    /// `default` keyspace the node seeds itself unless N/R/W are given).
    pub fn keyspace(&self, workload: Option<MergedWorkload>) -> Option<KeyspaceConfig> {
        let mut keyspace = match workload {
            Some(w) => w.keyspace(),
            None => KeyspaceConfig::leaderless(KeyspaceConfig::DEFAULT_NAME),
        };
        match keyspace.model {
            Model::Leaderless => {
                if let Some((n, r, w)) = self.quorums {
                    (keyspace.n, keyspace.r, keyspace.w) = (n, r, w);
                }
                if let Some(merge) = self.merge
                    && matches!(
                        workload,
                        Some(MergedWorkload::LwwRegisters | MergedWorkload::LwwBank)
                    )
                {
                    keyspace.merge = merge;
                }
            }
            Model::PrimaryBackup => {
                if let Some(read) = self.read {
                    keyspace.read = read;
                }
            }
            Model::MultiLeader => {}
        }
        if workload.is_none() && self.quorums.is_none() {
            return None;
        }
        Some(keyspace)
    }
}

impl Simulation {
    /// The data keyspace with the explorer's settings, for a node's configuration (`None`:
    /// leave the node's configuration as any other run has it).
    pub(super) fn explore_keyspace(&self) -> Option<KeyspaceConfig> {
        let explore = self.explore.as_ref()?;
        explore
            .settings
            .keyspace(self.merged.as_ref().map(|m| m.clients.workload))
    }

    /// The data keyspace the nodes are configured with: the workload's, placed in its home
    /// region ([`crate::RegionOptions::primary_home`]), with the explorer's settings; `None`
    /// where the nodes keep the configuration every run has.
    pub(super) fn data_keyspace(&self) -> Option<KeyspaceConfig> {
        match self.explore_keyspace() {
            Some(mut keyspace) => {
                if let Some(run) = &self.merged {
                    keyspace.home = run.keyspace.home.clone();
                }
                Some(keyspace)
            }
            None => self.merged.as_ref().map(|run| run.keyspace.clone()),
        }
    }

    /// The settings of this run, if it is an explorer run.
    pub fn explore_settings(&self) -> Option<&ExploreSettings> {
        self.explore.as_ref().map(|e| &e.settings)
    }

    /// Explorer runs: main-phase reads that were answered with siblings (a `siblings` keyspace
    /// holding more than one concurrent value of the key). 0 for other runs.
    pub fn siblings_reads(&self) -> u64 {
        self.explore.as_ref().map_or(0, |e| e.siblings_reads)
    }

    /// Explorer runs: how long after the final heal every replica of every key came to agree
    /// and kept agreeing to the end of the run (checked every [`CONVERGENCE_CHECK_INTERVAL`]);
    /// `None` if they did not agree at the last check, or for other runs.
    pub fn time_to_converge(&self) -> Option<Duration> {
        let explore = self.explore.as_ref()?;
        let (healed, since) = (explore.healed_at?, explore.agreeing_since?);
        Some(Duration::from_micros(
            since.as_micros() - healed.as_micros(),
        ))
    }

    /// Counts a main-phase reply that reports siblings.
    pub(super) fn note_reply(&mut self, reply: &Reply) {
        if self.phase != Phase::Main {
            return;
        }
        if let Some(explore) = &mut self.explore
            && matches!(reply, Reply::Error(RequestError::Siblings { .. }))
        {
            explore.siblings_reads += 1;
        }
    }

    /// At the final heal: the first convergence check, now.
    pub(super) fn explore_final_heal(&mut self) {
        if let Some(explore) = &mut self.explore {
            explore.healed_at = Some(self.now);
            self.schedule(Duration::ZERO, Event::ConvergenceCheck);
        }
    }

    /// One convergence check; the next one [`CONVERGENCE_CHECK_INTERVAL`] later, until the run
    /// ends.
    pub(super) fn convergence_check(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        let disks = self.disks_fingerprint();
        let known = self
            .explore
            .as_ref()
            .and_then(|e| e.last_check.as_ref())
            .filter(|(before, _)| *before == disks)
            .map(|&(_, agree)| agree);
        let agree = known.unwrap_or_else(|| self.replicas_agree());
        let now = self.now;
        let explore = self.explore.as_mut().expect("checks run in explorer runs");
        explore.checks += 1;
        explore.last_check = Some((disks, agree));
        if !agree {
            explore.agreeing_since = None;
        } else if explore.agreeing_since.is_none() {
            explore.agreeing_since = Some(now);
        }
        self.schedule(CONVERGENCE_CHECK_INTERVAL, Event::ConvergenceCheck);
    }

    /// Per host: its incarnation, its disk's syncs and its staged writes. A disk's contents
    /// (staged writes included) change only by a write, which adds a staged write until a sync
    /// (counted) takes them all, or by a crash (a new incarnation): equal fingerprints, equal
    /// contents.
    fn disks_fingerprint(&self) -> DisksFingerprint {
        self.hosts
            .iter()
            .map(|h| {
                let disk = match &h.state {
                    HostState::Up(n) => n.storage(),
                    HostState::Down(disk) => disk,
                };
                (h.incarnation, disk.syncs(), disk.unsynced_writes())
            })
            .collect()
    }

    /// Whether every replica of every key of the run's data keyspace holds the same thing now:
    /// byte-equal records (leaderless: over the key's N owners; primary-backup: every voter's
    /// replicated rows), or for multi-leader keyspaces the simulator's own convergence rule
    /// ([`regional::check_convergence`]: the same rows inside each region, the same merged
    /// record in every region).
    fn replicas_agree(&self) -> bool {
        let workload = self.merged.as_ref().map(|m| m.clients.workload);
        if let Some(w) = workload {
            if w.is_multileader() {
                return regional::check_convergence(&self.snapshot_region_replicas(w)).is_ok();
            }
            if w.keyspace().model == Model::PrimaryBackup {
                let tables = self.replica_tables();
                let mut copies = tables.values();
                let first = copies.next();
                return copies.all(|t| Some(t) == first);
            }
        }
        let keyspace = self
            .explore_keyspace()
            .unwrap_or_else(|| KeyspaceConfig::leaderless(KeyspaceConfig::DEFAULT_NAME));
        let ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        let ring = Ring::new(&ids, ring::VNODES_PER_NODE_DEFAULT);
        let table = table_name(&keyspace.name);
        (0..self.options.keys).all(|key| {
            let bytes = match workload {
                Some(w) => w.key_bytes(key),
                None => super::key_bytes(key),
            };
            let owners =
                ring.preference_list(Ring::position(&keyspace.name, &bytes), keyspace.n.into());
            let copies: BTreeMap<NodeId, Option<Vec<u8>>> = owners
                .into_iter()
                .map(|node| {
                    let stored = match &self.hosts[index(node)].state {
                        HostState::Up(n) => n.storage().get(&table, &bytes),
                        HostState::Down(disk) => disk.get(&table, &bytes),
                    }
                    .expect("SimDisk reads do not fail");
                    (node, stored)
                })
                .collect();
            let mut values = copies.values();
            let first = values.next();
            values.all(|v| Some(v) == first)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reach_only_the_keyspaces_they_name() {
        let settings = ExploreSettings {
            quorums: Some((5, 1, 4)),
            merge: Some(MergePolicy::Siblings),
            read: Some(ReadPolicy::Lease),
            anti_entropy_interval: None,
        };
        let lr = settings
            .keyspace(Some(MergedWorkload::LwwRegisters))
            .expect("a keyspace");
        assert_eq!(
            (lr.n, lr.r, lr.w, lr.merge),
            (5, 1, 4, MergePolicy::Siblings)
        );
        // The set keeps its merge; N/R/W apply.
        let set = settings
            .keyspace(Some(MergedWorkload::Set))
            .expect("a keyspace");
        assert_eq!((set.n, set.merge), (5, MergePolicy::Set));
        let a = settings.keyspace(None).expect("N/R/W given");
        assert_eq!((a.name.as_str(), a.n, a.r, a.w), ("default", 5, 1, 4));
        let pb = settings
            .keyspace(Some(MergedWorkload::Registers))
            .expect("a keyspace");
        assert_eq!((pb.n, pb.read), (3, ReadPolicy::Lease));
        let ml = settings
            .keyspace(Some(MergedWorkload::MlRegisters))
            .expect("a keyspace");
        assert_eq!(ml, MergedWorkload::MlRegisters.keyspace());
        assert_eq!(ExploreSettings::default().keyspace(None), None);
    }
}
