//! Deterministic cluster simulator for the ownership core.
//!
//! Runs 3-, 4- and 5-agent clusters of real [`Core`]s on a fake clock and a fake network, driven
//! by one seeded random generator: partitions (symmetric, asymmetric, one-way, flapping), loss,
//! delay (reordering), duplication, clock rates within ±ρ, crash and restart (persisted state
//! kept, memory lost), eligibility flips and data positions moving. After every event it checks
//! the invariants of `docs/protocol.md`; after the faults heal it checks that an owner appears
//! within the stated bound. The same seed replays exactly.
//!
//! `VIPGATE_SIM_SEEDS=N` runs N seeds (default 10 000); `VIPGATE_SIM_SEED=S` replays seed S
//! with a trace of every event.

use crate::core::{
    Action, Core, Event, Fault, Instant, Member, Message, NodeIdx, PersistentState, RoleKind, Settings, Term,
    splitmix64,
};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

mod tests;

/// The run's only source of randomness, so a seed replays exactly.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}

/// An agent's clock: `local = offset + real · (10⁶ + ppm) / 10⁶`, in microseconds.
#[derive(Clone, Copy, Debug)]
struct Clock {
    offset: u64,
    ppm: i64,
}

impl Clock {
    fn rate(self) -> u128 {
        (1_000_000 + self.ppm) as u128
    }

    fn local(self, real: u64) -> Instant {
        Instant::from_micros(self.offset + (u128::from(real) * self.rate() / 1_000_000) as u64)
    }

    /// The first real instant at which the local clock reads `local` or later.
    fn real(self, local: Instant) -> u64 {
        let l = u128::from(local.as_micros().saturating_sub(self.offset));
        l.saturating_mul(1_000_000)
            .div_ceil(self.rate())
            .min(u128::from(u64::MAX / 4)) as u64
    }
}

/// A shape of cluster and its timing, drawn from the seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub members: Vec<Member>,
    pub interval: Duration,
    pub lease: Duration,
    pub drift_ppm: u32,
    pub preempt_delay: Option<Duration>,
    /// Real time during which faults are injected.
    pub chaos: Duration,
    /// Longest message delay the chaos may set.
    pub max_delay: Duration,
}

impl Scenario {
    pub fn draw(rng: &mut Rng) -> Scenario {
        let n = rng.range(3, 5) as usize;
        let max_witnesses = if n == 5 { 2 } else { 1 };
        let witnesses = rng.range(0, max_witnesses) as usize;
        let members = (0..n)
            .map(|i| Member {
                witness: i >= n - witnesses,
                priority: rng.range(1, 255) as u8,
            })
            .collect();
        let interval = Duration::from_millis(rng.range(2, 4) * 50);
        let lease = interval * rng.range(3, 6) as u32;
        Scenario {
            members,
            interval,
            lease,
            drift_ppm: [1_000, 10_000, 50_000][rng.range(0, 2) as usize],
            preempt_delay: rng.chance(300).then(|| Duration::from_millis(rng.range(0, 2000))),
            chaos: Duration::from_secs(rng.range(8, 20)),
            max_delay: lease * 2,
        }
    }

    fn settings(&self, me: NodeIdx, seed: u64) -> Settings {
        Settings {
            me,
            members: self.members.clone(),
            interval: self.interval,
            lease: self.lease,
            drift_ppm: self.drift_ppm,
            release_budget: self.interval,
            preempt_delay: self.preempt_delay,
            seed,
        }
    }

    /// After the last fault has healed (every message sent under it delivered), an owner exists
    /// within this bound: one lease for grants and restarts to lapse, one for the silence
    /// after the last lease claim, and the rank stagger, jitter and a failed round on top,
    /// stretched for the slowest clock.
    pub fn liveness_bound(&self) -> Duration {
        let n = self.members.len() as u32;
        let local = self.lease * 2 + self.interval * (n + 4);
        local.mul_f64((1_000_000.0 + f64::from(self.drift_ppm)) / (1_000_000.0 - f64::from(self.drift_ppm)))
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        to: NodeIdx,
        from: NodeIdx,
        message: Message,
    },
    Tick {
        agent: NodeIdx,
        generation: u64,
    },
    /// The shell has removed the VIP it acquired for `term`.
    VipRemoved {
        agent: NodeIdx,
        term: Term,
        epoch: u64,
    },
    /// The shell reports the removal to the core (possibly late).
    Released {
        agent: NodeIdx,
        term: Term,
        epoch: u64,
    },
    /// An operator (or a graceful stop) asks the agent to give ownership up.
    OperatorRelease {
        agent: NodeIdx,
        to: Option<NodeIdx>,
    },
    Restart {
        agent: NodeIdx,
    },
    Fault,
    Toggle {
        from: NodeIdx,
        to: NodeIdx,
    },
    Heal,
}

