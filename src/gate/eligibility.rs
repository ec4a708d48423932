//! May this node's database own? The rules, in order (docs/mysql.md, *Eligibility and
//! ranking*): a recent database fault or a divergence finding keeps it out; so does a database
//! that is not healthy. In gate mode only a writable database may own. In promote mode the
//! owner of the newest term seen decides: a replica of it is judged by its lag, the last owner
//! itself is eligible, a cluster that never saw an owner lets the most advanced database stand
//! once every database host has reported, and anything else must rejoin the owner's history
//! first — or a hand-over to it would roll the cluster back.

use crate::config::MysqlMode;
use crate::core::NodeIdx;
use crate::mysql::DbStatus;
use crate::mysql::dialect::code;
use std::fmt;
use std::time::Duration;

/// What the decision rests on, gathered by the agent.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub mode: MysqlMode,
    pub me: NodeIdx,
    /// The local database as last probed.
    pub db: &'a DbStatus,
    /// `max_lag_ms`.
    pub max_lag: Duration,
    /// A database fault whose back-off has not ended (a failed promotion, say).
    pub fault: Option<&'a str>,
    /// This database diverged from the primary's history.
    pub diverged: Option<&'a str>,
    /// The owner of the newest term seen: its node, id and database address (what a replica
    /// of it names as its source). `None`: no owner ever seen (a cluster starting).
    pub last_owner: Option<(NodeIdx, &'a str, &'a str)>,
    /// No owner seen yet, and the start-up wait for every database host's first report is
    /// still on.
    pub cold_start: Option<ColdStart>,
    /// The highest position a writable peer reported in this run, and that peer's id.
    pub highest_writable: (u64, &'a str),
    /// The highest position among peers that replicate the last owner's history and cannot
    /// stand themselves (down, silent or not eligible since), as they last reported, and that
    /// peer's id. Live, eligible peers are left to the ranking.
    pub ahead: Option<(u64, &'a str)>,
    /// An owner holds a live lease: replicas of it keep receiving, and how far each got says
    /// nothing yet.
    pub owner_live: bool,
    /// Rejoined the last owner: the position it had then, which this database must reach
    /// (`gate::Gate::catching_up`).
    pub catching_up: Option<u64>,
    /// The last owner's position when it was first seen primary (`Owners::primary_floor`).
    pub floor: u64,
    /// This node was the last primary, and a newer term's owner (id, term) was never seen
    /// writable here nor heard since as a replica of this node's history
    /// (`Owners::unseen_newer_owner`).
    pub newer_owner: Option<(&'a str, u64)>,
}

/// A cluster starting: the database hosts not heard healthy yet, and how long the wait lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColdStart {
    pub missing: Vec<String>,
    pub left: Duration,
}

/// Why a database may not own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    Fault(String),
    Diverged(String),
    Unhealthy(String),
    /// Gate mode: only the writable database's node may own.
    ReadOnly,
    ColdStart(ColdStart),
    /// The source refuses this database's position (error 1236).
    PositionRefused,
    /// The SQL thread stopped with received events left to apply.
    ApplyStopped,
    Lagging {
        lag_s: u64,
        max_ms: u64,
    },
    LagUnknown,
    /// Never saw an owner, and a writable peer is further ahead.
    Behind {
        position: u64,
        best: u64,
        on: String,
    },
    /// Cannot receive from the last owner any more, and a peer replica received more: it has
    /// transactions this database lacks (acknowledged writes, with semi-sync).
    BehindPeer {
        position: u64,
        best: u64,
        on: String,
    },
    /// Below the last owner's position when it became primary: it did not follow it.
    BelowPrimary {
        position: u64,
        floor: u64,
    },
    /// Re-pointed at the last owner and not yet as far as it was then.
    CatchingUp {
        position: u64,
        target: u64,
    },
    /// The last primary itself, but a newer term had another owner that may have written
    /// what this database lacks.
    NewerOwner {
        owner: String,
        term: u64,
    },
    /// Not a replica of the last owner (a former primary, a replica of someone else).
    MustRejoin {
        owner: String,
    },
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::Fault(e) => f.write_str(e),
            Ineligible::Diverged(d) => write!(f, "database diverged from the primary: {d}"),
            Ineligible::Unhealthy(p) => write!(f, "database not healthy ({p})"),
            Ineligible::ReadOnly => {
                f.write_str("database is read_only (gate mode: only the writable database's node may own)")
            }
            Ineligible::ColdStart(c) => write!(
                f,
                "cluster starting: waiting for the databases of {} to report (at most {} ms more)",
                c.missing.join(", "),
                c.left.as_millis()
            ),
            Ineligible::PositionRefused => f.write_str(
                "the source refuses this database's position (error 1236): diverged or purged binlogs",
            ),
            Ineligible::ApplyStopped => {
                f.write_str("replication SQL thread stopped with received events left to apply")
            }
            Ineligible::Lagging { lag_s, max_ms } => {
                write!(f, "replica {lag_s} s behind its source (max_lag {max_ms} ms)")
            }
            Ineligible::LagUnknown => f.write_str("replica lag unknown"),
            Ineligible::Behind { position, best, on } => write!(
                f,
                "database behind a writable one (position {position} < {best} on {on}) and not replicating"
            ),
            Ineligible::BehindPeer { position, best, on } => write!(
                f,
                "replica cut from its source and behind {on} (position {position} < {best}): {on} has \
                 transactions it lacks; waiting until {on} can own, or `vipgate failover-ack` here to \
                 promote this one anyway"
            ),
            Ineligible::BelowPrimary { position, floor } => write!(
                f,
                "position {position} is below the last owner's {floor} when it became primary: this \
                 replica did not follow it"
            ),
            Ineligible::CatchingUp { position, target } => write!(
                f,
                "catching up after rejoining the owner: position {position} of at least {target}"
            ),
            Ineligible::NewerOwner { owner, term } => write!(
                f,
                "{owner} owned term {term} after this database was primary and may have written what it \
                 lacks: waiting to hear from {owner}, or `vipgate failover-ack` here to let this one stand \
                 anyway"
            ),
            Ineligible::MustRejoin { owner } => write!(
                f,
                "database does not replicate from the last owner {owner}: it must rejoin first"
            ),
        }
    }
}

