//! The ownership state machine: one lease, granted by a majority, held by at most one agent.
//!
//! `Core::handle(now, event)` is the only way state changes; it returns the [`Action`]s the shell
//! must carry out **in order** (a `Persist` always comes before the `Send` that relies on it).
//! `Core::next_deadline()` tells the shell when to deliver the next [`Event::Tick`] at the latest.
//! The rules, timing and the safety argument are in `docs/protocol.md`.

use super::message::{Ack, Heartbeat, Message, NodeIdx, Position, Release, Term, Vote, VoteRequest};
use super::rank::Candidate;
use super::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// Largest cluster the core supports (votes and acks are tracked in a `u64` bit set).
pub const MAX_MEMBERS: usize = 64;

/// At most this many unacknowledged owner heartbeats are remembered; older ones cannot extend
/// the lease beyond what newer ones will.
const MAX_PENDING: usize = 128;

/// Subtracted from the owner's lease to cover clock granularity and rounding.
const LEASE_MARGIN: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub witness: bool,
    pub priority: u8,
}

/// Static parameters of one agent's core. Built by the configuration layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub me: NodeIdx,
    /// All members (including `me`), indexed by [`NodeIdx`].
    pub members: Vec<Member>,
    pub interval: Duration,
    /// L: how long a voter's grant lasts on its own clock.
    pub lease: Duration,
    /// ρ in parts per million: clock rates differ from real time by at most this much.
    pub drift_ppm: u32,
    /// Time the shell needs to give the VIP up (remove it, fence the database); the owner starts
    /// releasing this long before its lease ends.
    pub release_budget: Duration,
    /// `Some(delay)`: hand ownership to a higher-priority eligible agent once it has been
    /// eligible for `delay`. `None`: never move a healthy owner.
    pub preempt_delay: Option<Duration>,
    /// Seed for election jitter (the shell passes something random per process).
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("the cluster has {0} members; between 1 and {MAX_MEMBERS} are supported")]
    MemberCount(usize),
    #[error("this node's index {0} is not in the member list")]
    UnknownSelf(NodeIdx),
    #[error("the heartbeat interval must be at least 1 ms")]
    Interval,
    #[error("clock drift must be below 10 % (100000 ppm); got {0} ppm")]
    Drift(u32),
    #[error(
        "the owner's usable lease ({usable:?} = lease shortened for clock drift, minus the {budget:?} \
         release budget) must cover at least one heartbeat interval ({interval:?}); lengthen the lease"
    )]
    LeaseTooShort {
        usable: Duration,
        budget: Duration,
        interval: Duration,
    },
}

impl Settings {
    pub fn check(&self) -> Result<(), SettingsError> {
        let n = self.members.len();
        if n == 0 || n > MAX_MEMBERS {
            return Err(SettingsError::MemberCount(n));
        }
        if usize::from(self.me) >= n {
            return Err(SettingsError::UnknownSelf(self.me));
        }
        if self.interval < Duration::from_millis(1) {
            return Err(SettingsError::Interval);
        }
        if self.drift_ppm >= 100_000 {
            return Err(SettingsError::Drift(self.drift_ppm));
        }
        let usable = self.owner_lease().saturating_sub(self.release_budget);
        if usable < self.interval {
            return Err(SettingsError::LeaseTooShort {
                usable,
                budget: self.release_budget,
                interval: self.interval,
            });
        }
        Ok(())
    }

    /// L in whole milliseconds, rounded up.
    pub fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// What the wire carries so that mixed timing is refused.
    pub fn timing(&self) -> Timing {
        Timing {
            lease_ms: u32::try_from(self.lease_ms()).unwrap_or(u32::MAX),
            drift_ppm: self.drift_ppm,
        }
    }

    /// How long a (re)started agent neither votes nor acknowledges: the longest lease it may
    /// have granted before, under this or its previous configuration.
    pub fn quiet_period(&self, persisted: &PersistentState) -> Duration {
        self.lease.max(Duration::from_millis(persisted.lease_ms))
    }

    /// Votes (or acks) needed: a majority of all configured members.
    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// How long after sending a message that a majority acknowledged the owner may believe
    /// its lease: `L·(1−ρ)/(1+ρ) − margin`. Measured on the owner's clock, this ends no later
    /// (in real time) than the earliest grant of that majority.
    pub fn owner_lease(&self) -> Duration {
        let l = self.lease.as_micros();
        let ppm = u128::from(self.drift_ppm);
        let shortened = l * (1_000_000 - ppm) / (1_000_000 + ppm);
        Duration::from_micros(u64::try_from(shortened).unwrap_or(u64::MAX)).saturating_sub(LEASE_MARGIN)
    }

    /// How long a candidate waits for votes before giving the term up.
    pub fn election_timeout(&self) -> Duration {
        self.interval * 2
    }

    fn is_witness(&self, n: NodeIdx) -> bool {
        self.members.get(usize::from(n)).is_none_or(|m| m.witness)
    }
}

/// What must survive a restart, written with fsync before any message that relies on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistentState {
    /// Highest term this agent voted or acknowledged in (never decreases).
    pub term: Term,
    /// Whom it voted for (or acknowledged as owner) in `term`.
    pub voted_for: Option<NodeIdx>,
    /// Highest owner term it acknowledged a claim of (never decreases). A claim of an older
    /// term is stale — that owner's lease ended before this one began — and is refused, also
    /// after a restart, when the replay filter starts empty and a captured claim would pass it.
    pub acked: Term,
    /// The lease (L, in ms) its grants ran for. A restart with another `lease_ms` keeps quiet
    /// for the longer of the two: grants made before the restart may still be live.
    pub lease_ms: u64,
}

/// The values two agents' safety arithmetic must agree on (`docs/protocol.md` §7). Every
/// datagram carries them, and a peer whose values differ is refused: an owner counting a longer
/// lease than its voters grant could overlap its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease_ms: u32,
    pub drift_ppm: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed; deliver at `next_deadline()` at the latest.
    Tick,
    /// An authenticated, de-duplicated message from a peer.
    Received { from: NodeIdx, message: Message },
    /// The local database's state: whether this node may own, and how far its data has got.
    /// `blocked`: an anti-flap window is in effect — this agent takes ownership only when a
    /// releasing owner names it, never by starting an election on its own.
    /// `preferred`: this agent is in the last owner's region (it ranks before equally advanced
    /// candidates elsewhere).
    Health {
        eligible: bool,
        position: Position,
        blocked: bool,
        preferred: bool,
    },
    /// Operator or shutdown: give ownership up, preferably to `to` (or the best known peer).
    Release { to: Option<NodeIdx> },
    /// The shell finished an [`Action::Release`] (VIP removed, database fenced), with what it
    /// knows of the database's final state.
    Released { term: Term, final_data: FinalData },
    /// The shell's deadline removed the VIPs of `term` before the core released them (the
    /// agent loop stalled): an owner of `term` gives it up, since it can no longer serve it.
    VipLost { term: Term },
}

