//! vipgate: one virtual IP (and DNS name) for the writable MySQL/MariaDB primary, owned by
//! exactly one agent at a time under a majority lease.
//!
//! Layout: [`core`] is the pure ownership protocol; [`net`] the authenticated wire format;
//! [`config`] turns the TOML file into checked settings; [`gate`] is the pure database policy; [`agent`] is the tokio loop that wires
//! the core to sockets and effects, on the boot-time [`clock`]; [`vip`] adds, removes and announces the virtual IPs;
//! [`control`] is the socket `vipgate status` talks to; [`kernel`] holds the small Linux
//! facilities used directly (bounded netlink sockets, TCP resets). The simulator in `sim` (tests only)
//! drives whole clusters of cores through seeded faults.

pub mod agent;
pub mod clock;
pub mod config;
pub mod control;
pub mod core;
pub mod dns;
pub mod gate;
pub mod kernel;
pub mod mysql;
pub mod net;
pub mod vip;

#[cfg(test)]
mod sim;
