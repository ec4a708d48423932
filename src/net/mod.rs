//! Agent-to-agent messaging: the authenticated wire format, the receive-side filter that
//! drops (and counts) everything that is not a fresh, authentic datagram from a member, and
//! the agent's socket with its counters and round trips ([`transport`]); and bounds on what
//! clients of the agent's listeners may hold ([`admission`]).

pub mod admission;
pub mod receiver;
pub mod transport;
pub mod wire;

pub use receiver::{DropCounters, Receiver};
pub use transport::Transport;
pub use wire::{Codec, Datagram, DropReason, Envelope};
