//! Agent-to-agent messaging: the authenticated wire format and the receive-side filter that
//! drops (and counts) everything that is not a fresh, authentic datagram from a member.
//! Sockets live in the agent shell; this module turns bytes into messages and back, and bounds
//! what clients of the agent's listeners may hold ([`admission`]).

pub mod admission;
pub mod receiver;
pub mod wire;

pub use receiver::{DropCounters, Receiver};
pub use wire::{Codec, DropReason, Envelope};
