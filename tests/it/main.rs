//! The one integration-test binary. Every test drives the real `betcycle` binary: a
//! server started on 127.0.0.1:0 in a temp data directory, or a CLI verb.

mod access;
mod accounts;
mod agents;
mod alerts;
mod backup;
mod browser;
mod caches;
mod cli;
mod console;
mod containers;
mod deploy;
mod flaky;
mod hardening;
mod hardening_more;
mod harness;
mod health;
mod history;
mod lifecycle;
mod metrics;
mod policy;
mod projects;
mod run;
mod runs;
mod schedules;
mod secrets;
mod service;
mod ship;
mod status_pages;
mod telemetry;
mod triggers;
