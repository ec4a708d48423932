//! The ownership core: which agent owns the VIP, decided by a majority lease.
//!
//! Pure and deterministic: no sockets, no clocks, no threads, no tokio. Inputs are [`Event`]s
//! stamped with the agent's own monotonic time; outputs are [`Action`]s for the shell to carry
//! out in order. This is what lets `crate::sim` run whole clusters through thousands of seeded
//! fault schedules in seconds. `docs/protocol.md` is the specification and safety argument.
//!
//! Wiring contract for the shell:
//! - deliver [`Event::Tick`] no later than [`Core::next_deadline`];
//! - execute actions in order, and make [`Action::Persist`] durable (fsync) before the next;
//! - after [`Action::Release`], remove the VIP before its `lease_end` whatever happens, and
//!   report [`Event::Released`] once done; never hold the VIP past the latest `lease_end` of
//!   [`Action::Acquire`] / [`Action::Renewed`];
//! - pass only authenticated, de-duplicated messages from members in [`Event::Received`].

mod message;
mod ownership;
mod rank;
mod time;

pub use message::{
    Ack, Heartbeat, MAX_REPORT_GTID, Message, NodeIdx, Position, Release, Term, Vote, VoteRequest,
};
pub use ownership::{
    Action, Core, Event, FinalData, Grant, MAX_MEMBERS, Member, PeerView, PersistentState, ReleaseReason,
    RoleKind, Settings, SettingsError, Timing,
};
#[cfg(test)]
pub(crate) use ownership::{Fault, splitmix64};
pub use rank::Candidate;
pub use time::Instant;