/// What the shell knows of a released database's final state, announced with the release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalData {
    /// Fenced (read_only ON) at this position: the successor waits until it has all of it.
    Fenced { position: Position, gtid: String },
    /// No database is consulted (gate mode, or none): a named successor stands as named.
    NotConsulted,
    /// The database was not running, so its final position is unknown. The release names no
    /// successor — a named one is granted whatever its data — and the election ranks the
    /// candidates by what they hold.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// No majority renewed the lease in time.
    LeaseExpiring,
    /// The local database is no longer healthy or promotable.
    Ineligible,
    /// An operator (or a graceful stop) asked for it.
    Requested,
    /// A higher-priority agent has been eligible for the preemption delay.
    Preempted,
    /// Another agent claims a lease in a newer term.
    NewerOwner,
    /// The shell's deadline removed the VIPs first (the agent loop stalled past it).
    VipLost,
}

impl ReleaseReason {
    /// A short name, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ReleaseReason::LeaseExpiring => "lease_expiring",
            ReleaseReason::Ineligible => "ineligible",
            ReleaseReason::Requested => "requested",
            ReleaseReason::Preempted => "preempted",
            ReleaseReason::NewerOwner => "newer_owner",
            ReleaseReason::VipLost => "vip_lost",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::LeaseExpiring => "lease not renewed by a majority",
            ReleaseReason::Ineligible => "local node no longer eligible",
            ReleaseReason::Requested => "release requested",
            ReleaseReason::Preempted => "preempted by a higher-priority node",
            ReleaseReason::NewerOwner => "a newer owner exists",
            ReleaseReason::VipLost => "the VIPs were removed at the lease deadline",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this state durably (fsync) before carrying out the actions after it.
    Persist(PersistentState),
    Send {
        to: NodeIdx,
        message: Message,
    },
    /// Send to every other member.
    Broadcast(Message),
    /// Become the owner for `term`: take the VIP (and, later, promote the database). The lease
    /// ends at `lease_end` unless renewed; the shell must never hold the VIP past the last
    /// `lease_end` it was given.
    Acquire {
        term: Term,
        lease_end: Instant,
        /// Won as the successor a releasing owner named (a planned hand-over), not by taking
        /// over on its own.
        named: bool,
    },
    /// The lease was renewed: the shell's hard deadline moves to `lease_end`.
    Renewed {
        term: Term,
        lease_end: Instant,
    },
    /// Give up ownership of `term`: remove the VIP (fence the database) before `lease_end`, then
    /// report [`Event::Released`].
    Release {
        term: Term,
        reason: ReleaseReason,
        lease_end: Instant,
    },
}

/// What this agent is doing about ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    Follower,
    Candidate,
    Owner,
    Releasing,
}

#[derive(Clone, Debug)]
struct Pending {
    seq: u64,
    sent: Instant,
    acks: u64,
}

#[derive(Clone, Debug)]
enum Role {
    Follower,
    Candidate {
        term: Term,
        first_sent: Instant,
        deadline: Instant,
        granted: u64,
        denied: u64,
        /// Standing as the successor a releasing owner named.
        named: bool,
    },
    Owner {
        term: Term,
        lease_end: Instant,
        pending: VecDeque<Pending>,
    },
    Releasing {
        term: Term,
        lease_end: Instant,
        to: Option<NodeIdx>,
    },
}

/// This agent's grant: it supports `to` as owner of `term` until `until` (its own clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub to: NodeIdx,
    pub term: Term,
    pub until: Instant,
}

/// The latest a peer told us about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerView {
    pub last_heard: Option<Instant>,
    pub term: Term,
    pub owner: Option<NodeIdx>,
    pub lease_claim: bool,
    pub eligible: bool,
    /// Takes ownership only when named (an anti-flap window): not a rival in elections.
    pub blocked: bool,
    pub preferred: bool,
    pub position: Position,
    pub priority: u8,
}

/// Deliberate protocol bugs, used only to show that the simulator catches them.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The owner counts its lease from when an ack arrives instead of when it sent the heartbeat.
    AckFromReceiveTime,
    /// A restarted agent votes and acknowledges at once, forgetting grants it made before.
    NoQuietAfterRestart,
    /// Votes and acks count wherever they arrive, not only at the node they name.
    UnboundReplies,
    /// A restart keeps quiet for half its lease.
    HalfQuietAfterRestart,
    /// A restart keeps quiet for its current lease only, forgetting a longer one its grants
    /// ran for before a configuration change.
    QuietNewLeaseOnly,
    /// The owner's lease ignores clock drift: `L − margin`.
    DriftIgnored,
    /// The owner's lease allows for half the drift bound.
    HalfDrift,
    /// The owner's lease applies the drift the wrong way round: `L·(1+ρ)/(1−ρ)`.
    DriftWrongWay,
    /// A voter acknowledges no owner whose term is below its own (a liveness bug).
    NoAckBelowOwnTerm,
    /// A voter acknowledges an older term of the owner it grants a newer one.
    AckOlderTermOfGrantee,
    /// An ack for a term below the voter's own keeps the vote it cast in its own term.
    VoteKeptAfterOlderAck,
    /// A voter acknowledges a claim older than one it acknowledged before (after a restart,
    /// a replayed claim of a dead owner).
    AckedTermForgotten,
}

pub struct Core {
    s: Settings,
    persisted: PersistentState,
    role: Role,
    grant: Option<Grant>,
    /// Per peer, the highest term it told us it released: no votes or acks for it up to that
    /// term, so a delayed request or heartbeat cannot revive what it gave up.
    released: Vec<Term>,
    /// A releasing owner named this successor; voters skip the ranking check for it.
    handover: Option<(NodeIdx, Instant)>,
    /// No votes, acks or candidacy before this (grants made before a restart may still be live).
    quiet_until: Instant,
    /// After handing over, do not compete with the successor before this.
    hold_until: Instant,
    /// Backoff after a failed election.
    retry_after: Instant,
    jitter: Duration,
    rng: u64,
    peers: Vec<PeerView>,
    eligible: bool,
    blocked: bool,
    preferred: bool,
    position: Position,
    seq: u64,
    next_heartbeat: Instant,
    /// When we last heard someone claim a lease, and who.
    last_claim: Option<(NodeIdx, Instant)>,
    max_term_seen: Term,
    preempt: Option<(NodeIdx, Instant)>,
    #[cfg(test)]
    fault: Option<Fault>,
}

/// splitmix64: a tiny deterministic generator, good enough to de-synchronise candidates (and
/// to drive the simulator). Not for anything secret.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn bit(n: NodeIdx) -> u64 {
    1u64 << n
}

fn count(set: u64) -> usize {
    set.count_ones() as usize
}

impl Core {
    /// Starts (or restarts) an agent at `now` with the state it persisted before. It neither
    /// votes nor acknowledges for one lease, since it may have granted one it no longer remembers.
    pub fn new(settings: Settings, persisted: PersistentState, now: Instant) -> Core {
        debug_assert!(settings.check().is_ok(), "settings must be checked by the caller");
        let n = settings.members.len();
        let mut core = Core {
            quiet_until: now + settings.quiet_period(&persisted),
            rng: settings.seed ^ 0x9e37_79b9_7f4a_7c15,
            s: settings,
            persisted,
            role: Role::Follower,
            grant: None,
            released: vec![0; n],
            handover: None,
            hold_until: now,
            retry_after: now,
            jitter: Duration::ZERO,
            peers: vec![PeerView::default(); n],
            eligible: false,
            blocked: false,
            preferred: false,
            position: 0,
            seq: 0,
            next_heartbeat: now,
            last_claim: None,
            max_term_seen: persisted.term,
            preempt: None,
            #[cfg(test)]
            fault: None,
        };
        core.jitter = core.draw_jitter();
        core
    }