struct Queued {
    at: u64,
    order: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

struct Agent {
    core: Option<Core>,
    /// What the agent's disk holds: survives crashes.
    durable: PersistentState,
    clock: Clock,
    eligible: bool,
    position: u64,
    /// The VIP is configured on this host, and the shell's hard deadline for it (local time).
    vip: Option<Instant>,
    /// The term the VIP was acquired for.
    vip_term: Term,
    /// Bumped on every crash so that ticks and effects of the previous run are ignored.
    epoch: u64,
    tick_generation: u64,
    highest_term: Term,
}

struct Network {
    up: Vec<Vec<bool>>,
    /// Extra one-way latency per directed link (a congested uplink), in microseconds.
    slow: Vec<Vec<u64>>,
    loss_per_mille: u64,
    dup_per_mille: u64,
    /// A copy of a datagram also reaches a member it was not sent to (a relay on the path).
    misdeliver_per_mille: u64,
    delay: (u64, u64),
}

/// A violated invariant, with the moment and the seed that produced it.
#[derive(Debug)]
pub struct Violation {
    pub seed: u64,
    pub at: Duration,
    pub what: String,
    /// False for a liveness failure (no owner in time), true for everything else.
    pub safety: bool,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} violated an invariant at t={:?}: {}\n  replay with: VIPGATE_SIM_SEED={} cargo test --lib sim::tests::replay_one_seed -- --nocapture",
            self.seed, self.at, self.what, self.seed
        )
    }
}

