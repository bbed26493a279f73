//! The real servers the scenario tests attack (issue 11): each started in the foreground by
//! the test with its own config and state under a temporary directory, inside a
//! `system.slice/<name>.service` cgroup so that the agent names it as under systemd.

pub mod dovecot;
pub mod postgres;