    /// Takes on new settings while running (a reload): priorities, preemption and the
    /// heartbeat interval. The lease, the drift bound and the members must stay as they are —
    /// the caller refuses a reload that changes them.
    pub fn reconfigure(&mut self, settings: Settings) {
        debug_assert!(settings.check().is_ok(), "settings must be checked by the caller");
        debug_assert_eq!(
            (
                settings.me,
                settings.members.len(),
                settings.lease,
                settings.drift_ppm
            ),
            (self.s.me, self.s.members.len(), self.s.lease, self.s.drift_ppm),
            "only live-changeable settings may change"
        );
        self.s = settings;
    }

    #[cfg(test)]
    pub(crate) fn inject(&mut self, fault: Fault, now: Instant) {
        self.fault = Some(fault);
        match fault {
            Fault::NoQuietAfterRestart => self.quiet_until = now,
            Fault::HalfQuietAfterRestart => self.quiet_until = now + self.s.lease / 2,
            Fault::QuietNewLeaseOnly => self.quiet_until = now + self.s.lease,
            _ => {}
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    pub fn persisted(&self) -> PersistentState {
        self.persisted
    }

    pub fn term(&self) -> Term {
        self.persisted.term
    }

    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Follower => RoleKind::Follower,
            Role::Candidate { .. } => RoleKind::Candidate,
            Role::Owner { .. } => RoleKind::Owner,
            Role::Releasing { .. } => RoleKind::Releasing,
        }
    }

    /// The end of the lease this agent believes it holds, if it owns.
    pub fn lease_end(&self) -> Option<Instant> {
        match self.role {
            Role::Owner { lease_end, .. } => Some(lease_end),
            _ => None,
        }
    }

    /// Whether this agent believes, at `now`, that it holds an unexpired lease.
    pub fn holds_lease(&self, now: Instant) -> bool {
        self.lease_end().is_some_and(|end| now < end)
    }

    /// Whom this agent considers the owner: itself if it owns, else the holder of its live grant.
    pub fn owner(&self, now: Instant) -> Option<NodeIdx> {
        if self.holds_lease(now) {
            return Some(self.s.me);
        }
        self.live_grant(now).map(|g| g.to)
    }

    pub fn grant(&self) -> Option<Grant> {
        self.grant
    }

    pub fn peers(&self) -> &[PeerView] {
        &self.peers
    }

    pub fn eligible(&self) -> bool {
        self.eligible && !self.s.is_witness(self.s.me)
    }

    /// Eligible and not standing back after handing ownership over.
    fn candidate_now(&self, now: Instant) -> bool {
        self.eligible() && now >= self.hold_until
    }

    /// True while a restarted agent waits out grants it may have forgotten.
    pub fn quiet(&self, now: Instant) -> bool {
        now < self.quiet_until
    }

