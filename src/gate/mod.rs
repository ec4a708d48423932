//! The database gate's policy, pure: what the agent knows goes in as values, decisions come
//! out — no I/O, no clock (time arrives as durations), no tokio. The agent
//! (`src/agent/database.rs`) gathers the facts and carries the decisions out; tests, and the
//! simulator, call the same code.
//!
//! [`eligibility`]: may this node's database own, and if not, why — the rule that keeps a
//! lagging replica, a former primary that has not rejoined, or a diverged database from
//! being promoted. [`owners`]: who owned last, which those rules judge against. [`window`]:
//! the anti-flap window after an automatic failover.

pub mod eligibility;
pub mod machine;
pub mod owners;
pub mod report;
pub mod window;

pub use eligibility::{ColdStart, Facts, Ineligible, ineligible};
pub use machine::{Gate, Phase};
pub use owners::{Owner, Owners, Seen};
pub use report::DbReport;
