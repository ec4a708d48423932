//! vipgate: one virtual IP (and DNS name) for the writable MySQL/MariaDB primary, owned by
//! exactly one agent at a time under a majority lease.
//!
//! Layout: [`core`] is the pure ownership protocol; [`net`] the authenticated wire format;
//! [`config`] turns the TOML file into checked settings. The simulator in `sim` (tests only)
//! drives whole clusters of cores through seeded faults.

pub mod config;
pub mod core;
pub mod net;

#[cfg(test)]
mod sim;
