//! The simulator's runs: many seeds against the real core, and deliberate bugs it must catch.

use super::{Outcome, Sim, Violation};
use crate::core::Fault;
use std::time::Duration;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
    )
}

/// Runs `seeds` on all cores; returns every outcome or the first violation (lowest seed).
fn run_seeds(seeds: std::ops::Range<u64>, fault: Option<Fault>) -> Result<Vec<Outcome>, Violation> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let results: Vec<Vec<(u64, Result<Outcome, Violation>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                s.spawn(move || {
                    seeds
                        .filter(|seed| seed % threads == t)
                        .map(|seed| (seed, Sim::new(seed, fault, false).run()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulator thread panicked"))
            .collect()
    });
    let mut all: Vec<_> = results.into_iter().flatten().collect();
    all.sort_by_key(|(seed, _)| *seed);
    all.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn every_seed_keeps_one_owner_at_most_and_elects_one_after_healing() {
    let count = env_u64("VIPGATE_SIM_SEEDS").unwrap_or(10_000);
    let outcomes = run_seeds(0..count, None).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(outcomes.len() as u64, count);
    let events: u64 = outcomes.iter().map(|o| o.events).sum();
    let worst = outcomes.iter().map(|o| o.time_to_owner).max().unwrap_or_default();
    let mut times: Vec<Duration> = outcomes.iter().map(|o| o.time_to_owner).collect();
    times.sort();
    println!(
        "{count} seeds, {events} events: time to owner after healing median {:?}, p99 {:?}, max {worst:?}",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
    );
}

#[test]
fn replay_one_seed() {
    // Without VIPGATE_SIM_SEED this replays seed 1 quietly, so the test itself stays exercised.
    let seed = env_u64("VIPGATE_SIM_SEED");
    let sim = Sim::new(seed.unwrap_or(1), None, seed.is_some());
    println!("scenario: {:?}", sim.scenario);
    match sim.run() {
        Ok(outcome) => println!("{outcome:?}"),
        Err(v) => panic!("{v}"),
    }
}

#[test]
fn the_same_seed_replays_exactly() {
    for seed in [3, 77, 1234] {
        let a = Sim::new(seed, None, false).run().unwrap();
        let b = Sim::new(seed, None, false).run().unwrap();
        assert_eq!(
            (a.events, a.time_to_owner, a.ownership_changes),
            (b.events, b.time_to_owner, b.ownership_changes)
        );
    }
}

/// Returns the first safety violation the simulator finds in `seeds` with `fault` injected
/// (a bug may also delay elections; only a broken safety invariant counts as caught).
fn first_violation(fault: Fault, seeds: u64) -> Violation {
    (0..seeds)
        .find_map(|seed| {
            Sim::new(seed, Some(fault), false)
                .run()
                .err()
                .filter(|v| v.safety)
        })
        .unwrap_or_else(|| panic!("the simulator did not catch {fault:?} in {seeds} seeds"))
}

#[test]
fn catches_a_lease_counted_from_ack_receipt() {
    let v = first_violation(Fault::AckFromReceiveTime, 5_000);
    println!("caught: {v}");
    assert!(
        v.what.contains("same instant") || v.what.contains("still holds"),
        "{v}"
    );
}

#[test]
fn catches_a_restarted_agent_voting_at_once() {
    let v = first_violation(Fault::NoQuietAfterRestart, 5_000);
    println!("caught: {v}");
    assert!(
        v.what.contains("same instant") || v.what.contains("still holds"),
        "{v}"
    );
}

#[test]
fn catches_votes_and_acks_counted_where_they_were_not_sent() {
    let v = first_violation(Fault::UnboundReplies, 5_000);
    println!("caught: {v}");
}
