//! The explorer's keyspace settings (N/R/W, merge policy, read policy, anti-entropy) and the
//! after-write and repair costs they expose: siblings returned, time to converge after the
//! final heal, anti-entropy keys and bytes (issue 8).

/// (In a module named `explore`, so that `cargo test -p triarch-sim explore` runs them.)
mod explore {
    use std::time::Duration;
    use triarch_core::{MergePolicy, Model, ReadPolicy};
    use triarch_sim::explore::{CustomMix, ExploreOptions, Workload, explore};

    fn only(workload: Workload, model: Model) -> ExploreOptions {
        ExploreOptions {
            seeds: 2,
            workloads: vec![workload],
            models: vec![model],
            ..ExploreOptions::default()
        }
    }

    /// Contended registers: few keys, many writes, so that concurrent writes meet.
    fn contended() -> CustomMix {
        CustomMix {
            reads: 0.5,
            keys: 5,
            zipf: 0.0,
            ..CustomMix::default()
        }
    }

    #[test]
    fn keyspace_settings_are_validated_with_clear_errors() {
        let leaderless = only(Workload::Custom, Model::Leaderless);
        let r_over_n = ExploreOptions {
            n: Some(3),
            r: Some(4),
            ..leaderless.clone()
        };
        let e = r_over_n.validate().expect_err("R > N");
        assert!(e.contains("R=4 exceeds N=3"), "{e}");
        let n_over_nodes = ExploreOptions {
            n: Some(10),
            ..leaderless.clone()
        };
        let e = n_over_nodes.validate().expect_err("N > nodes");
        assert!(e.contains("N=10 exceeds the 9 node(s)"), "{e}");
        let zero = ExploreOptions {
            w: Some(0),
            ..leaderless.clone()
        };
        assert!(zero.validate().expect_err("W=0").contains("at least 1"));
        let set_merge = ExploreOptions {
            merge: Some(MergePolicy::Set),
            ..leaderless.clone()
        };
        assert!(
            set_merge
                .validate()
                .expect_err("set")
                .contains("lww or siblings")
        );
        let merge_on_prefs = ExploreOptions {
            merge: Some(MergePolicy::Siblings),
            ..only(Workload::Prefs, Model::Leaderless)
        };
        assert!(merge_on_prefs.validate().is_err());
        let quorums_without_leaderless = ExploreOptions {
            n: Some(3),
            ..only(Workload::Custom, Model::PrimaryBackup)
        };
        assert!(quorums_without_leaderless.validate().is_err());
        let read_without_pb = ExploreOptions {
            read: Some(ReadPolicy::Lease),
            ..leaderless.clone()
        };
        assert!(read_without_pb.validate().is_err());
        let ae_without_leaderless = ExploreOptions {
            anti_entropy: true,
            ..only(Workload::Prefs, Model::MultiLeader)
        };
        assert!(ae_without_leaderless.validate().is_err());
        // R and W default to a majority of the N given.
        let n5 = ExploreOptions {
            n: Some(5),
            ..leaderless
        };
        assert_eq!(n5.quorums(), (5, 3, 3));
        assert!(n5.validate().is_ok());
    }

    /// N, R and W reach the nodes: five replicas cost more messages per write than three, and the
    /// report says which settings ran, "where a write became authoritative" included.
    #[test]
    fn leaderless_quorums_reach_the_keyspace_and_the_report() {
        let base = ExploreOptions {
            mix: contended(),
            ..only(Workload::Custom, Model::Leaderless)
        };
        let three = explore(&base);
        let five = explore(&ExploreOptions {
            n: Some(5),
            r: Some(1),
            w: Some(1),
            ..base
        });
        let per_write = |r: &triarch_sim::explore::Report| r.cells[0].messages_per_write();
        assert!(
            per_write(&five) > per_write(&three) * 1.3,
            "{three}\n{five}"
        );
        let text = five.to_string();
        assert!(
            text.contains("once W=1 of the key's N=5 replicas") && text.contains("R=1 copies"),
            "{text}"
        );
        assert!(text.contains("leaderless N=5 R=1 W=1"), "{text}");
        let json = five.json_lines();
        assert!(
            json.contains(
                "\"n\":5,\"r\":1,\"w\":1,\"merge\":\"lww\",\"read\":null,\"anti_entropy\":false"
            ),
            "{json}"
        );
        assert!(
            three
                .to_string()
                .contains("once W=2 of the key's N=3 replicas")
        );
    }

    /// A read policy that lets a voter answer from its own state shows stale reads that the
    /// linearizable default never has.
    #[test]
    fn a_bounded_read_policy_shows_stale_reads_linearizable_does_not() {
        let base = ExploreOptions {
            mix: CustomMix {
                reads: 0.7,
                ..contended()
            },
            ..only(Workload::Custom, Model::PrimaryBackup)
        };
        let linearizable = explore(&ExploreOptions {
            read: Some(ReadPolicy::Linearizable),
            ..base.clone()
        });
        let bounded = explore(&ExploreOptions {
            read: Some(ReadPolicy::Bounded { max_lag_ms: 2_000 }),
            ..base
        });
        let stale = |r: &triarch_sim::explore::Report| {
            r.cells[0].staleness.as_ref().expect("registers").stale
        };
        assert_eq!(stale(&linearizable), 0, "{linearizable}");
        assert!(stale(&bounded) > 0, "{bounded}");
        assert!(bounded.json_lines().contains("\"read\":\"bounded:2000\""));
        let again = explore(&ExploreOptions {
            read: Some(ReadPolicy::Bounded { max_lag_ms: 2_000 }),
            ..only(Workload::Custom, Model::PrimaryBackup)
        });
        assert_eq!(again.to_string(), explore(&again.options).to_string());
    }

