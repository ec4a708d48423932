//! The simulator's event loop: building a run, dispatching events, feeding the cores and
//! carrying out what they ask (the agent loop's part of the shell).

use super::*;

/// A run that needs more events than this is stuck (a loop of events at one instant, say).
const MAX_EVENTS: u64 = 2_000_000;

impl Sim {
    pub fn new(seed: u64, mutation: Option<Mutation>, trace: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let scenario = Scenario::draw(&mut rng);
        let n = scenario.members.len();
        let agents = (0..n).map(|i| Self::agent(&mut rng, &scenario, i)).collect();
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
            mutation,
            outcome: Outcome::default(),
            owners: std::collections::BTreeMap::new(),
        };
        for i in 0..n as NodeIdx {
            // Agents start staggered over the first second.
            let at = sim.rng.range(0, 1_000_000);
            sim.push(
                at,
                Ev::Restart {
                    agent: i,
                    lease: None,
                },
            );
        }
        let first_fault = sim.rng.range(500_000, 2_000_000);
        sim.push(first_fault, Ev::Fault);
        sim.push(us(sim.scenario.chaos), Ev::Heal);
        sim
    }

    fn agent(rng: &mut Rng, scenario: &Scenario, i: usize) -> Agent {
        let rho = i64::from(scenario.drift_ppm);
        let ppm = match rng.range(0, 3) {
            0 => -rho,
            1 => rho,
            _ => rng.range(0, 2 * rho as u64) as i64 - rho,
        };
        Agent {
            core: None,
            durable: PersistentState::default(),
            lease: scenario.lease,
            clock: Clock::new(rng.range(0, 1 << 40), ppm),
            eligible: !scenario.members[i].witness && rng.chance(800),
            told_eligible: false,
            position: rng.range(0, 1000),
            blocked: false,
            preferred: false,
            epoch: 0,
            tick_generation: 0,
            highest_term: 0,
            stalled_until: 0,
            persisting: None,
            frozen_until: 0,
            fsync_max: 0,
            fifo: [[0; 2]; 2],
            fence_in_flight_until: 0,
            shell: Shell::new(scenario.interval),
            kernel: Kernel::default(),
            health: Health::default(),
            backstop_ops: VecDeque::new(),
            backstop_term: None,
            backstop_armed: None,
            pending_release: None,
            drop_seq: 0,
            vip_fault_until: None,
            exempt: false,
            lease_mark: None,
        }
    }

    pub(super) fn push(&mut self, at: u64, ev: Ev) {
        self.order += 1;
        self.queue.push(Reverse(Queued {
            at,
            order: self.order,
            ev,
        }));
    }

    pub(super) fn fail(&self, what: String) -> Violation {
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

    pub(super) fn core_fault(&self) -> Option<Fault> {
        match self.mutation {
            Some(Mutation::Core(f)) => Some(f),
            _ => None,
        }
    }

    /// Runs until an owner has existed for a while after the faults healed, or an invariant or
    /// the liveness bound is violated.
    pub fn run(mut self) -> Result<Outcome, Violation> {
        let shell_fault = match self.mutation {
            Some(Mutation::Shell(f)) => Some(f),
            _ => None,
        };
        let _guard = crate::vip::lease::faults::inject(shell_fault);
        let mut owner_since: Option<u64> = None;
        while let Some(Reverse(q)) = self.queue.pop() {
            self.now = q.at;
            self.outcome.events += 1;
            if self.outcome.events > MAX_EVENTS {
                return Err(self.stalled(format!("more than {MAX_EVENTS} events: the run does not settle")));
            }
            if self.trace {
                println!("{:>12} {:?}", self.now, q.ev);
            }
            self.dispatch(q.ev)?;
            self.check()?;
            if let Some(done) = self.liveness(&mut owner_since)? {
                return Ok(done);
            }
        }
        Err(self.stalled("the event queue ran dry".into()))
    }

    /// After healing: done once an owner has held for two leases and every agent follows it;
    /// an error past the bound.
    fn liveness(&mut self, owner_since: &mut Option<u64>) -> Result<Option<Outcome>, Violation> {
        let Some(clean) = self.healed_at.filter(|&h| self.now >= h) else {
            return Ok(None);
        };
        let longest = self.agents.iter().map(|a| a.lease).max().unwrap_or_default();
        let bound = self.scenario.liveness_bound(longest);
        if let Some(owner) = self.owner() {
            let since = *owner_since.get_or_insert(self.now);
            self.outcome.time_to_owner = Duration::from_micros(since - clean);
            if self.now < since + 2 * us(longest) {
                return Ok(None);
            }
            let Some(stray) = self.not_following(owner) else {
                return Ok(Some(self.outcome));
            };
            if self.now > since + 2 * us(longest) + us(bound) {
                return Err(self.stalled(format!(
                    "agent {stray} does not follow the owner {owner}: {}",
                    self.view(stray)
                )));
            }
            return Ok(None);
        }
        if let Some(since) = owner_since.filter(|_| self.scenario.preempt_delay.is_none()) {
            return Err(self.stalled(format!(
                "ownership lost {:?} after it was re-established on a healthy network",
                Duration::from_micros(self.now - since)
            )));
        }
        if self.now > clean + us(bound) {
            return Err(self.stalled(format!(
                "no owner {:?} after the network healed (bound {bound:?}); eligible: {:?}",
                Duration::from_micros(self.now - clean),
                self.agents.iter().map(|a| a.eligible).collect::<Vec<_>>()
            )));
        }
        Ok(None)
    }

    /// An agent that does not name `owner` as the owner (it would neither acknowledge it nor
    /// follow it as a replica).
    fn not_following(&self, owner: NodeIdx) -> Option<NodeIdx> {
        (0..self.agents.len() as NodeIdx).find(|&i| {
            let core = self.agents[usize::from(i)].core.as_ref();
            core.is_none_or(|c| c.owner(self.local(i)) != Some(owner))
        })
    }

    fn view(&self, agent: NodeIdx) -> String {
        match &self.agents[usize::from(agent)].core {
            Some(c) => format!("term {}, role {:?}, grant {:?}", c.term(), c.role(), c.grant()),
            None => "not running".into(),
        }
    }

    /// The agent that holds a lease and whose host serves the VIP.
    pub(super) fn owner(&self) -> Option<NodeIdx> {
        (0..self.agents.len() as NodeIdx).find(|&i| {
            let a = &self.agents[usize::from(i)];
            let local = a.clock.local(self.now);
            a.core.as_ref().is_some_and(|c| c.holds_lease(local)) && a.kernel.serving(local)
        })
    }

    pub(super) fn local(&self, i: NodeIdx) -> Instant {
        self.agents[usize::from(i)].clock.local(self.now)
    }

    /// Whether `ev` may run now: a dead process drops it, a frozen process or stalled loop
    /// puts it back until it runs again.
    fn admit(&mut self, ev: &Ev) -> bool {
        let (runner, Some(agent)) = ev.runner() else {
            return true;
        };
        let a = &self.agents[usize::from(agent)];
        if runner == Runner::Kernel {
            return true;
        }
        if a.core.is_none() || ev.epoch().is_some_and(|e| e != a.epoch) {
            return false;
        }
        let resume = match runner {
            // Nothing runs on the loop while it waits for an fsync: not even at its last instant.
            Runner::Loop if a.persisting.is_some() => {
                let at = a.persisting.map(|p| p.max(a.frozen_until));
                return self.defer(ev, at);
            }
            Runner::Loop => a.frozen_until.max(a.stalled_until),
            _ => a.frozen_until,
        };
        if self.now < resume {
            self.push(resume, ev.clone());
            return false;
        }
        true
    }

    /// Puts `ev` back until `at` (now, behind what is already queued, if at has come).
    fn defer(&mut self, ev: &Ev, at: Option<u64>) -> bool {
        self.push(at.unwrap_or(self.now).max(self.now), ev.clone());
        false
    }

    fn dispatch(&mut self, ev: Ev) -> Result<(), Violation> {
        if !self.admit(&ev) {
            return Ok(());
        }
        match ev {
            Ev::Deliver {
                to,
                from,
                message,
                lease_ms,
            } => self.deliver(to, from, message, lease_ms),
            Ev::Tick { agent, generation } => {
                if self.agents[usize::from(agent)].tick_generation == generation {
                    self.step(agent, Event::Tick)?;
                }
                Ok(())
            }
            Ev::Continue {
                agent,
                persist,
                actions,
                ..
            } => {
                let a = &mut self.agents[usize::from(agent)];
                a.durable = persist;
                a.persisting = None;
                self.execute_all(agent, actions)
            }
            Ev::Report { agent, report, .. } => self.on_report(agent, report),
            Ev::OpDone {
                agent,
                worker,
                op,
                result,
                ..
            } => self.op_done(agent, worker, op, result),
            Ev::Kernel { agent, epoch, op } => self.kernel_apply(agent, epoch, op),
            Ev::Backstop { agent, .. } => self.backstop(agent),
            Ev::TaskWake { agent, .. } => self.task_wake(agent),
            Ev::HealthDue { agent, .. } => self.refresh_health(agent),
            Ev::OperatorRelease { agent, to } => self.step(agent, Event::Release { to }),
            Ev::Restart { agent, lease } => self.restart(agent, lease),
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
            Ev::Rejoin { agent } => {
                self.set_links(agent, true);
                Ok(())
            }
        }
    }

    fn deliver(
        &mut self,
        to: NodeIdx,
        from: NodeIdx,
        message: Message,
        lease_ms: u64,
    ) -> Result<(), Violation> {
        let mixed = Duration::from_millis(lease_ms) != self.agents[usize::from(to)].lease;
        // The wire refuses a peer that counts another lease (`timing_mismatch`).
        if mixed && self.mutation != Some(Mutation::MixedTimingAccepted) {
            return Ok(());
        }
        self.step(to, Event::Received { from, message })
    }

    pub(super) fn restart(&mut self, agent: NodeIdx, lease: Option<Duration>) -> Result<(), Violation> {
        let i = usize::from(agent);
        if let Some(l) = lease {
            if self.fence_in_flight(agent) {
                let at = self.agents[i].fence_in_flight_until;
                self.push(at, Ev::Restart { agent, lease });
                return Ok(());
            }
            self.crash(agent);
            self.agents[i].lease = l;
        }
        if self.agents[i].core.is_some() {
            return Ok(());
        }
        // At start the agent installs a closed fence and removes any VIP left behind.
        let a = &mut self.agents[i];
        a.kernel = Kernel::default();
        a.fifo = [[0; 2]; 2];
        a.exempt = false;
        a.frozen_until = 0;
        a.stalled_until = 0;
        let now = self.local(agent);
        let settings = self
            .scenario
            .settings(agent, self.rng.next_u64(), self.agents[i].lease);
        let mut core = Core::new(settings, self.agents[i].durable, now);
        if let Some(f) = self.core_fault() {
            core.inject(f, now);
        }
        if core.term() < self.agents[i].highest_term {
            return Err(self.fail(format!("agent {agent} restarted with a lower term")));
        }
        self.agents[i].core = Some(core);
        self.refresh_health(agent)
    }

    pub(super) fn crash(&mut self, agent: NodeIdx) {
        let budget = self.scenario.interval;
        let a = &mut self.agents[usize::from(agent)];
        // The process dies; the kernel keeps its address and fence until they expire. A term
        // not yet on disk (its fsync still running) is lost with it, and was never acted on.
        a.core = None;
        a.persisting = None;
        a.highest_term = a.durable.term;
        a.epoch += 1;
        a.tick_generation += 1;
        a.shell.reset(budget);
        a.backstop_ops.clear();
        a.backstop_term = None;
        a.backstop_armed = None;
        a.pending_release = None;
        a.vip_fault_until = None;
        a.exempt = true;
    }

    /// Tells the core how the local node stands: eligible unless a VIP failure holds it back.
    pub(super) fn refresh_health(&mut self, agent: NodeIdx) -> Result<(), Violation> {
        let local = self.local(agent);
        let a = &mut self.agents[usize::from(agent)];
        match a.vip_fault_until {
            Some(u) if local >= u => a.vip_fault_until = None,
            // Its end was planned at the clock's rate then; the rate may have changed since.
            Some(u) => {
                let (epoch, at) = (a.epoch, a.clock.real(u));
                self.push(at, Ev::HealthDue { agent, epoch });
            }
            None => {}
        }
        let a = &mut self.agents[usize::from(agent)];
        a.told_eligible = a.eligible && a.vip_fault_until.is_none();
        let event = Event::Health {
            eligible: a.told_eligible,
            position: a.position,
            blocked: a.blocked,
            preferred: a.preferred,
        };
        self.step(agent, event)
    }

    /// Feeds one event to one agent's core and carries out its actions.
    pub(super) fn step(&mut self, agent: NodeIdx, event: Event) -> Result<(), Violation> {
        let now = self.local(agent);
        let Some(core) = self.agents[usize::from(agent)].core.as_mut() else {
            return Ok(());
        };
        let actions = core.handle(now, event);
        self.execute_all(agent, actions)
    }

    /// Carries out actions in order. A slow fsync stalls the loop: what follows a `Persist`
    /// goes out only once it is durable (a crash before then loses both).
    fn execute_all(&mut self, agent: NodeIdx, actions: Vec<Action>) -> Result<(), Violation> {
        let mut rest = VecDeque::from(actions);
        while let Some(action) = rest.pop_front() {
            if let Action::Persist(state) = action {
                self.check_persist(agent, state)?;
                let max = self.agents[usize::from(agent)].fsync_max;
                let d = if max > 0 { self.rng.range(0, max) } else { 0 };
                if d > 0 {
                    let a = &mut self.agents[usize::from(agent)];
                    a.stalled_until = a.stalled_until.max(self.now + d);
                    a.persisting = Some(self.now + d);
                    let (epoch, actions) = (a.epoch, rest.into());
                    self.push(
                        self.now + d,
                        Ev::Continue {
                            agent,
                            epoch,
                            persist: state,
                            actions,
                        },
                    );
                    return Ok(());
                }
                self.agents[usize::from(agent)].durable = state;
                continue;
            }
            self.execute(agent, action)?;
        }
        self.after_step(agent);
        Ok(())
    }

    /// After the core moved: forget a release the core gave up waiting for, re-arm its timer.
    fn after_step(&mut self, agent: NodeIdx) {
        let now = self.local(agent);
        let a = &mut self.agents[usize::from(agent)];
        let Some(core) = a.core.as_ref() else { return };
        if a.pending_release.is_some() && core.role() != crate::core::RoleKind::Releasing {
            a.pending_release = None;
        }
        let next = core.next_deadline(now);
        a.tick_generation += 1;
        let at = a.clock.real(next).max(self.now);
        let generation = a.tick_generation;
        self.push(at, Ev::Tick { agent, generation });
    }

    fn execute(&mut self, agent: NodeIdx, action: Action) -> Result<(), Violation> {
        if self.trace {
            println!("{:>12}   {agent} -> {action:?}", self.now);
        }
        match action {
            Action::Persist(_) => unreachable!("persists are handled in order by execute_all"),
            Action::Send { to, message } => {
                self.check_durable_before_send(agent, Some(to), &message)?;
                self.send(agent, to, message);
            }
            Action::Broadcast(message) => self.broadcast(agent, message)?,
            Action::Acquire { term, lease_end, .. } => self.acquire(agent, term, lease_end)?,
            Action::Renewed { term, lease_end } => {
                if let Some(m) = self.agents[usize::from(agent)].lease_mark.as_mut() {
                    m.end = m.end.max(lease_end);
                }
                self.command(
                    agent,
                    Cmd::Hold {
                        term,
                        until: lease_end,
                    },
                );
            }
            Action::Release { term, lease_end, .. } => {
                let a = &mut self.agents[usize::from(agent)];
                // The loop stops holding at once; the task removes the VIPs.
                a.shell.lease.give_up(term);
                a.drop_seq += 1;
                a.pending_release = Some((term, a.drop_seq));
                let seq = a.drop_seq;
                self.command(
                    agent,
                    Cmd::Drop {
                        term,
                        by: lease_end,
                        seq,
                    },
                );
            }
        }
        Ok(())
    }

    fn broadcast(&mut self, agent: NodeIdx, message: Message) -> Result<(), Violation> {
        self.check_durable_before_send(agent, None, &message)?;
        if let Message::Release(r) = &message {
            // From now on its own grant, and any voter it reaches, may go elsewhere.
            let mark = &mut self.agents[usize::from(agent)].lease_mark;
            if let Some(m) = mark.as_mut().filter(|m| r.term >= m.term) {
                m.released = true;
            }
        }
        for to in 0..self.agents.len() as NodeIdx {
            if to != agent {
                self.send(agent, to, message.clone());
            }
        }
        Ok(())
    }

    fn acquire(&mut self, agent: NodeIdx, term: Term, lease_end: Instant) -> Result<(), Violation> {
        self.check_acquire(agent, term)?;
        let a = &mut self.agents[usize::from(agent)];
        a.lease_mark = Some(LeaseMark {
            term,
            end: lease_end,
            released: false,
        });
        // A new lease is judged afresh, unless a request of an earlier one is still on its way
        // into the kernel.
        a.exempt = a.fifo.iter().flatten().any(|&f| f > self.now);
        self.outcome.ownership_changes += 1;
        self.command(
            agent,
            Cmd::Hold {
                term,
                until: lease_end,
            },
        );
        Ok(())
    }

    fn send(&mut self, from: NodeIdx, to: NodeIdx, message: Message) {
        if !self.net.up[usize::from(from)][usize::from(to)] || self.rng.chance(self.net.loss_per_mille) {
            return;
        }
        let lease_ms = self.agents[usize::from(from)].lease.as_millis() as u64;
        let copies = if self.rng.chance(self.net.dup_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let extra = self.net.slow[usize::from(from)][usize::from(to)];
            let at = self.now + extra + self.rng.range(self.net.delay.0, self.net.delay.1);
            let message = message.clone();
            self.push(
                at,
                Ev::Deliver {
                    to,
                    from,
                    message,
                    lease_ms,
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
                        lease_ms,
                    },
                );
            }
        }
    }
}