/// What one run showed, for statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub events: u64,
    /// Time from the network being clean until an owner existed.
    pub time_to_owner: Duration,
    pub ownership_changes: u64,
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    pub scenario: Scenario,
    now: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    agents: Vec<Agent>,
    net: Network,
    healed_at: Option<u64>,
    trace: bool,
    fault: Option<Fault>,
    outcome: Outcome,
    /// Who acquired each term: a term has at most one owner, ever.
    owners: std::collections::BTreeMap<Term, NodeIdx>,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl Sim {
    pub fn new(seed: u64, fault: Option<Fault>, trace: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let scenario = Scenario::draw(&mut rng);
        let n = scenario.members.len();
        let rho = i64::from(scenario.drift_ppm);
        let agents = (0..n)
            .map(|i| {
                let ppm = match rng.range(0, 3) {
                    0 => -rho,
                    1 => rho,
                    _ => rng.range(0, 2 * rho as u64) as i64 - rho,
                };
                Agent {
                    core: None,
                    durable: PersistentState::default(),
                    clock: Clock {
                        offset: rng.range(0, 1 << 40),
                        ppm,
                    },
                    eligible: !scenario.members[i].witness && rng.chance(800),
                    position: rng.range(0, 1000),
                    vip: None,
                    vip_term: 0,
                    epoch: 0,
                    tick_generation: 0,
                    highest_term: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            net: Network {
                up: vec![vec![true; n]; n],
                slow: vec![vec![0; n]; n],
                loss_per_mille: 0,
                dup_per_mille: 0,
                misdeliver_per_mille: 0,
                delay: (100, 2_000),
            },
            scenario,
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            agents,
            healed_at: None,
            trace,
            fault,
            outcome: Outcome::default(),
            owners: std::collections::BTreeMap::new(),
        };
        for i in 0..n as NodeIdx {
            // Agents start staggered over the first second.
            let at = sim.rng.range(0, 1_000_000);
            sim.push(at, Ev::Restart { agent: i });
        }
        let first_fault = sim.rng.range(500_000, 2_000_000);
        sim.push(first_fault, Ev::Fault);
        sim.push(us(sim.scenario.chaos), Ev::Heal);
        sim
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.order += 1;
        self.queue.push(Reverse(Queued {
            at,
            order: self.order,
            ev,
        }));
    }

    fn fail(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            at: Duration::from_micros(self.now),
            what,
            safety: true,
        }
    }

    fn stalled(&self, what: String) -> Violation {
        Violation {
            safety: false,
            ..self.fail(what)
        }
    }

    /// Runs until an owner has existed for a while after the faults healed, or an invariant or
    /// the liveness bound is violated.
    pub fn run(mut self) -> Result<Outcome, Violation> {
        let bound = us(self.scenario.liveness_bound());
        let mut owner_since: Option<u64> = None;
        while let Some(Reverse(q)) = self.queue.pop() {
            self.now = q.at;
            self.outcome.events += 1;
            if self.trace {
                println!("{:>12} {:?}", self.now, q.ev);
            }
            self.dispatch(q.ev)?;
            self.check()?;
            if let Some(clean) = self.healed_at.filter(|&h| self.now >= h) {
                if self.owner().is_some() {
                    let since = *owner_since.get_or_insert(self.now);
                    self.outcome.time_to_owner = Duration::from_micros(since - clean);
                    if self.now >= since + 2 * us(self.scenario.lease) {
                        return Ok(self.outcome);
                    }
                } else if let Some(since) = owner_since.filter(|_| self.scenario.preempt_delay.is_none()) {
                    return Err(self.stalled(format!(
                        "ownership lost {:?} after it was re-established on a healthy network",
                        Duration::from_micros(self.now - since)
                    )));
                } else if self.now > clean + bound {
                    return Err(self.stalled(format!(
                        "no owner {:?} after the network healed (bound {:?}); eligible: {:?}",
                        Duration::from_micros(self.now - clean),
                        self.scenario.liveness_bound(),
                        self.agents.iter().map(|a| a.eligible).collect::<Vec<_>>()
                    )));
                }
            }
        }
        Err(self.stalled("the event queue ran dry".into()))
    }

    fn owner(&self) -> Option<NodeIdx> {
        self.agents
            .iter()
            .position(|a| a.vip.is_some())
            .map(|i| i as NodeIdx)
    }

    fn local(&self, i: NodeIdx) -> Instant {
        self.agents[usize::from(i)].clock.local(self.now)
    }

    fn dispatch(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Deliver { to, from, message } => self.step(to, Event::Received { from, message }),
            Ev::Tick { agent, generation } => {
                if self.agents[usize::from(agent)].tick_generation == generation {
                    self.step(agent, Event::Tick)?;
                }
                Ok(())
            }
            Ev::VipRemoved { agent, term, epoch } => {
                let a = &mut self.agents[usize::from(agent)];
                if a.epoch != epoch || a.vip_term != term {
                    return Ok(());
                }
                let local = a.clock.local(self.now);
                if let Some(deadline) = a.vip.take()
                    && local > deadline
                {
                    return Err(self.fail(format!(
                        "agent {agent} removed the VIP {:?} after its lease ended",
                        local.saturating_since(deadline)
                    )));
                }
                Ok(())
            }
            Ev::Released { agent, term, epoch } => {
                let a = &self.agents[usize::from(agent)];
                if a.epoch != epoch {
                    return Ok(());
                }
                if a.vip.is_some() && a.vip_term == term {
                    return Err(self.fail(format!(
                        "agent {agent} reported term {term} released with the VIP up"
                    )));
                }
                self.step(agent, Event::Released { term })
            }
            Ev::OperatorRelease { agent, to } => self.step(agent, Event::Release { to }),
            Ev::Restart { agent } => self.restart(agent),
            Ev::Fault => {
                self.inject_fault();
                Ok(())
            }
            Ev::Toggle { from, to } => {
                let up = &mut self.net.up[usize::from(from)][usize::from(to)];
                *up = !*up;
                Ok(())
            }
            Ev::Heal => self.heal(),
        }
    }

    fn restart(&mut self, agent: NodeIdx) -> Result<(), Violation> {
        let i = usize::from(agent);
        if self.agents[i].core.is_some() {
            return Ok(());
        }
        let now = self.local(agent);
        let settings = self.scenario.settings(agent, self.rng.next_u64());
        let mut core = Core::new(settings, self.agents[i].durable, now);
        if let Some(f) = self.fault {
            core.inject(f, now);
        }
        if core.term() < self.agents[i].highest_term {
            return Err(self.fail(format!("agent {agent} restarted with a lower term")));
        }
        self.agents[i].core = Some(core);
        let (eligible, position) = (self.agents[i].eligible, self.agents[i].position);
        self.step(
            agent,
            Event::Health {
                eligible,
                position,
                blocked: false,
                preferred: false,
            },
        )
    }

    fn crash(&mut self, agent: NodeIdx) {
        let a = &mut self.agents[usize::from(agent)];
        // The process dies; its VIP is assumed gone with it (the kernel-enforced address
        // lifetime of the agent shell provides this; see docs/protocol.md).
        a.core = None;
        a.vip = None;
        a.epoch += 1;
        a.tick_generation += 1;
    }

    /// Feeds one event to one agent, carries out its actions, and re-arms its timer.
    fn step(&mut self, agent: NodeIdx, event: Event) -> Result<(), Violation> {
        let i = usize::from(agent);
        let now = self.local(agent);
        let Some(core) = self.agents[i].core.as_mut() else {
            return Ok(());
        };
        let actions = core.handle(now, event);
        let next = core.next_deadline(now);
        for action in actions {
            self.execute(agent, action)?;
        }
        let a = &mut self.agents[i];
        a.tick_generation += 1;
        let at = a.clock.real(next).max(self.now);
        let generation = a.tick_generation;
        self.push(at, Ev::Tick { agent, generation });
        Ok(())
    }

    fn execute(&mut self, agent: NodeIdx, action: Action) -> Result<(), Violation> {
        let i = usize::from(agent);
        if self.trace {
            println!("{:>12}   {agent} -> {action:?}", self.now);
        }
        match action {
            Action::Persist(state) => {
                let a = &mut self.agents[i];
                if state.term < a.durable.term {
                    return Err(self.fail(format!("agent {agent} persisted a lower term {}", state.term)));
                }
                a.durable = state;
            }
            Action::Send { to, message } => {
                self.check_durable_before_send(agent, Some(to), &message)?;
                self.send(agent, to, message);
            }
            Action::Broadcast(message) => {
                self.check_durable_before_send(agent, None, &message)?;
                for to in 0..self.agents.len() as NodeIdx {
                    if to != agent {
                        self.send(agent, to, message.clone());
                    }
                }
            }
            Action::Acquire { term, lease_end, .. } => {
                let a = &self.agents[i];
                if self.scenario.members[i].witness {
                    return Err(self.fail(format!("witness {agent} acquired ownership in term {term}")));
                }
                if !a.eligible {
                    return Err(self.fail(format!(
                        "ineligible agent {agent} acquired ownership in term {term}"
                    )));
                }
                if let Some(other) = self.owner() {
                    return Err(self.fail(format!(
                        "agent {agent} acquired the VIP in term {term} while agent {other} still holds it"
                    )));
                }
                if let Some(first) = self.owners.insert(term, agent) {
                    return Err(self.fail(format!("agents {first} and {agent} both acquired term {term}")));
                }
                self.agents[i].vip = Some(lease_end);
                self.agents[i].vip_term = term;
                self.outcome.ownership_changes += 1;
            }
            Action::Renewed { lease_end, .. } => {
                if let Some(v) = self.agents[i].vip.as_mut() {
                    *v = (*v).max(lease_end);
                }
            }
            Action::Release { term, .. } => {
                // The shell takes a while to remove the VIP, never more than the release budget.
                let a = &self.agents[i];
                let done = a
                    .clock
                    .real(a.clock.local(self.now) + self.scenario.interval)
                    .saturating_sub(1);
                let at = self.rng.range(self.now, done.max(self.now));
                let epoch = a.epoch;
                self.push(at, Ev::VipRemoved { agent, term, epoch });
                // Usually the shell reports at once; sometimes late (past the lease), or never
                // (the report was lost with a hung effect): the core must cope with both.
                match self.rng.range(0, 9) {
                    0 => {}
                    1 => {
                        let late = at + self.rng.range(0, 2 * us(self.scenario.lease));
                        self.push(late, Ev::Released { agent, term, epoch });
                    }
                    _ => self.push(at, Ev::Released { agent, term, epoch }),
                }
            }
        }
        Ok(())
    }

    /// "The core asks for persistence before it sends a vote": every vote, ack and vote request
    /// must be backed by what is already on disk.
    fn check_durable_before_send(
        &self,
        agent: NodeIdx,
        to: Option<NodeIdx>,
        message: &Message,
    ) -> Result<(), Violation> {
        let d = self.agents[usize::from(agent)].durable;
        let backed = match message {
            Message::Vote(v) if v.granted => d.term == v.term && d.voted_for == to,
            Message::Ack(a) => d.term == a.term && d.voted_for == to,
            Message::VoteRequest(r) => d.term == r.term && d.voted_for == Some(agent),
            _ => true,
        };
        if backed {
            Ok(())
        } else {
            Err(self.fail(format!(
                "agent {agent} sent {message:?} before persisting it (disk: {d:?})"
            )))
        }
    }

    fn send(&mut self, from: NodeIdx, to: NodeIdx, message: Message) {
        if !self.net.up[usize::from(from)][usize::from(to)] || self.rng.chance(self.net.loss_per_mille) {
            return;
        }
        let copies = if self.rng.chance(self.net.dup_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let extra = self.net.slow[usize::from(from)][usize::from(to)];
            let at = self.now + extra + self.rng.range(self.net.delay.0, self.net.delay.1);
            self.push(
                at,
                Ev::Deliver {
                    to,
                    from,
                    message: message.clone(),
                },
            );
        }
        if self.rng.chance(self.net.misdeliver_per_mille) {
            // The copy keeps what the sender addressed (the wire's recipient is authenticated);
            // only the core's own checks stop it counting where it lands.
            let n = self.agents.len() as u64;
            let elsewhere = self.rng.range(0, n - 1) as NodeIdx;
            if elsewhere != from && elsewhere != to {
                let at = self.now + self.rng.range(self.net.delay.0, self.net.delay.1);
                self.push(
                    at,
                    Ev::Deliver {
                        to: elsewhere,
                        from,
                        message,
                    },
                );
            }
        }
    }

    fn inject_fault(&mut self) {
        let n = self.agents.len() as u64;
        let pick = |rng: &mut Rng| rng.range(0, n - 1) as NodeIdx;
        let max_delay = us(self.scenario.max_delay);
        match self.rng.range(0, 15) {
            0 => {
                // Symmetric partition into two random sides.
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500)).collect();
                for a in 0..n as usize {
                    for b in 0..n as usize {
                        if side[a] != side[b] {
                            self.net.up[a][b] = false;
                        }
                    }
                }
            }
            1 => {
                // Two agents lose each other but still reach everyone else.
                let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                self.net.up[usize::from(a)][usize::from(b)] = false;
                self.net.up[usize::from(b)][usize::from(a)] = false;
            }
            2 => {
                // One-way: a hears nothing from b, b still hears a.
                let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                self.net.up[usize::from(b)][usize::from(a)] = false;
            }
            3 => {
                // A flapping link.
                let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                let mut at = self.now;
                for _ in 0..self.rng.range(2, 12) {
                    at += self.rng.range(20_000, 300_000);
                    self.push(at, Ev::Toggle { from: a, to: b });
                    self.push(at, Ev::Toggle { from: b, to: a });
                }
            }
            4 => {
                for row in &mut self.net.up {
                    row.fill(true);
                }
            }
            5 => self.net.loss_per_mille = [0, 0, 100, 300, 600][self.rng.range(0, 4) as usize],
            6 => {
                let hi = match self.rng.range(0, 3) {
                    0 => 2_000,
                    1 => us(self.scenario.interval),
                    2 => us(self.scenario.lease),
                    _ => max_delay,
                };
                self.net.delay = (self.rng.range(0, hi / 2), hi);
            }
            7 => {
                self.net.dup_per_mille = [0, 50, 300][self.rng.range(0, 2) as usize];
                self.net.misdeliver_per_mille = [0, 0, 200, 1000][self.rng.range(0, 3) as usize];
            }
            8 | 9 => {
                let a = pick(&mut self.rng);
                if self.agents[usize::from(a)].core.is_some() {
                    self.crash(a);
                    let back = self.now + self.rng.range(0, 3_000_000);
                    self.push(back, Ev::Restart { agent: a });
                }
            }
            10 => {
                let a = pick(&mut self.rng);
                let ag = &mut self.agents[usize::from(a)];
                if !self.scenario.members[usize::from(a)].witness {
                    ag.eligible = !ag.eligible;
                }
                self.refresh_health(a);
            }
            14 | 15 => {
                // An operator switchover or a graceful stop, with or without a named successor.
                let agent = pick(&mut self.rng);
                let to = self
                    .rng
                    .chance(500)
                    .then(|| pick(&mut self.rng))
                    .filter(|&t| t != agent);
                self.push(self.now, Ev::OperatorRelease { agent, to });
            }
            12 | 13 => {
                // One direction of one link becomes slow (or fast again).
                let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                let extra = if self.rng.chance(300) {
                    0
                } else {
                    self.rng.range(0, max_delay)
                };
                self.net.slow[usize::from(a)][usize::from(b)] = extra;
            }
            _ => {
                for a in 0..n as NodeIdx {
                    self.agents[usize::from(a)].position += self.rng.range(0, 50);
                    self.refresh_health(a);
                }
            }
        }
        let next = self.now + self.rng.range(100_000, 1_500_000);
        if next < us(self.scenario.chaos) {
            self.push(next, Ev::Fault);
        }
    }

    fn refresh_health(&mut self, agent: NodeIdx) {
        let a = &self.agents[usize::from(agent)];
        let (eligible, position) = (a.eligible, a.position);
        // A health change cannot violate anything by itself; the check after the event does.
        let _ = self.step(
            agent,
            Event::Health {
                eligible,
                position,
                blocked: false,
                preferred: false,
            },
        );
    }

    fn heal(&mut self) -> Result<(), Violation> {
        for row in &mut self.net.up {
            row.fill(true);
        }
        for row in &mut self.net.slow {
            row.fill(0);
        }
        self.net.loss_per_mille = 0;
        self.net.dup_per_mille = 0;
        self.net.misdeliver_per_mille = 0;
        self.net.delay = (100, 2_000);
        // Pending toggles of flapping links would undo the heal.
        self.queue
            .retain(|q| !matches!(q.0.ev, Ev::Toggle { .. } | Ev::Fault));
        for a in 0..self.agents.len() as NodeIdx {
            self.restart(a)?;
        }
        if !self.agents.iter().any(|a| a.eligible) {
            let best = (0..self.agents.len())
                .filter(|&i| !self.scenario.members[i].witness)
                .max_by_key(|&i| self.scenario.members[i].priority)
                .expect("every scenario has a database node");
            self.agents[best].eligible = true;
            self.refresh_health(best as NodeIdx);
        }
        // Messages sent under the old faults may still be in flight (slow link plus delay).
        self.healed_at = Some(self.now + 2 * us(self.scenario.max_delay));
        Ok(())
    }

    /// The invariants, checked after every event. Beliefs and VIPs only start at events, so
    /// checking at each event instant covers every real instant.
    fn check(&mut self) -> Result<(), Violation> {
        let mut holders = Vec::new();
        let mut vips = Vec::new();
        for (i, a) in self.agents.iter_mut().enumerate() {
            let local = a.clock.local(self.now);
            if let Some(deadline) = a.vip {
                if local > deadline {
                    let late = local.saturating_since(deadline);
                    let what = format!("agent {i} still holds the VIP {late:?} after its lease ended");
                    return Err(Violation {
                        seed: self.seed,
                        at: Duration::from_micros(self.now),
                        what,
                        safety: true,
                    });
                }
                vips.push(i);
            }
            let Some(core) = &a.core else { continue };
            if core.holds_lease(local) {
                holders.push(i);
                if core.role() != RoleKind::Owner || self.scenario.members[i].witness || !a.eligible {
                    let what = format!(
                        "agent {i} holds a lease as {:?} (eligible {})",
                        core.role(),
                        a.eligible
                    );
                    return Err(Violation {
                        seed: self.seed,
                        at: Duration::from_micros(self.now),
                        what,
                        safety: true,
                    });
                }
            }
            if core.term() < a.highest_term {
                let what = format!(
                    "agent {i}'s term went back from {} to {}",
                    a.highest_term,
                    core.term()
                );
                return Err(Violation {
                    seed: self.seed,
                    at: Duration::from_micros(self.now),
                    what,
                    safety: true,
                });
            }
            a.highest_term = core.term();
        }
        if holders.len() > 1 {
            return Err(self.fail(format!(
                "agents {holders:?} hold unexpired leases at the same instant"
            )));
        }
        if vips.len() > 1 {
            return Err(self.fail(format!("agents {vips:?} hold the VIP at the same instant")));
        }
        Ok(())
    }
}
