//! Primary-backup liveness after heal: [`crate::SETTLE`] after the final heal (network reliable,
//! every node up, clocks back to baseline), every voter of the keyspace's group must know the
//! same leader. Elections take a few election timeouts (300-600 ms in the simulator), so a
//! cluster that has none by then is stuck.

use super::{CheckerResult, Violation, ViolationKind};
use std::collections::BTreeMap;
use triarch_core::NodeId;

pub const NAME: &str = "leader after heal";

/// `views`: each voter's leader (`None`: it knows none; a down voter is absent).
pub fn check(views: &BTreeMap<NodeId, Option<NodeId>>) -> CheckerResult {
    let first = views.values().next().copied().flatten();
    let agreed = first.is_some() && views.values().all(|v| *v == first) && !views.is_empty();
    let violations = if agreed {
        Vec::new()
    } else {
        let shown: Vec<String> = views
            .iter()
            .map(|(n, l)| match l {
                Some(l) => format!("{n} follows {l}"),
                None => format!("{n} knows no leader"),
            })
            .collect();
        vec![Violation {
            kind: ViolationKind::NoLeader,
            key: u64::MAX,
            index: None,
            detail: format!(
                "the voters do not agree on a leader after the heal: {}",
                if shown.is_empty() {
                    "no voter is up".to_string()
                } else {
                    shown.join(", ")
                }
            ),
        }]
    };
    CheckerResult {
        checker: NAME,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_voter_must_follow_the_same_leader() {
        let n = NodeId;
        let agreed: BTreeMap<_, _> = [(n(1), Some(n(2))), (n(2), Some(n(2))), (n(3), Some(n(2)))]
            .into_iter()
            .collect();
        assert!(check(&agreed).is_ok());
        let mut split = agreed.clone();
        split.insert(n(3), Some(n(3)));
        assert_eq!(check(&split).violations.len(), 1);
        let mut none = agreed;
        none.insert(n(1), None);
        assert!(!check(&none).is_ok());
        assert!(!check(&BTreeMap::new()).is_ok());
    }
}