/// Why this node's database may not own, or `None` when it may.
pub fn ineligible(f: &Facts) -> Option<Ineligible> {
    if let Some(e) = f.fault {
        return Some(Ineligible::Fault(e.to_string()));
    }
    if let Some(d) = f.diverged {
        return Some(Ineligible::Diverged(d.to_string()));
    }
    if !f.db.healthy {
        let problem = f.db.problem.as_deref().unwrap_or("not checked yet");
        return Some(Ineligible::Unhealthy(problem.to_string()));
    }
    match f.mode {
        MysqlMode::Gate => (f.db.read_only != Some(false)).then_some(Ineligible::ReadOnly),
        MysqlMode::Promote => promote_mode(f),
    }
}

fn promote_mode(f: &Facts) -> Option<Ineligible> {
    if f.last_owner.is_none()
        && let Some(wait) = &f.cold_start
    {
        return Some(Ineligible::ColdStart(wait.clone()));
    }
    let last_owner = f.last_owner.map(|(node, _, _)| node);
    let owner_is_source = |source: &str| f.last_owner.is_none_or(|(_, _, address)| source == address);
    match f.db.replication.as_ref() {
        Some(r) if r.io_errno == Some(code::SOURCE_REFUSES_POSITION) => Some(Ineligible::PositionRefused),
        Some(r) if !r.sql_running && !r.applied_all_received => Some(Ineligible::ApplyStopped),
        // A replica of the last owner that cannot receive any more (the owner is gone, or its
        // link is), or with no owner to receive from: a peer replica that received more holds
        // transactions it lacks. Its lag would say nothing: 0 once it applied the little it
        // received.
        Some(r)
            if owner_is_source(&r.source) && last_owner != Some(f.me) && (!r.io_running || !f.owner_live) =>
        {
            match f.ahead {
                Some((best, on)) if best > f.db.position => Some(Ineligible::BehindPeer {
                    position: f.db.position,
                    best,
                    on: on.to_string(),
                }),
                _ => lagging(f),
            }
        }
        // A replica of the last owner: its lag decides (the last known lag once the source is
        // gone, 0 once everything received is applied).
        Some(r) if owner_is_source(&r.source) && last_owner != Some(f.me) => lagging(f),
        // This node was the last owner: its database is the newest history — unless a newer
        // owner may have written behind its back.
        _ if last_owner == Some(f.me) => f.newer_owner.map(|(owner, term)| Ineligible::NewerOwner {
            owner: owner.to_string(),
            term,
        }),
        // Never saw an owner (a cluster starting): the most advanced database wins; one behind
        // a writable peer waits.
        _ if last_owner.is_none() => {
            let (best, on) = f.highest_writable;
            (f.db.position < best).then(|| Ineligible::Behind {
                position: f.db.position,
                best,
                on: on.to_string(),
            })
        }
        // A former primary, or a replica of someone else: it must rejoin the owner's history
        // first, or it could roll the cluster back.
        _ => Some(Ineligible::MustRejoin {
            owner: f.last_owner.map_or("?", |(_, id, _)| id).to_string(),
        }),
    }
}

