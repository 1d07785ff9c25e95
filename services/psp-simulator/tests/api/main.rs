//! Black-box tests of the simulator's HTTP API: one server per test on an ephemeral port.

mod admin;
mod charges;
mod faults;
mod health;
mod helpers;
mod ledger;
mod startup;