    /// Under `siblings`, concurrent writes to a key leave siblings that reads then return; under
    /// `lww` the figure does not exist.
    #[test]
    fn siblings_returned_counts_reads_of_concurrent_values() {
        let base = ExploreOptions {
            mix: contended(),
            ..only(Workload::Custom, Model::Leaderless)
        };
        let siblings = explore(&ExploreOptions {
            merge: Some(MergePolicy::Siblings),
            ..base.clone()
        });
        let again = explore(&ExploreOptions {
            merge: Some(MergePolicy::Siblings),
            ..base.clone()
        });
        assert_eq!(siblings.json_lines(), again.json_lines());
        let n = siblings.cells[0].siblings_returned;
        assert!(n.is_some_and(|n| n > 0), "{siblings}");
        assert!(siblings.to_string().contains("siblings returned"));
        let lww = explore(&base);
        assert_eq!(lww.cells[0].siblings_returned, None);
        assert!(lww.json_lines().contains("\"siblings_returned\":null"));
    }

    /// Primary-backup voters agree soon after the heal (they apply what the leader commits);
    /// leaderless replicas that missed writes while a region was cut off, with no anti-entropy,
    /// agree only once the final reads (after the settle period) have repaired them.
    #[test]
    fn time_to_converge_after_the_heal_differs_by_model() {
        let report = explore(&ExploreOptions {
            seeds: 2,
            workloads: vec![Workload::Prefs],
            models: vec![Model::PrimaryBackup, Model::Leaderless],
            ..ExploreOptions::default()
        });
        let pb = report
            .cell(Workload::Prefs, Model::PrimaryBackup)
            .expect("pb");
        let ll = report.cell(Workload::Prefs, Model::Leaderless).expect("ll");
        assert_eq!(pb.converge_after_heal.len(), 2);
        assert!(
            pb.converge_after_heal
                .iter()
                .all(|t| t.is_some_and(|t| t < Duration::from_secs(1))),
            "{report}"
        );
        assert!(
            ll.converge_after_heal
                .iter()
                .any(|t| t.is_none_or(|t| t >= triarch_sim::SETTLE)),
            "{report}"
        );
        assert!(
            report
                .json_lines()
                .contains("\"converge_after_heal_ms\":{\"seeds\":2")
        );
    }

    /// With `--anti-entropy`, leaderless replicas that missed writes while cut off agree before
    /// the final reads repair anything: exchanges alone converge them. (With exchanges stalled
    /// on the cut-off side holding the slots for 5 s, they agreed only after the final reads.)
    #[test]
    fn anti_entropy_converges_replicas_before_the_final_reads() {
        for workload in [Workload::Prefs, Workload::Cart] {
            let report = explore(&ExploreOptions {
                seeds: 3,
                anti_entropy: true,
                ..only(workload, Model::Leaderless)
            });
            let cell = &report.cells[0];
            assert_eq!(cell.converge_after_heal.len(), 3);
            assert!(
                cell.converge_after_heal
                    .iter()
                    .all(|t| t.is_some_and(|t| t < triarch_sim::SETTLE)),
                "{report}"
            );
        }
    }

    /// With `--anti-entropy`, exchanges repair keys and send bytes; without it the figures do not
    /// exist. The same options give the same bytes.
    #[test]
    fn anti_entropy_repairs_keys_and_is_deterministic() {
        let base = ExploreOptions {
            n: Some(3),
            r: Some(1),
            w: Some(1),
            ..only(Workload::Prefs, Model::Leaderless)
        };
        let on = ExploreOptions {
            anti_entropy: true,
            ..base.clone()
        };
        let (a, b) = (explore(&on), explore(&on));
        assert_eq!(a.json_lines(), b.json_lines());
        assert_eq!(a.to_string(), b.to_string());
        let cell = &a.cells[0];
        assert!(
            cell.anti_entropy_keys_repaired.is_some_and(|k| k > 0),
            "{a}"
        );
        assert!(cell.anti_entropy_bytes_sent.is_some_and(|b| b > 0), "{a}");
        assert!(a.to_string().contains("anti-entropy keys repaired"));
        let off = explore(&base);
        assert_eq!(off.cells[0].anti_entropy_keys_repaired, None);
        // Anti-entropy reaches the leaderless runs only, and a read policy the
        // primary-backup ones only: the other models' cells stay as they were.
        let every = ExploreOptions {
            models: Model::ALL.to_vec(),
            ..base.clone()
        };
        let plain = explore(&every);
        let with_ae = explore(&ExploreOptions {
            anti_entropy: true,
            ..every.clone()
        });
        let with_read = explore(&ExploreOptions {
            read: Some(ReadPolicy::Lease),
            ..every
        });
        for model in [Model::PrimaryBackup, Model::MultiLeader] {
            assert_eq!(
                plain.cell(Workload::Prefs, model),
                with_ae.cell(Workload::Prefs, model)
            );
        }
        for model in [Model::Leaderless, Model::MultiLeader] {
            assert_eq!(
                plain.cell(Workload::Prefs, model),
                with_read.cell(Workload::Prefs, model)
            );
        }
        assert_ne!(
            plain.cell(Workload::Prefs, Model::Leaderless),
            with_ae.cell(Workload::Prefs, Model::Leaderless)
        );
        assert!(
            off.json_lines()
                .contains("\"anti_entropy_keys_repaired\":null")
        );
    }
}