/// A replica of the last owner, judged by how far it got since it rejoined, then by its lag.
fn lagging(f: &Facts) -> Option<Ineligible> {
    if f.db.position < f.floor {
        return Some(Ineligible::BelowPrimary {
            position: f.db.position,
            floor: f.floor,
        });
    }
    if let Some(target) = f.catching_up.filter(|t| f.db.position < *t) {
        return Some(Ineligible::CatchingUp {
            position: f.db.position,
            target,
        });
    }
    let max_ms = u64::try_from(f.max_lag.as_millis()).unwrap_or(u64::MAX);
    match f.db.lag_s {
        Some(lag) if lag.saturating_mul(1000) <= max_ms => None,
        Some(lag_s) => Some(Ineligible::Lagging { lag_s, max_ms }),
        None => Some(Ineligible::LagUnknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::probe::Replication;

    const ME: NodeIdx = 1;
    const OWNER: (NodeIdx, &str, &str) = (0, "db1", "192.0.2.11");

    fn replica_of(source: &str, lag_s: Option<u64>) -> DbStatus {
        DbStatus {
            healthy: true,
            read_only: Some(true),
            lag_s,
            position: 10,
            replication: Some(Replication {
                source: source.into(),
                io_running: true,
                sql_running: true,
                seconds_behind: lag_s,
                received_gtid: "0-1-10".into(),
                applied_all_received: lag_s == Some(0),
                last_error: None,
                io_errno: None,
            }),
            ..DbStatus::default()
        }
    }

    fn facts(db: &DbStatus) -> Facts<'_> {
        Facts {
            mode: MysqlMode::Promote,
            me: ME,
            db,
            max_lag: Duration::from_secs(10),
            fault: None,
            diverged: None,
            last_owner: Some(OWNER),
            cold_start: None,
            highest_writable: (0, ""),
            ahead: None,
            owner_live: true,
            catching_up: None,
            floor: 0,
            newer_owner: None,
        }
    }

    #[test]
    fn the_last_primary_waits_for_a_newer_owner_it_never_saw_writable() {
        let former = DbStatus {
            healthy: true,
            read_only: Some(true),
            position: 40,
            ..DbStatus::default()
        };
        let me = Facts {
            last_owner: Some((ME, "db2", "192.0.2.12")),
            owner_live: false,
            ..facts(&former)
        };
        assert_eq!(ineligible(&me), None, "the last primary itself");
        let f = Facts {
            newer_owner: Some(("db3", 4)),
            ..me
        };
        assert_eq!(
            ineligible(&f),
            Some(Ineligible::NewerOwner {
                owner: "db3".into(),
                term: 4
            })
        );
        assert!(ineligible(&f).unwrap().to_string().contains("failover-ack"));
    }

    #[test]
    fn a_rejoined_replica_is_out_until_it_has_what_the_owner_had_then() {
        let replica = replica_of("192.0.2.11", Some(0));
        let f = |target| Facts {
            catching_up: Some(target),
            ..facts(&replica)
        };
        assert_eq!(
            ineligible(&f(14)),
            Some(Ineligible::CatchingUp {
                position: 10,
                target: 14
            })
        );
        assert_eq!(ineligible(&f(10)), None);
        // Below where the owner was when it became primary: it never followed it.
        let f = Facts {
            floor: 11,
            ..facts(&replica)
        };
        assert_eq!(
            ineligible(&f),
            Some(Ineligible::BelowPrimary {
                position: 10,
                floor: 11
            })
        );
    }

    #[test]
    fn a_replica_cut_from_its_source_is_out_while_a_peer_replica_received_more() {
        let mut cut = replica_of("192.0.2.11", Some(0));
        if let Some(r) = &mut cut.replication {
            r.io_running = false;
        }
        let ahead = |best| Facts {
            ahead: Some((best, "db3")),
            ..facts(&cut)
        };
        assert_eq!(
            ineligible(&ahead(14)),
            Some(Ineligible::BehindPeer {
                position: 10,
                best: 14,
                on: "db3".into()
            })
        );
        assert!(
            ineligible(&ahead(14))
                .unwrap()
                .to_string()
                .contains("db3 has transactions it lacks")
        );
        assert_eq!(
            ineligible(&ahead(10)),
            None,
            "as far as the peer: its lag decides"
        );
        assert_eq!(ineligible(&facts(&cut)), None, "no peer replica heard");
        // Still receiving from a live owner: it may catch up, and its lag decides.
        let receiving = replica_of("192.0.2.11", Some(0));
        let live = Facts {
            ahead: Some((14, "db3")),
            ..facts(&receiving)
        };
        assert_eq!(ineligible(&live), None);
        // Receiving again from a source whose lease lapsed: no owner, so it counts.
        let lapsed = Facts {
            owner_live: false,
            ..live
        };
        assert!(matches!(ineligible(&lapsed), Some(Ineligible::BehindPeer { .. })));
    }

    #[test]
    fn a_replica_of_the_last_owner_is_judged_by_its_lag() {
        let fresh = replica_of("192.0.2.11", Some(3));
        assert_eq!(ineligible(&facts(&fresh)), None);
        let lagging = replica_of("192.0.2.11", Some(11));
        assert_eq!(
            ineligible(&facts(&lagging)),
            Some(Ineligible::Lagging {
                lag_s: 11,
                max_ms: 10_000
            })
        );
        let unknown = replica_of("192.0.2.11", None);
        assert_eq!(ineligible(&facts(&unknown)), Some(Ineligible::LagUnknown));
    }

    #[test]
    fn a_database_outside_the_owners_history_must_rejoin_first() {
        let elsewhere = replica_of("192.0.2.99", Some(0));
        let mut former_primary = replica_of("x", Some(0));
        former_primary.replication = None;
        former_primary.read_only = Some(false);
        for db in [&elsewhere, &former_primary] {
            assert_eq!(
                ineligible(&facts(db)),
                Some(Ineligible::MustRejoin { owner: "db1".into() })
            );
        }
        // Unless it was the last owner itself.
        let f = Facts {
            last_owner: Some((ME, "db2", "192.0.2.12")),
            ..facts(&former_primary)
        };
        assert_eq!(ineligible(&f), None);
    }

    #[test]
    fn refused_positions_and_stopped_appliers_keep_a_replica_out() {
        let mut refused = replica_of("192.0.2.11", Some(0));
        refused.replication.as_mut().unwrap().io_errno = Some(code::SOURCE_REFUSES_POSITION);
        assert_eq!(ineligible(&facts(&refused)), Some(Ineligible::PositionRefused));
        let mut stopped = replica_of("192.0.2.11", Some(2));
        let r = stopped.replication.as_mut().unwrap();
        r.sql_running = false;
        r.applied_all_received = false;
        assert_eq!(ineligible(&facts(&stopped)), Some(Ineligible::ApplyStopped));
        // Stopped with nothing left to apply: the lag (0) decides.
        stopped.replication.as_mut().unwrap().applied_all_received = true;
        stopped.lag_s = Some(0);
        assert_eq!(ineligible(&facts(&stopped)), None);
    }

    #[test]
    fn faults_divergence_and_health_come_first() {
        let db = replica_of("192.0.2.11", Some(0));
        let f = Facts {
            fault: Some("promotion failed: x"),
            diverged: Some("y"),
            ..facts(&db)
        };
        assert_eq!(
            ineligible(&f),
            Some(Ineligible::Fault("promotion failed: x".into()))
        );
        let f = Facts {
            diverged: Some("y"),
            ..facts(&db)
        };
        assert_eq!(ineligible(&f), Some(Ineligible::Diverged("y".into())));
        let down = DbStatus {
            healthy: false,
            problem: Some("down: timed out".into()),
            ..db.clone()
        };
        assert_eq!(
            ineligible(&facts(&down)),
            Some(Ineligible::Unhealthy("down: timed out".into()))
        );
    }

    #[test]
    fn a_starting_cluster_waits_for_reports_then_the_most_advanced_stands() {
        let mut primary = replica_of("x", None);
        primary.replication = None;
        let wait = ColdStart {
            missing: vec!["db1".into()],
            left: Duration::from_millis(900),
        };
        let f = Facts {
            last_owner: None,
            cold_start: Some(wait.clone()),
            ..facts(&primary)
        };
        assert_eq!(ineligible(&f), Some(Ineligible::ColdStart(wait)));
        let f = Facts {
            last_owner: None,
            highest_writable: (12, "db1"),
            ..facts(&primary)
        };
        assert_eq!(
            ineligible(&f),
            Some(Ineligible::Behind {
                position: 10,
                best: 12,
                on: "db1".into()
            })
        );
        let f = Facts {
            last_owner: None,
            highest_writable: (10, "db1"),
            ..facts(&primary)
        };
        assert_eq!(ineligible(&f), None, "as far as the best writable peer");
    }

    #[test]
    fn gate_mode_wants_a_writable_database() {
        let mut db = replica_of("192.0.2.11", Some(0));
        let f = Facts {
            mode: MysqlMode::Gate,
            ..facts(&db)
        };
        assert_eq!(ineligible(&f), Some(Ineligible::ReadOnly));
        db.read_only = Some(false);
        let f = Facts {
            mode: MysqlMode::Gate,
            ..facts(&db)
        };
        assert_eq!(ineligible(&f), None);
    }
}