    /// The latest time at which the shell must deliver the next [`Event::Tick`].
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.next_heartbeat;
        match &self.role {
            Role::Owner { lease_end, .. } => next = next.min(*lease_end - self.s.release_budget),
            Role::Candidate { deadline, .. } => next = next.min(*deadline),
            Role::Releasing { lease_end, .. } => next = next.min(*lease_end),
            Role::Follower => {}
        }
        if let Some(at) = self.election_start_at(now) {
            next = next.min(at);
        }
        if let (Some(delay), Some((_, since))) = (self.s.preempt_delay, self.preempt) {
            next = next.min(since + delay);
        }
        next.max(now)
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick => {}
            Event::Received { from, message } => {
                if from != self.s.me && usize::from(from) < self.s.members.len() {
                    self.on_message(now, from, message, &mut out);
                }
            }
            Event::Health {
                eligible,
                position,
                blocked,
                preferred,
            } => {
                self.eligible = eligible;
                self.position = position;
                self.blocked = blocked;
                self.preferred = preferred;
            }
            Event::Release { to } => {
                if matches!(self.role, Role::Owner { .. }) {
                    let to = to.or_else(|| self.best_successor(now));
                    self.step_down(now, ReleaseReason::Requested, to, &mut out);
                    // Let the successor win instead of competing with it.
                    self.hold_until = now + self.s.lease;
                }
            }
            Event::Released { term, final_data } => {
                if let Role::Releasing { term: t, to, .. } = self.role
                    && t == term
                {
                    self.finish_release(term, to, final_data, &mut out);
                }
            }
            Event::VipLost { term } => {
                if matches!(self.role, Role::Owner { term: t, .. } if t == term) {
                    self.step_down(now, ReleaseReason::VipLost, None, &mut out);
                }
            }
        }
        self.advance(now, &mut out);
        out
    }

    fn advance(&mut self, now: Instant, out: &mut Vec<Action>) {
        match &self.role {
            Role::Owner { lease_end, .. } => {
                let lease_end = *lease_end;
                if !self.eligible() {
                    self.step_down(now, ReleaseReason::Ineligible, None, out);
                } else if now >= lease_end - self.s.release_budget {
                    self.step_down(now, ReleaseReason::LeaseExpiring, None, out);
                } else {
                    self.check_preemption(now, out);
                }
            }
            Role::Candidate { deadline, named, .. } => {
                if now >= *deadline || !self.eligible() || (self.blocked && !*named) {
                    self.abandon_election(now, out);
                }
            }
            Role::Releasing { lease_end, .. } => {
                // The shell never confirmed: its own deadline removed the VIP. Grants lapse on
                // their own; announcing a release we cannot vouch for would be unsafe.
                if now >= *lease_end {
                    self.role = Role::Follower;
                }
            }
            Role::Follower => {
                if self.election_start_at(now).is_some_and(|at| at <= now) {
                    self.start_election(now, out);
                }
            }
        }
        if now >= self.next_heartbeat {
            self.send_heartbeat(now, out);
        }
    }

    // ---- heartbeats and lease renewal -------------------------------------------------------

    fn send_heartbeat(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.seq += 1;
        self.next_heartbeat = now + self.s.interval;
        let lease_claim = self.holds_lease(now);
        if let Role::Owner { pending, .. } = &mut self.role {
            if pending.len() == MAX_PENDING {
                pending.pop_front();
            }
            pending.push_back(Pending {
                seq: self.seq,
                sent: now,
                acks: bit(self.s.me),
            });
            // The owner's own grant to itself is renewed with every heartbeat it sends.
            if let Some(g) = &mut self.grant {
                g.until = now + self.s.lease;
            }
        }
        if let Role::Candidate {
            term,
            granted,
            denied,
            ..
        } = self.role
        {
            // Ask again those that have not answered (the request or the vote may be lost).
            let request = self.vote_request(term);
            for to in 0..self.s.members.len() as NodeIdx {
                if to != self.s.me && (granted | denied) & bit(to) == 0 {
                    out.push(Action::Send {
                        to,
                        message: request.clone(),
                    });
                }
            }
        }
        out.push(Action::Broadcast(Message::Heartbeat(Heartbeat {
            term: self.persisted.term,
            seq: self.seq,
            owner: self.owner(now),
            lease_claim,
            eligible: self.candidate_now(now),
            blocked: self.blocked,
            preferred: self.preferred,
            position: self.position,
            priority: self.my_priority(),
        })));
    }

    fn on_heartbeat(&mut self, now: Instant, from: NodeIdx, hb: Heartbeat, out: &mut Vec<Action>) {
        self.max_term_seen = self.max_term_seen.max(hb.term);
        self.peers[usize::from(from)] = PeerView {
            last_heard: Some(now),
            term: hb.term,
            owner: hb.owner,
            lease_claim: hb.lease_claim,
            eligible: hb.eligible && !self.s.is_witness(from),
            blocked: hb.blocked,
            preferred: hb.preferred,
            position: hb.position,
            priority: hb.priority,
        };
        if !hb.lease_claim {
            return;
        }
        self.last_claim = Some((from, now));
        match self.role {
            Role::Owner { term, .. } if hb.term > term => {
                // Two live leases cannot exist; if a newer owner claims one, ours is the stale view.
                self.step_down(now, ReleaseReason::NewerOwner, None, out);
                return;
            }
            Role::Candidate { term, .. } if hb.term >= term => {
                self.abandon_election(now, out);
            }
            _ => {}
        }
        if self.may_ack(now, from, hb.term) {
            self.persist_ack(hb.term, from, out);
            self.grant = Some(Grant {
                to: from,
                term: hb.term,
                until: now + self.s.lease,
            });
            out.push(Action::Send {
                to: from,
                message: Message::Ack(Ack {
                    term: hb.term,
                    owner: from,
                    echo_seq: hb.seq,
                }),
            });
        }
    }

    /// A voter renews `owner`'s lease for `term` only if that cannot contradict a grant it made:
    /// not while quiet after a restart, not while granting someone else (or `owner` in a newer
    /// term), not for a term `owner` has released.
    ///
    /// A claim for any term comes from the one agent that won it. Leases exclude each other
    /// through live grants, not terms, so a voter whose own term is higher — raised by a
    /// candidacy that failed while it was cut off, say — still supports the owner it hears:
    /// refusing would leave it outside the cluster until that owner's lease ended.
    fn may_ack(&self, now: Instant, owner: NodeIdx, term: Term) -> bool {
        if self.quiet(now) || self.s.is_witness(owner) {
            return false;
        }
        #[cfg(test)]
        if self.fault == Some(Fault::NoAckBelowOwnTerm) && term < self.persisted.term {
            return false;
        }
        #[cfg(test)]
        let older_than_grant = |g: Grant| g.term > term && self.fault != Some(Fault::AckOlderTermOfGrantee);
        #[cfg(not(test))]
        let older_than_grant = |g: Grant| g.term > term;
        if self
            .live_grant(now)
            .is_some_and(|g| g.to != owner || older_than_grant(g))
        {
            return false;
        }
        term > self.released[usize::from(owner)] && !self.older_than_acked(term)
    }

    fn older_than_acked(&self, term: Term) -> bool {
        #[cfg(test)]
        if self.fault == Some(Fault::AckedTermForgotten) {
            return false;
        }
        term < self.persisted.acked
    }

    /// The lease an acknowledged message gives the owner ([`Settings::owner_lease`]).
    fn owner_lease(&self) -> Duration {
        #[cfg(test)]
        if let Some(f) = self.fault {
            let mut s = self.s.clone();
            match f {
                Fault::DriftIgnored => s.drift_ppm = 0,
                Fault::HalfDrift => s.drift_ppm /= 2,
                Fault::DriftWrongWay => {
                    let l = self.s.lease.as_micros();
                    let ppm = u128::from(self.s.drift_ppm);
                    let longer = l * (1_000_000 + ppm) / (1_000_000 - ppm);
                    return Duration::from_micros(longer as u64) - LEASE_MARGIN;
                }
                _ => {}
            }
            return s.owner_lease();
        }
        self.s.owner_lease()
    }

    fn on_ack(&mut self, now: Instant, from: NodeIdx, ack: Ack, out: &mut Vec<Action>) {
        let majority = self.s.majority();
        let owner_lease = self.owner_lease();
        #[cfg(test)]
        let from_receive = self.fault == Some(Fault::AckFromReceiveTime);
        if !self.addressed_to_me(ack.owner) {
            return;
        }
        let Role::Owner {
            term,
            lease_end,
            pending,
        } = &mut self.role
        else {
            return;
        };
        if ack.term != *term {
            return;
        }
        let Some(p) = pending.iter_mut().find(|p| p.seq == ack.echo_seq) else {
            return;
        };
        p.acks |= bit(from);
        if count(p.acks) < majority {
            return;
        }
        #[allow(unused_mut)]
        let mut basis = p.sent;
        #[cfg(test)]
        if from_receive {
            basis = now;
        }
        let _ = now;
        let new_end = basis + owner_lease;
        if new_end > *lease_end {
            *lease_end = new_end;
            out.push(Action::Renewed {
                term: *term,
                lease_end: new_end,
            });
        }
        // Older heartbeats can no longer extend the lease beyond this one.
        let seq = ack.echo_seq;
        pending.retain(|p| p.seq > seq);
    }

    /// Records a grant to `to` in `term` (a vote, an ack, or a candidacy) on disk before the
    /// message that relies on it, together with the lease it runs for.
    fn persist_grant(&mut self, term: Term, to: NodeIdx, out: &mut Vec<Action>) {
        self.persist(term, Some(to), out);
    }

    fn persist(&mut self, term: Term, voted_for: Option<NodeIdx>, out: &mut Vec<Action>) {
        self.persist_with(term, voted_for, self.persisted.acked, out);
    }

    fn persist_with(&mut self, term: Term, voted_for: Option<NodeIdx>, acked: Term, out: &mut Vec<Action>) {
        let state = PersistentState {
            term,
            voted_for,
            acked,
            lease_ms: self.s.lease_ms(),
        };
        if self.persisted != state {
            self.persisted = state;
            out.push(Action::Persist(state));
        }
    }

    /// Records an ack to `owner` in `term`. For a term below its own the agent keeps its term
    /// (terms never go down) and forgets whom it voted for in it, so that no repeated vote
    /// request of that term can be granted beside the live grant to `owner`.
    fn persist_ack(&mut self, term: Term, owner: NodeIdx, out: &mut Vec<Action>) {
        #[cfg(test)]
        if self.fault == Some(Fault::VoteKeptAfterOlderAck) && term < self.persisted.term {
            return;
        }
        let acked = self.persisted.acked.max(term);
        if term >= self.persisted.term {
            self.persist_with(term, Some(owner), acked, out);
        } else {
            self.persist_with(self.persisted.term, None, acked, out);
        }
    }

    /// Whether a vote or ack naming `node` is meant for this agent. One meant for another
    /// (copied there by a relay) must never count here.
    fn addressed_to_me(&self, node: NodeIdx) -> bool {
        #[cfg(test)]
        if self.fault == Some(Fault::UnboundReplies) {
            return true;
        }
        node == self.s.me
    }

    // ---- elections ---------------------------------------------------------------------------

    fn live_grant(&self, now: Instant) -> Option<Grant> {
        self.grant.filter(|g| now < g.until)
    }

    fn my_priority(&self) -> u8 {
        self.s.members[usize::from(self.s.me)].priority
    }

    fn me_as_candidate(&self) -> Candidate {
        Candidate {
            node: self.s.me,
            position: self.position,
            preferred: self.preferred,
            priority: self.my_priority(),
        }
    }

    /// The eligible peers an election competes with, against a candidate at position `than`:
    /// those that may take over on their own, and blocked ones with more data — electing past
    /// them would lose what only they have, so no one is elected until an operator decides.
    fn live_rivals(&self, now: Instant, than: Position) -> impl Iterator<Item = Candidate> + '_ {
        self.live_candidates(now)
            .filter(move |c| !self.peers[usize::from(c.node)].blocked || c.position > than)
    }

    /// Eligible peers heard within one lease, as candidates (blocked ones too: a releasing
    /// owner may name them).
    fn live_candidates(&self, now: Instant) -> impl Iterator<Item = Candidate> + '_ {
        self.peers.iter().enumerate().filter_map(move |(i, p)| {
            let node = i as NodeIdx;
            let heard = p
                .last_heard
                .is_some_and(|t| now.saturating_since(t) < self.s.lease);
            (node != self.s.me && heard && p.eligible).then_some(Candidate {
                node,
                position: p.position,
                preferred: p.preferred,
                priority: p.priority,
            })
        })
    }

    /// Whom an owner hands over to when no one is named: the best candidate that could also
    /// take over on its own (e.g. in the owner's region), else the best of all. A hand-over
    /// waits for the old primary's final position, so a less advanced successor loses nothing.
    fn best_successor(&self, now: Instant) -> Option<NodeIdx> {
        let best = |blocked_too: bool| {
            self.live_candidates(now)
                .filter(|c| blocked_too || !self.peers[usize::from(c.node)].blocked)
                .min_by(|a, b| a.cmp_rank(b))
                .map(|c| c.node)
        };
        best(false).or_else(|| best(true))
    }

    /// When this agent should start an election, if it may: an eligible agent that is not
    /// granting a live lease, has heard no lease claim for a full L, and waits `rank × interval`
    /// plus jitter behind better candidates it hears. A named successor starts at once.
    fn election_start_at(&self, now: Instant) -> Option<Instant> {
        if !matches!(self.role, Role::Follower) || !self.eligible() {
            return None;
        }
        let mut at = self.quiet_until.max(self.retry_after);
        if let Some(g) = self.grant {
            at = at.max(g.until);
        }
        if self.named_successor(now) {
            return Some(at);
        }
        if self.blocked {
            return None;
        }
        at = at.max(self.hold_until);
        if let Some((_, seen)) = self.last_claim {
            at = at.max(seen + self.s.lease);
        }
        let me = self.me_as_candidate();
        let rank = self
            .live_rivals(now, self.position)
            .filter(|c| c.better_than(&me))
            .count() as u32;
        Some(at + self.s.interval * rank + self.jitter)
    }

    fn vote_request(&self, term: Term) -> Message {
        Message::VoteRequest(VoteRequest {
            term,
            position: self.position,
            priority: self.my_priority(),
        })
    }

    /// A releasing owner named this agent its successor, and the hand-over is still on.
    fn named_successor(&self, now: Instant) -> bool {
        self.handover
            .is_some_and(|(to, until)| to == self.s.me && now < until)
    }

    fn start_election(&mut self, now: Instant, out: &mut Vec<Action>) {
        let named = self.named_successor(now);
        let term = self.persisted.term.max(self.max_term_seen) + 1;
        self.persist_grant(term, self.s.me, out);
        self.grant = Some(Grant {
            to: self.s.me,
            term,
            until: now + self.s.lease,
        });
        // A hand-over naming this agent stays until it expires: a retry is still the named one.
        self.handover = self.handover.filter(|(to, _)| *to == self.s.me);
        self.role = Role::Candidate {
            term,
            first_sent: now,
            deadline: now + self.s.election_timeout(),
            granted: bit(self.s.me),
            denied: 0,
            named,
        };
        out.push(Action::Broadcast(self.vote_request(term)));
        self.tally(now, out);
    }

    fn on_vote_request(&mut self, now: Instant, from: NodeIdx, req: VoteRequest, out: &mut Vec<Action>) {
        self.max_term_seen = self.max_term_seen.max(req.term);
        let requester = Candidate {
            node: from,
            position: req.position,
            // From its heartbeats: a vote request does not carry it.
            preferred: self.peers[usize::from(from)].preferred,
            priority: req.priority,
        };
        if let Role::Candidate { term, named, .. } = self.role
            && req.term >= term
            && !named
            && !self.named_successor(now)
            && requester.better_than(&self.me_as_candidate())
        {
            // Step aside for a better candidate rather than split the vote.
            self.abandon_election(now, out);
        }
        let granted = self.may_vote(now, requester, req.term);
        if granted {
            self.persist_grant(req.term, from, out);
            let until = now + self.s.lease;
            self.grant = Some(Grant {
                to: from,
                term: req.term,
                until: self.grant.map_or(until, |g| g.until.max(until)),
            });
        }
        out.push(Action::Send {
            to: from,
            message: Message::Vote(Vote {
                term: req.term,
                candidate: from,
                granted,
            }),
        });
    }

    fn may_vote(&self, now: Instant, c: Candidate, term: Term) -> bool {
        if self.quiet(now) || self.s.is_witness(c.node) || term <= self.released[usize::from(c.node)] {
            return false;
        }
        let repeat = term == self.persisted.term && self.persisted.voted_for == Some(c.node);
        if !(term > self.persisted.term || repeat) {
            return false;
        }
        if !repeat && self.live_grant(now).is_some() {
            return false;
        }
        if self
            .handover
            .is_some_and(|(to, until)| to == c.node && now < until)
        {
            return true;
        }
        let me = (self.candidate_now(now) && (!self.blocked || self.position > c.position))
            .then(|| self.me_as_candidate());
        !self
            .live_rivals(now, c.position)
            .chain(me)
            .any(|other| other.node != c.node && other.better_than(&c))
    }

    fn on_vote(&mut self, now: Instant, from: NodeIdx, vote: Vote, out: &mut Vec<Action>) {
        if !self.addressed_to_me(vote.candidate) {
            return;
        }
        let Role::Candidate {
            term,
            granted,
            denied,
            ..
        } = &mut self.role
        else {
            return;
        };
        if vote.term != *term {
            return;
        }
        if vote.granted {
            *granted |= bit(from);
        } else {
            *denied |= bit(from);
        }
        self.tally(now, out);
    }

    fn tally(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Role::Candidate {
            term,
            first_sent,
            granted,
            denied,
            named,
            ..
        } = self.role
        else {
            return;
        };
        let majority = self.s.majority();
        // Every voter set its grant on receiving our request, after `first_sent`.
        let lease_end = first_sent + self.owner_lease();
        if count(granted) >= majority && self.eligible() && now < lease_end - self.s.release_budget {
            self.role = Role::Owner {
                term,
                lease_end,
                pending: VecDeque::new(),
            };
            self.preempt = None;
            out.push(Action::Acquire {
                term,
                lease_end,
                named,
            });
            self.next_heartbeat = now;
        } else if count(denied) > self.s.members.len() - majority {
            self.abandon_election(now, out);
        }
    }

    /// Gives a failed candidacy up and tells voters, so their grants to us lapse at once.
    fn abandon_election(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Role::Candidate { term, .. } = self.role else {
            return;
        };
        self.role = Role::Follower;
        self.grant = None;
        self.retry_after = now + self.s.election_timeout();
        self.jitter = self.draw_jitter();
        out.push(Action::Broadcast(Message::Release(Release {
            term,
            to: None,
            final_position: None,
            final_gtid: String::new(),
        })));
    }

    fn draw_jitter(&mut self) -> Duration {
        let z = splitmix64(&mut self.rng);
        let half = u64::try_from(self.s.interval.as_micros() / 2)
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_micros(z % half)
    }

    // ---- giving ownership up ----------------------------------------------------------------

    fn step_down(&mut self, now: Instant, reason: ReleaseReason, to: Option<NodeIdx>, out: &mut Vec<Action>) {
        let Role::Owner { term, lease_end, .. } = self.role else {
            return;
        };
        self.role = Role::Releasing { term, lease_end, to };
        self.preempt = None;
        if let Some(to) = to {
            // Vote for the successor we name even if our own data ranks higher.
            self.handover = Some((to, now + self.s.lease));
        }
        out.push(Action::Release {
            term,
            reason,
            lease_end,
        });
        // The next heartbeat must no longer claim the lease.
        self.next_heartbeat = now;
    }

    /// The VIP is gone: voters may now grant someone else without waiting for expiry.
    fn finish_release(
        &mut self,
        term: Term,
        to: Option<NodeIdx>,
        final_data: FinalData,
        out: &mut Vec<Action>,
    ) {
        let (to, final_position, final_gtid) = match final_data {
            FinalData::Fenced { position, gtid } => (to, Some(position), gtid),
            FinalData::NotConsulted => (to, None, String::new()),
            FinalData::Unknown => {
                self.handover = None;
                (None, None, String::new())
            }
        };
        self.role = Role::Follower;
        if self.grant.is_some_and(|g| g.to == self.s.me) {
            self.grant = None;
        }
        out.push(Action::Broadcast(Message::Release(Release {
            term,
            to,
            final_position,
            final_gtid,
        })));
    }

    fn on_release(&mut self, now: Instant, from: NodeIdx, rel: Release) {
        self.peers[usize::from(from)].lease_claim = false;
        let released = &mut self.released[usize::from(from)];
        *released = (*released).max(rel.term);
        let from_holder = self.grant.is_some_and(|g| g.to == from && g.term <= rel.term);
        if from_holder {
            self.grant = None;
        }
        // A successor named in an old, delayed release must not bypass the ranking.
        let current = from_holder || rel.term >= self.persisted.term;
        if self.last_claim.is_some_and(|(who, _)| who == from) {
            self.last_claim = None;
            // Candidates stagger by rank from the moment the lease became free.
            self.retry_after = self.retry_after.max(now);
        }
        if let Some(to) = rel.to.filter(|_| current) {
            self.handover = Some((to, now + self.s.lease));
            if to != self.s.me {
                // Give the named successor a full lease to take over before competing with it.
                self.last_claim = Some((to, now));
            }
        }
    }

    fn check_preemption(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(delay) = self.s.preempt_delay else { return };
        let mine = self.my_priority();
        let recent = self.s.interval * 2;
        let better = self
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.eligible && p.priority > mine)
            .filter(|(_, p)| p.last_heard.is_some_and(|t| now.saturating_since(t) <= recent))
            .max_by_key(|(i, p)| (p.priority, std::cmp::Reverse(*i)))
            .map(|(i, _)| i as NodeIdx);
        match (better, self.preempt) {
            (None, _) => self.preempt = None,
            (Some(b), Some((p, since))) if b == p => {
                if now >= since + delay {
                    self.step_down(now, ReleaseReason::Preempted, Some(b), out);
                    self.hold_until = now + self.s.lease;
                }
            }
            (Some(b), _) => self.preempt = Some((b, now)),
        }
    }

    fn on_message(&mut self, now: Instant, from: NodeIdx, message: Message, out: &mut Vec<Action>) {
        match message {
            Message::Heartbeat(hb) => self.on_heartbeat(now, from, hb, out),
            Message::Ack(ack) => self.on_ack(now, from, ack, out),
            Message::VoteRequest(req) => self.on_vote_request(now, from, req, out),
            Message::Vote(vote) => self.on_vote(now, from, vote, out),
            Message::Release(rel) => self.on_release(now, from, rel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    fn t(ms: u64) -> Instant {
        Instant::from_micros(ms * MS)
    }

    fn settings(me: NodeIdx) -> Settings {
        Settings {
            me,
            members: vec![
                Member {
                    witness: false,
                    priority: 150,
                },
                Member {
                    witness: false,
                    priority: 100,
                },
                Member {
                    witness: true,
                    priority: 1,
                },
            ],
            interval: Duration::from_millis(200),
            lease: Duration::from_millis(1000),
            drift_ppm: 10_000,
            release_budget: Duration::from_millis(200),
            preempt_delay: None,
            seed: 7,
        }
    }

    fn healthy(me: NodeIdx, now: Instant) -> Core {
        let mut c = Core::new(settings(me), PersistentState::default(), now);
        c.handle(
            now,
            Event::Health {
                eligible: true,
                position: 10,
                blocked: false,
                preferred: false,
            },
        );
        c
    }

    fn claim(term: Term, seq: u64) -> Message {
        Message::Heartbeat(Heartbeat {
            term,
            seq,
            owner: Some(0),
            lease_claim: true,
            eligible: true,
            blocked: false,
            preferred: false,
            position: 10,
            priority: 150,
        })
    }

    fn request(term: Term) -> Message {
        Message::VoteRequest(VoteRequest {
            term,
            position: 10,
            priority: 150,
        })
    }

    fn sent_vote(actions: &[Action]) -> Option<bool> {
        actions.iter().find_map(|a| match a {
            Action::Send {
                message: Message::Vote(v),
                ..
            } => Some(v.granted),
            _ => None,
        })
    }

    #[test]
    fn a_restarted_voter_neither_votes_nor_acks_for_one_lease() {
        let mut v = healthy(2, t(0));
        let out = v.handle(
            t(500),
            Event::Received {
                from: 0,
                message: request(1),
            },
        );
        assert_eq!(sent_vote(&out), Some(false));
        let out = v.handle(
            t(600),
            Event::Received {
                from: 0,
                message: claim(1, 1),
            },
        );
        assert!(!out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Ack(_),
                ..
            }
        )));
        let out = v.handle(
            t(1001),
            Event::Received {
                from: 0,
                message: request(2),
            },
        );
        assert_eq!(sent_vote(&out), Some(true));
    }

    #[test]
    fn a_vote_is_persisted_before_it_is_sent() {
        let mut v = healthy(2, t(0));
        let out = v.handle(
            t(1500),
            Event::Received {
                from: 0,
                message: request(4),
            },
        );
        let persist = out.iter().position(|a| {
            *a == Action::Persist(PersistentState {
                term: 4,
                voted_for: Some(0),
                acked: 0,
                lease_ms: 1000,
            })
        });
        let vote = out.iter().position(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::Vote(_),
                    ..
                }
            )
        });
        assert!(persist.unwrap() < vote.unwrap(), "{out:?}");
        assert_eq!(v.grant().unwrap().until, t(2500));
    }

    #[test]
    fn a_voter_granting_a_live_lease_refuses_and_keeps_its_term() {
        let mut v = healthy(2, t(0));
        v.handle(
            t(1500),
            Event::Received {
                from: 0,
                message: claim(3, 1),
            },
        );
        let out = v.handle(
            t(1600),
            Event::Received {
                from: 1,
                message: request(9),
            },
        );
        assert_eq!(sent_vote(&out), Some(false));
        assert_eq!(v.term(), 3, "a refused request must not depose the owner");
        let out = v.handle(
            t(1700),
            Event::Received {
                from: 0,
                message: claim(3, 2),
            },
        );
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Ack(_),
                ..
            }
        )));
    }

    #[test]
    fn a_witness_never_stands_for_election() {
        let mut w = healthy(2, t(0));
        for ms in (0..10_000).step_by(100) {
            w.handle(t(ms), Event::Tick);
        }
        assert_eq!(w.role(), RoleKind::Follower);
        assert!(!w.eligible());
    }

    /// Drives node 0 to ownership with votes from node 2 arriving `vote_delay` after the request.
    fn elect(vote_delay: u64) -> (Core, u64) {
        let mut c = healthy(0, t(0));
        let mut now = 0;
        while c.role() != RoleKind::Candidate {
            now += 10;
            c.handle(t(now), Event::Tick);
            assert!(now < 5_000, "node 0 never stood for election");
        }
        let term = c.term();
        let out = c.handle(
            t(now + vote_delay),
            Event::Received {
                from: 2,
                message: Message::Vote(Vote {
                    term,
                    candidate: 0,
                    granted: true,
                }),
            },
        );
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Acquire { named: false, .. })),
            "{out:?}"
        );
        (c, now)
    }

    fn blocked(me: NodeIdx, now: Instant) -> Core {
        let mut c = healthy(me, now);
        c.handle(
            now,
            Event::Health {
                eligible: true,
                position: 10,
                blocked: true,
                preferred: false,
            },
        );
        c
    }

    #[test]
    fn a_blocked_agent_takes_over_only_when_the_owner_names_it() {
        let mut c = blocked(1, t(0));
        c.handle(
            t(1500),
            Event::Received {
                from: 0,
                message: claim(3, 1),
            },
        );
        // The owner falls silent: its lease runs out, and no election starts. It still says it
        // is eligible, so that an owner may name it.
        let mut heartbeats = 0;
        for ms in (1600..20_000).step_by(50) {
            let out = c.handle(t(ms), Event::Tick);
            assert!(
                !out.iter()
                    .any(|a| matches!(a, Action::Broadcast(Message::VoteRequest(_)))),
                "{out:?}"
            );
            assert_eq!(c.role(), RoleKind::Follower);
            heartbeats += out
                .iter()
                .filter(|a| matches!(a, Action::Broadcast(Message::Heartbeat(h)) if h.eligible && h.blocked))
                .count();
        }
        assert!(heartbeats > 50, "{heartbeats}");
        // A later owner hands over to it by name: it stands at once and says so when it wins.
        c.handle(
            t(20_100),
            Event::Received {
                from: 0,
                message: claim(5, 1),
            },
        );
        c.handle(
            t(20_200),
            Event::Received {
                from: 0,
                message: Message::Release(Release {
                    term: 5,
                    to: Some(1),
                    final_position: Some(10),
                    final_gtid: String::new(),
                }),
            },
        );
        let out = c.handle(t(20_210), Event::Tick);
        assert_eq!(c.role(), RoleKind::Candidate, "{out:?}");
        // The first candidacy gets no answer; the retry is still the named one.
        let mut ms = 20_210;
        while c.role() == RoleKind::Candidate {
            ms += 10;
            c.handle(t(ms), Event::Tick);
        }
        while c.role() != RoleKind::Candidate {
            ms += 10;
            c.handle(t(ms), Event::Tick);
            assert!(ms < 21_200, "no second candidacy within the hand-over");
        }
        let out = c.handle(
            t(ms + 10),
            Event::Received {
                from: 2,
                message: Message::Vote(Vote {
                    term: c.term(),
                    candidate: 1,
                    granted: true,
                }),
            },
        );
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Acquire { named: true, .. })),
            "{out:?}"
        );
    }

    #[test]
    fn voters_do_not_wait_for_a_blocked_candidate_unless_it_has_more_data() {
        // (blocked, its position): the requester is at position 10, priority 150.
        for (is_blocked, position, granted) in [(false, 10, false), (true, 10, true), (true, 11, false)] {
            let mut v = healthy(2, t(0));
            let better = Message::Heartbeat(Heartbeat {
                term: 0,
                seq: 1,
                owner: None,
                lease_claim: false,
                eligible: true,
                blocked: is_blocked,
                preferred: false,
                position,
                priority: 200,
            });
            v.handle(
                t(1500),
                Event::Received {
                    from: 0,
                    message: better,
                },
            );
            let out = v.handle(
                t(1600),
                Event::Received {
                    from: 1,
                    message: request(4),
                },
            );
            assert_eq!(
                sent_vote(&out),
                Some(granted),
                "blocked: {is_blocked}, position {position}"
            );
        }
    }

    #[test]
    fn the_lease_counts_from_when_the_request_was_sent_not_when_votes_arrived() {
        let (c, sent) = elect(300);
        let owner_lease = c.settings().owner_lease();
        assert_eq!(owner_lease, Duration::from_micros(979_198));
        assert_eq!(c.lease_end(), Some(t(sent) + owner_lease));
    }

    #[test]
    fn a_renewal_counts_from_the_acknowledged_heartbeat_send() {
        let (mut c, sent) = elect(5);
        // The first heartbeat went out with the acquisition (at sent + 5); the next is due I later.
        let hb_at = sent + 205;
        let out = c.handle(t(hb_at), Event::Tick);
        let seq = out
            .iter()
            .find_map(|a| match a {
                Action::Broadcast(Message::Heartbeat(h)) if h.lease_claim => Some(h.seq),
                _ => None,
            })
            .expect("owner heartbeat");
        let term = c.term();
        c.handle(
            t(hb_at + 400),
            Event::Received {
                from: 2,
                message: Message::Ack(Ack {
                    term,
                    owner: 0,
                    echo_seq: seq,
                }),
            },
        );
        assert_eq!(c.lease_end(), Some(t(hb_at) + c.settings().owner_lease()));
    }

    #[test]
    fn release_is_announced_only_after_the_shell_removed_the_vip() {
        let (mut c, sent) = elect(5);
        let term = c.term();
        let out = c.handle(t(sent + 50), Event::Release { to: None });
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Release {
                reason: ReleaseReason::Requested,
                ..
            }
        )));
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::Broadcast(Message::Release(_)))),
            "{out:?}"
        );
        assert!(!c.holds_lease(t(sent + 50)));
        let released = Event::Released {
            term,
            final_data: FinalData::Fenced {
                position: 10,
                gtid: String::new(),
            },
        };
        let out = c.handle(t(sent + 80), released);
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Broadcast(Message::Release(r)) if r.term == term))
        );
        assert_eq!(c.role(), RoleKind::Follower);
    }

    #[test]
    fn a_release_whose_final_data_is_unknown_names_no_successor() {
        for (final_data, named) in [
            (FinalData::Unknown, None),
            (FinalData::NotConsulted, Some(2)),
            (
                FinalData::Fenced {
                    position: 10,
                    gtid: "0-1-10".into(),
                },
                Some(2),
            ),
        ] {
            let (mut c, sent) = elect(5);
            let term = c.term();
            c.handle(t(sent + 50), Event::Release { to: Some(2) });
            let out = c.handle(t(sent + 80), Event::Released { term, final_data });
            let to = out.iter().find_map(|a| match a {
                Action::Broadcast(Message::Release(r)) => Some(r.to),
                _ => None,
            });
            assert_eq!(to, Some(named), "{out:?}");
        }
    }

    #[test]
    fn an_owner_whose_database_fails_releases_at_once() {
        let (mut c, sent) = elect(5);
        let out = c.handle(
            t(sent + 60),
            Event::Health {
                eligible: false,
                position: 10,
                blocked: false,
                preferred: false,
            },
        );
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Release {
                reason: ReleaseReason::Ineligible,
                ..
            }
        )));
    }

    #[test]
    fn an_owner_without_acks_starts_releasing_one_budget_before_its_lease_ends() {
        let (mut c, sent) = elect(5);
        let end = c.lease_end().unwrap();
        let release_at = end - c.settings().release_budget;
        assert!(c.next_deadline(release_at - Duration::from_millis(1)) <= release_at);
        let out = c.handle(release_at - Duration::from_micros(1), Event::Tick);
        assert!(!out.iter().any(|a| matches!(a, Action::Release { .. })));
        let out = c.handle(release_at, Event::Tick);
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::Release {
                    reason: ReleaseReason::LeaseExpiring,
                    ..
                }
            )),
            "{sent} {out:?}"
        );
    }

    #[test]
    fn settings_refuse_a_lease_that_leaves_no_room_to_renew() {
        let mut s = settings(0);
        s.lease = Duration::from_millis(400);
        assert!(matches!(s.check(), Err(SettingsError::LeaseTooShort { .. })));
        assert_eq!(settings(0).majority(), 2);
    }

    fn acked(actions: &[Action]) -> bool {
        actions.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::Ack(_),
                    ..
                }
            )
        })
    }

    fn from(c: &mut Core, ms: u64, node: NodeIdx, message: Message) -> Vec<Action> {
        c.handle(t(ms), Event::Received { from: node, message })
    }

    /// Node 1, cut off, stands for election until its term is above the owner's; then hears
    /// node 0's claim for term 1. Returns whether it acknowledged it and names node 0 owner.
    fn rejoins_and_follows(fault: Option<Fault>) -> bool {
        let mut c = healthy(1, t(0));
        if let Some(f) = fault {
            c.inject(f, t(0));
        }
        let mut ms = 0;
        while !(c.term() >= 3 && c.role() == RoleKind::Follower) {
            ms += 10;
            c.handle(t(ms), Event::Tick);
            assert!(ms < 20_000, "no candidacy");
        }
        let term = c.term();
        let out = from(&mut c, ms + 10, 0, claim(1, 1));
        assert_eq!(c.term(), term, "terms never go down");
        acked(&out) && c.owner(t(ms + 10)) == Some(0)
    }

    #[test]
    fn a_node_whose_failed_candidacies_raised_its_term_follows_the_owner_it_hears() {
        assert!(rejoins_and_follows(None));
        assert!(!rejoins_and_follows(Some(Fault::NoAckBelowOwnTerm)));
    }

    /// A request from a candidate better placed than node 0 (more data, higher priority).
    fn better_request(term: Term) -> Message {
        Message::VoteRequest(VoteRequest {
            term,
            position: 100,
            priority: 200,
        })
    }

    /// Voter 2 votes for node 1 in term 5; that grant lapses; it acks node 0's claim for the
    /// older term 3; node 1's request for term 5 comes again. Returns whether it was granted
    /// while the grant to node 0 is live.
    fn repeated_vote_beside_an_ack(fault: Option<Fault>) -> bool {
        let mut v = healthy(2, t(0));
        if let Some(f) = fault {
            v.inject(f, t(0));
        }
        assert_eq!(sent_vote(&from(&mut v, 1500, 1, better_request(5))), Some(true));
        assert!(acked(&from(&mut v, 2600, 0, claim(3, 1))));
        assert_eq!(v.persisted().term, 5);
        sent_vote(&from(&mut v, 2700, 1, better_request(5))) == Some(true)
    }

    /// Voter 2 restarts after acknowledging node 1's lease of term 3. Past its quiet period a
    /// captured claim of the dead node 0's term 2 is replayed to it (its replay filter starts
    /// empty); then node 1 asks for votes in term 4. Returns whether it got the vote.
    fn votes_after_a_replayed_older_claim(fault: Option<Fault>) -> bool {
        let p = PersistentState {
            term: 3,
            voted_for: Some(1),
            acked: 3,
            lease_ms: 1000,
        };
        let mut v = Core::new(settings(2), p, t(0));
        if let Some(f) = fault {
            v.inject(f, t(0));
        }
        let replayed = from(&mut v, 1100, 0, claim(2, 17));
        assert_eq!(acked(&replayed), fault.is_some(), "{replayed:?}");
        sent_vote(&from(&mut v, 1200, 1, better_request(4))) == Some(true)
    }

    #[test]
    fn a_replayed_claim_older_than_an_acknowledged_one_is_refused_after_a_restart() {
        assert!(votes_after_a_replayed_older_claim(None));
        assert!(!votes_after_a_replayed_older_claim(Some(
            Fault::AckedTermForgotten
        )));
    }

    #[test]
    fn an_ack_for_an_older_term_withdraws_the_vote_of_the_voters_own_term() {
        assert!(!repeated_vote_beside_an_ack(None));
        assert!(repeated_vote_beside_an_ack(Some(Fault::VoteKeptAfterOlderAck)));
    }

    /// Voter 2 votes for node 0 in term 4 (it has acknowledged no claim yet); a stale claim
    /// and then a stale release of node 0's term 2 arrive; node 1 asks for votes in term 5.
    /// Returns whether it got one while node 0's lease, counted from the vote, is live.
    fn vote_after_a_stale_release(fault: Option<Fault>) -> bool {
        let mut v = healthy(2, t(0));
        if let Some(f) = fault {
            v.inject(f, t(0));
        }
        assert_eq!(sent_vote(&from(&mut v, 1500, 0, better_request(4))), Some(true));
        from(&mut v, 1600, 0, claim(2, 1));
        let release = Message::Release(Release {
            term: 2,
            to: None,
            final_position: None,
            final_gtid: String::new(),
        });
        from(&mut v, 1700, 0, release);
        sent_vote(&from(&mut v, 1800, 1, better_request(5))) == Some(true)
    }

    #[test]
    fn a_stale_claim_of_an_older_term_cannot_shorten_a_live_grant() {
        assert!(!vote_after_a_stale_release(None));
        assert!(vote_after_a_stale_release(Some(Fault::AckOlderTermOfGrantee)));
    }
}
