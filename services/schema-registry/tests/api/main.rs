//! Black-box tests of the registry's REST API against Postgres. Each test runs the application
//! on an ephemeral port in its own database schema, dropped when the test passes (a failing
//! test leaves it behind for inspection).

mod compatibility;
mod config;
mod converter;
mod errors;
mod health;
mod helpers;
mod replicas;
mod schemas;
mod subjects;
