//! Evidence from other sensors, turned into interval records for the journal.

pub mod zeek;
